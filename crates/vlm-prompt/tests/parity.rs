//! Parity with transformers 5: renderings and ids in `tests/fixtures/tokenizer/expected.json`
//! were produced by `tests/scripts/make_tokenizer.py` with `apply_chat_template(..., tokenize=False)`
//! and `tokenizer(text).input_ids`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use vlm_prompt::{
    ChatTemplates, ContentPart, Message, PromptError, SpecialTokens, TemplateContext,
    TemplateSource, Tokenizer,
};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer")
}

fn expected() -> Result<Value> {
    let text = std::fs::read_to_string(fixtures().join("expected.json"))?;
    Ok(serde_json::from_str(&text)?)
}

/// Typed messages for a JSON conversation, when every content is a list of parts.
fn typed(messages: &Value) -> Result<Option<Vec<Message>>> {
    let mut out = Vec::new();
    for m in messages.as_array().context("messages")? {
        let role = m["role"].as_str().context("role")?;
        let Some(parts) = m["content"].as_array() else {
            return Ok(None);
        };
        let mut content = Vec::new();
        for p in parts {
            match p["type"].as_str() {
                Some("image") => content.push(ContentPart::Image),
                Some("text") => content.push(ContentPart::Text(
                    p["text"].as_str().context("text")?.to_string(),
                )),
                other => bail!("unexpected part type {other:?}"),
            }
        }
        out.push(Message::new(role, content));
    }
    Ok(Some(out))
}

#[test]
fn templates_are_found_where_transformers_looks() -> Result<()> {
    let llava = ChatTemplates::from_dir(fixtures().join("llava"))?;
    assert!(matches!(llava.source(), TemplateSource::JinjaFiles(_)));
    let chatml = ChatTemplates::from_dir(fixtures().join("chatml"))?;
    assert!(matches!(
        chatml.source(),
        TemplateSource::TokenizerConfig(_)
    ));
    assert_eq!(chatml.names().collect::<Vec<_>>(), ["default"]);
    Ok(())
}

#[test]
fn special_tokens_from_both_config_layouts() -> Result<()> {
    for dir in ["llava", "chatml"] {
        let special = SpecialTokens::from_dir(fixtures().join(dir))?;
        assert_eq!(special.bos.as_deref(), Some("<s>"), "{dir}");
        assert_eq!(special.eos.as_deref(), Some("</s>"), "{dir}");
        assert_eq!(special.pad.as_deref(), Some("<pad>"), "{dir}");
        assert_eq!(special.unk.as_deref(), Some("<unk>"), "{dir}");
        assert_eq!(
            special.extra,
            ["<image>", "<|im_start|>", "<|im_end|>"],
            "{dir}"
        );
    }
    // Only the transformers-4 layout has an added_tokens_decoder.
    let chatml = SpecialTokens::from_dir(fixtures().join("chatml"))?;
    assert_eq!(chatml.added_token_id("<image>"), Some(404));
    assert_eq!(chatml.added_tokens.len(), 7);
    Ok(())
}

#[test]
fn renderings_and_ids_match_transformers() -> Result<()> {
    let expected = expected()?;
    let mut checked = 0;
    for variant in ["llava", "chatml"] {
        let dir = fixtures().join(variant);
        let tokenizer = Tokenizer::from_dir(&dir)?;
        let templates = ChatTemplates::from_dir(&dir)?;
        let template = templates.select(None, false)?;
        let special = SpecialTokens::from_dir(&dir)?;
        for case in expected["conversations"]
            .as_array()
            .context("conversations")?
        {
            let name = case["name"].as_str().context("name")?;
            for gen in [false, true] {
                let key = format!("{variant}/{}", if gen { "gen" } else { "nogen" });
                let want = &case["renderings"][&key];
                let ctx = TemplateContext::new(special.clone()).with_generation_prompt(gen);
                let text = template.render_json(&case["messages"], &ctx)?;
                assert_eq!(text, want["text"].as_str().context("text")?, "{name} {key}");
                if let Some(messages) = typed(&case["messages"])? {
                    assert_eq!(
                        template.render(&messages, &ctx)?,
                        text,
                        "typed {name} {key}"
                    );
                }
                let ids: Vec<u32> = serde_json::from_value(want["ids"].clone())?;
                assert_eq!(tokenizer.encode(&text, false)?, ids, "{name} {key}");
                let ids: Vec<u32> = serde_json::from_value(want["ids_with_special"].clone())?;
                assert_eq!(
                    tokenizer.encode(&text, true)?,
                    ids,
                    "{name} {key} with special"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 32);
    Ok(())
}

#[test]
fn tool_schemas_render_as_python_json_dumps() -> Result<()> {
    let expected = expected()?;
    let case = &expected["tools_case"];
    let dir = fixtures().join("chatml");
    let template = ChatTemplates::from_dir(&dir)?;
    let tools: Vec<Value> = serde_json::from_value(case["tools"].clone())?;
    let ctx = TemplateContext::new(SpecialTokens::from_dir(&dir)?)
        .with_generation_prompt(true)
        .with_tools(tools);
    let text = template
        .select(None, true)?
        .render_json(&case["messages"], &ctx)?;
    assert_eq!(text, case["text"].as_str().context("text")?);
    Ok(())
}

#[test]
fn raise_exception_surfaces_the_message() -> Result<()> {
    let expected = expected()?;
    let dir = fixtures().join("chatml");
    let template = ChatTemplates::from_dir(&dir)?;
    let messages = serde_json::json!([{"role": "tool", "content": "x"}]);
    let err = template
        .select(None, false)?
        .render_json(&messages, &TemplateContext::default())
        .err()
        .context("the tool role must be rejected")?;
    match &err {
        PromptError::TemplateRaised { message, .. } => {
            assert_eq!(
                message,
                expected["raise_exception_message"]
                    .as_str()
                    .context("msg")?
            )
        }
        other => bail!("expected TemplateRaised, got {other:?}"),
    }
    assert!(err.to_string().contains("but got tool"), "{err}");
    Ok(())
}

#[test]
fn encodings_and_decodings_match_transformers() -> Result<()> {
    let expected = expected()?;
    let tokenizer = Tokenizer::from_dir(fixtures().join("llava"))?;
    assert_eq!(tokenizer.vocab_size(), 407);
    for case in expected["encodings"].as_array().context("encodings")? {
        let text = case["text"].as_str().context("text")?;
        let with: Vec<u32> = serde_json::from_value(case["ids_with_special"].clone())?;
        let without: Vec<u32> = serde_json::from_value(case["ids"].clone())?;
        assert_eq!(tokenizer.encode(text, true)?, with, "{text:?}");
        assert_eq!(tokenizer.encode(text, false)?, without, "{text:?}");
        assert_eq!(
            tokenizer.decode(&with, false)?,
            case["decoded"].as_str().context("d")?
        );
        assert_eq!(
            tokenizer.decode(&with, true)?,
            case["decoded_skip_special"].as_str().context("d")?
        );
    }
    assert_eq!(tokenizer.token_to_id("<image>"), Some(404));
    assert_eq!(tokenizer.id_to_token(401).as_deref(), Some("</s>"));
    Ok(())
}
