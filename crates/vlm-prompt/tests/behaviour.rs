//! Streaming detokenization, chunking, template lookup order and Jinja environment details.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use vlm_prompt::{
    expand_image_tokens, split_chunks, split_chunks_checked, ChatTemplate, ChatTemplates, Chunk,
    Message, PromptError, TemplateContext, TemplateSource, Tokenizer,
};

const IMG: u32 = 404;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizer")
        .join(name)
}

#[test]
fn streaming_equals_full_decode_and_never_splits_characters() -> Result<()> {
    let tokenizer = Tokenizer::from_dir(fixture("llava"))?;
    let text = "emoji 🐱🐶 and 👨‍👩‍👧 family, 日本語, café!\n  done</s>";
    let ids = tokenizer.encode(text, true)?;
    // The tiny vocabulary has no emoji tokens, so they are split over byte tokens.
    assert!(ids.len() > text.chars().count() / 2);
    for skip in [false, true] {
        let mut stream = tokenizer.stream(skip);
        let mut pieces = Vec::new();
        for &id in &ids {
            if let Some(piece) = stream.push(id)? {
                assert!(
                    !piece.contains('\u{FFFD}'),
                    "mid-stream U+FFFD in {piece:?}"
                );
                pieces.push(piece);
            }
        }
        pieces.extend(stream.finish()?);
        assert_eq!(pieces.concat(), tokenizer.decode(&ids, skip)?);
        // Something was emitted before the end: streaming is incremental.
        assert!(pieces.len() > 5);
    }
    Ok(())
}

#[test]
fn finish_flushes_an_incomplete_character() -> Result<()> {
    let tokenizer = Tokenizer::from_dir(fixture("llava"))?;
    let ids = tokenizer.encode("ok 🐱", false)?;
    let truncated = &ids[..ids.len() - 1];
    let mut stream = tokenizer.stream(false);
    let mut out = String::new();
    for &id in truncated {
        out.extend(stream.push(id)?);
    }
    assert!(!out.contains('\u{FFFD}'));
    out.extend(stream.finish()?);
    assert_eq!(out, tokenizer.decode(truncated, false)?);
    assert!(out.ends_with('\u{FFFD}'));
    Ok(())
}

#[test]
fn chunks_keep_prompt_order() -> Result<()> {
    let ids = [1, IMG, IMG, 2, 3, IMG];
    assert_eq!(
        split_chunks(&ids, IMG),
        [
            Chunk::Text(vec![1]),
            Chunk::Image { index: 0 },
            Chunk::Image { index: 1 },
            Chunk::Text(vec![2, 3]),
            Chunk::Image { index: 2 },
        ]
    );
    assert_eq!(split_chunks(&[5, 6], IMG), [Chunk::Text(vec![5, 6])]);
    assert_eq!(split_chunks_checked(&ids, IMG, 3)?.len(), 5);
    Ok(())
}

#[test]
fn expand_repeats_each_marker_by_its_count() -> Result<()> {
    let ids = [1, IMG, 2, IMG, 3];
    assert_eq!(
        expand_image_tokens(&ids, IMG, &[2, 3])?,
        [1, IMG, IMG, 2, IMG, IMG, IMG, 3]
    );
    assert_eq!(expand_image_tokens(&ids, IMG, &[0, 1])?, [1, 2, IMG, 3]);
    Ok(())
}

#[test]
fn marker_and_image_count_mismatches_are_errors() -> Result<()> {
    let ids = [1, IMG, 2];
    for (images, counts) in [(2usize, vec![4usize, 4]), (0, vec![])] {
        let err = expand_image_tokens(&ids, IMG, &counts);
        assert!(
            matches!(
                err,
                Err(PromptError::ImageCountMismatch { markers: 1, images: n, image_token_id: IMG })
                    if n == images
            ),
            "{err:?}"
        );
        let err = split_chunks_checked(&ids, IMG, images);
        assert!(matches!(err, Err(PromptError::ImageCountMismatch { .. })));
    }
    let Err(err) = expand_image_tokens(&[IMG, IMG], IMG, &[1]) else {
        bail!("expected an error");
    };
    let message = err.to_string();
    assert!(
        message.contains("2 image marker") && message.contains("1 image(s)"),
        "{message}"
    );
    Ok(())
}

