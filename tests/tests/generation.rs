//! Generation behaviour beyond greedy parity: streaming, stop strings, sampling, log-probs,
//! and loading through the Hugging Face cache layout.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use anyhow::Result;
use vlm::{FinishReason, GenerateParams, LoadOptions, ModelSource, Request, SamplingParams, Vlm};
use vlm_tests::fixtures;

fn model() -> Result<Vlm> {
    Ok(Vlm::load(
        &ModelSource::Local(fixtures().join("llava-siglip-qwen2")),
        &LoadOptions::default(),
    )?)
}

fn request(vlm: &Vlm) -> Result<Request> {
    let img = vlm.load_image(fixtures().join("reference/images/tall_chelsea.png"))?;
    Ok(Request::new("What is in the image?", vec![img]))
}

#[test]
fn streamed_text_equals_the_final_text() -> Result<()> {
    let vlm = model()?;
    let params = GenerateParams {
        max_new_tokens: 16,
        ignore_eos: true,
        ..GenerateParams::default()
    };
    let mut streamed = String::new();
    let mut events = 0;
    let out = vlm.generate(&request(&vlm)?, &params, |e| {
        streamed.push_str(&e.text);
        events += 1;
        true
    })?;
    assert_eq!(streamed, out.text);
    assert_eq!(out.token_ids.len(), 16);
    assert!(events >= 16);
    assert_eq!(out.finish_reason, FinishReason::Length);
    Ok(())
}

#[test]
fn logprobs_are_normalized_and_sorted() -> Result<()> {
    let vlm = model()?;
    let params = GenerateParams {
        max_new_tokens: 4,
        ignore_eos: true,
        logprobs: Some(5),
        ..GenerateParams::default()
    };
    let out = vlm.generate(&request(&vlm)?, &params, |_| true)?;
    assert_eq!(out.logprobs.len(), 4);
    for lp in &out.logprobs {
        assert_eq!(lp.top.len(), 5);
        // Greedy: the chosen token is the best alternative.
        assert_eq!(lp.top[0].0, lp.token_id);
        assert!((lp.top[0].1 - lp.logprob).abs() < 1e-6);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(lp.logprob <= 0.0);
    }
    Ok(())
}

#[test]
fn seeded_sampling_reproduces_and_seeds_differ() -> Result<()> {
    let vlm = model()?;
    let req = request(&vlm)?;
    let run = |seed| -> Result<Vec<u32>> {
        let params = GenerateParams {
            max_new_tokens: 12,
            ignore_eos: true,
            sampling: SamplingParams {
                temperature: 1.5,
                top_p: Some(0.95),
                top_k: Some(50),
                seed,
                ..SamplingParams::default()
            },
            ..GenerateParams::default()
        };
        Ok(vlm.generate(&req, &params, |_| true)?.token_ids)
    };
    let a = run(1)?;
    assert_eq!(a, run(1)?);
    assert!((2..6).any(|s| run(s).map(|b| b != a).unwrap_or(false)));
    Ok(())
}

#[test]
fn stop_string_cuts_the_text() -> Result<()> {
    // This fixture's greedy text has plain ASCII words in it (the Qwen2 one is mostly U+FFFD).
    let vlm = Vlm::load(
        &ModelSource::Local(fixtures().join("llava-clip-llama")),
        &LoadOptions::default(),
    )?;
    let params = GenerateParams {
        max_new_tokens: 16,
        ignore_eos: true,
        ..GenerateParams::default()
    };
    let full = vlm.generate(&request(&vlm)?, &params, |_| true)?;
    // Use two ASCII letters from after the first token as the stop string.
    let bytes = full.text.as_bytes();
    let at = (2..bytes.len().saturating_sub(1))
        .find(|&i| bytes[i].is_ascii_alphabetic() && bytes[i + 1].is_ascii_alphabetic())
        .ok_or_else(|| anyhow::anyhow!("no ASCII pair in {:?}", full.text))?;
    let stop = full.text[at..at + 2].to_string();
    let expected = &full.text[..full.text.find(&stop).unwrap_or(0)];
    let params = GenerateParams {
        stop_strings: vec![stop.clone()],
        ..params
    };
    let mut streamed = String::new();
    let out = vlm.generate(&request(&vlm)?, &params, |e| {
        streamed.push_str(&e.text);
        true
    })?;
    assert_eq!(out.finish_reason, FinishReason::StopString);
    assert_eq!(out.text, expected, "stop string {stop:?}");
    assert_eq!(streamed, expected);
    Ok(())
}

#[test]
fn hub_id_loads_from_the_hf_cache_layout() -> Result<()> {
    // hf-hub's cache: <cache>/models--owner--name/{refs/main, snapshots/<commit>/<files>}.
    let cache = std::env::temp_dir().join(format!("vlm-hf-cache-{}", std::process::id()));
    let repo = cache.join("hub/models--tiny--llava-clip-llama");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap)?;
    std::fs::create_dir_all(repo.join("refs"))?;
    std::fs::write(repo.join("refs/main"), commit)?;
    for entry in std::fs::read_dir(fixtures().join("llava-clip-llama"))? {
        let p = entry?.path();
        if let Some(f) = p.file_name() {
            std::fs::copy(&p, snap.join(f))?;
        }
    }
    // The environment is read when the source is resolved; this test owns these variables.
    std::env::set_var("HF_HOME", &cache);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let source = ModelSource::parse("tiny/llava-clip-llama", None);
    assert!(matches!(source, ModelSource::Hub { .. }));
    let vlm = Vlm::load(&source, &LoadOptions::default())?;
    assert!(vlm.dir().starts_with(&snap));
    let missing = Vlm::load(
        &ModelSource::parse("tiny/absent", None),
        &LoadOptions::default(),
    );
    let e = missing.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        e.contains("config.json") && e.contains("tiny/absent"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&cache);
    Ok(())
}