#[test]
fn user_with_images_puts_images_first() {
    let m = Message::user_with_images(2, "Compare.");
    assert_eq!(m.role, "user");
    assert_eq!(m.image_count(), 2);
    assert_eq!(
        serde_json::to_value(&m).ok(),
        Some(serde_json::json!({"role": "user", "content": [
            {"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}
        ]}))
    );
    assert_eq!(Message::user_with_images(1, "").content.len(), 1);
}

fn temp_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("vlm-prompt-{}-{name}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn write(dir: &Path, file: &str, text: &str) -> Result<()> {
    let path = dir.join(file);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Ok(std::fs::write(path, text)?)
}

fn render_default(dir: &Path) -> Result<String> {
    let template = ChatTemplates::from_dir(dir)?;
    let messages = [Message::text("user", "hi")];
    Ok(template
        .select(None, false)?
        .render(&messages, &TemplateContext::default())?)
}

#[test]
fn lookup_order_follows_transformers() -> Result<()> {
    let dir = temp_dir("lookup")?;
    write(
        &dir,
        "tokenizer_config.json",
        r#"{"chat_template": "config"}"#,
    )?;
    assert_eq!(render_default(&dir)?, "config");
    write(&dir, "chat_template.jinja", "jinja")?;
    assert_eq!(render_default(&dir)?, "jinja");
    write(&dir, "chat_template.json", r#"{"chat_template": "json"}"#)?;
    assert_eq!(render_default(&dir)?, "json");
    assert!(matches!(
        ChatTemplates::from_dir(&dir)?.source(),
        TemplateSource::ChatTemplateJson(_)
    ));
    // transformers refuses the legacy JSON file next to named .jinja templates.
    write(&dir, "chat_templates/tool_use.jinja", "tools")?;
    assert!(matches!(
        ChatTemplates::from_dir(&dir),
        Err(PromptError::Config { .. })
    ));
    std::fs::remove_file(dir.join("chat_template.json"))?;
    let templates = ChatTemplates::from_dir(&dir)?;
    assert_eq!(
        templates.names().collect::<Vec<_>>(),
        ["default", "tool_use"]
    );
    assert_eq!(templates.select(None, true)?.name(), "tool_use");
    assert_eq!(templates.select(None, false)?.name(), "default");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn named_templates_in_tokenizer_config() -> Result<()> {
    let dir = temp_dir("named")?;
    write(
        &dir,
        "tokenizer_config.json",
        r#"{"chat_template": [{"name": "default", "template": "d"}, {"name": "rag", "template": "r"}]}"#,
    )?;
    let templates = ChatTemplates::from_dir(&dir)?;
    assert_eq!(templates.select(Some("rag"), false)?.source(), "r");
    let Err(PromptError::UnknownTemplateName { available, .. }) = templates.get("nope") else {
        bail!("expected UnknownTemplateName");
    };
    assert_eq!(available, ["default", "rag"]);
    std::fs::remove_dir_all(&dir)?;
    let empty = temp_dir("empty")?;
    assert!(matches!(
        ChatTemplates::from_dir(&empty),
        Err(PromptError::NoChatTemplate { .. })
    ));
    std::fs::remove_dir_all(&empty)?;
    Ok(())
}

fn render(source: &str, ctx: &TemplateContext) -> Result<String> {
    let template = ChatTemplate::new(source)?;
    Ok(template.render(&[Message::text("user", "Hi there")], ctx)?)
}

#[test]
fn environment_behaves_like_transformers_jinja() -> Result<()> {
    let ctx =
        TemplateContext::default().with_kwarg("x", serde_json::json!({"b": [1, 2.0], "a": null}));
    // Python str() of values, trailing newline dropped, trim_blocks / lstrip_blocks.
    assert_eq!(
        render("{{ x }} {{ none }} {{ true }} {{ tools }}\n", &ctx)?,
        "{'b': [1, 2.0], 'a': None} None True None"
    );
    assert_eq!(
        render("  {% if true %}\nA\n  {% endif %}\nB", &ctx)?,
        "A\nB"
    );
    // Python string methods, loop controls, namespace.
    assert_eq!(
        render(
            "{% set ns = namespace(n=0) %}{% for m in messages %}{% for w in m.content[0].text.split(' ') %}{% if loop.first %}{% continue %}{% endif %}{{ w.upper() }}{% set ns.n = ns.n + 1 %}{% endfor %}{% endfor %}{{ ns.n }}",
            &ctx
        )?,
        "THERE1"
    );
    // tojson is json.dumps(ensure_ascii=False) with its options.
    assert_eq!(
        render("{{ x | tojson }}", &ctx)?,
        r#"{"b": [1, 2.0], "a": null}"#
    );
    assert_eq!(
        render("{{ x | tojson(indent=1, sort_keys=true) }}", &ctx)?,
        "{\n \"a\": null,\n \"b\": [\n  1,\n  2.0\n ]\n}"
    );
    assert_eq!(render("{{ '<é>' | tojson }}", &ctx)?, "\"<é>\"");
    // strftime_now gives a date.
    let year = render("{{ strftime_now('%Y') }}", &ctx)?;
    assert!(year.len() == 4 && year.starts_with('2'), "{year}");
    // {% generation %} renders its body.
    assert_eq!(
        render("a {%- generation -%} b {%- endgeneration -%} c", &ctx)?,
        "abc"
    );
    Ok(())
}

#[test]
fn template_errors_name_the_template() -> Result<()> {
    let err = ChatTemplate::with_name("broken", "{% if %}");
    assert!(matches!(err, Err(PromptError::TemplateSyntax { ref name, .. }) if name == "broken"));
    let err = render(
        "{{ raise_exception('bad ' + messages[0].role) }}",
        &TemplateContext::default(),
    );
    let Err(err) = err else {
        bail!("expected an error");
    };
    assert!(err.to_string().contains("bad user"), "{err}");
    let err = ChatTemplate::new("x")
        .and_then(|t| t.render_json(&serde_json::json!([]), &TemplateContext::default()));
    assert!(
        matches!(err, Err(PromptError::TemplateInput { .. })),
        "{err:?}"
    );
    Ok(())
}
