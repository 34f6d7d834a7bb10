//! LLaVA parity against transformers 5.23 (fixtures from `tests/scripts/make_fixtures.py`).
//!
//! Tolerances (f32): pixel values <= 1e-5 (the uint8 resize is bit-exact to Pillow's),
//! vision features, projector output and logits <= 1e-4; token ids exact.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result};
use vlm::{LoadOptions, ModelSource, Vlm};
use vlm_core::models::{Llava, LlavaImages};
use vlm_tests::{
    check_logits_and_greedy, cosine, family_media, family_model, fixtures, max_abs_diff, request,
    Reference,
};

const PIXEL_TOL: f32 = 1e-5;
const FEATURE_TOL: f32 = 1e-4;
const LOGIT_TOL: f32 = 1e-4;

fn load(name: &str) -> Result<Vlm> {
    let source = ModelSource::Local(fixtures().join(name));
    Ok(Vlm::load(&source, &LoadOptions::default())?)
}

fn check_model(name: &str) -> Result<()> {
    let vlm = load(name)?;
    let reference = Reference::load(name)?;
    let cases = reference.cases();
    assert!(!cases.is_empty(), "{name}: no reference cases");
    for (i, case) in cases.iter().enumerate() {
        let n = i + 1;
        let req = request(&vlm, case)?;
        let prepared = vlm.prepare(&req)?;
        assert_eq!(
            prepared.prompt,
            case["prompt"].as_str().context("prompt")?,
            "{name} case {n}: rendered prompt"
        );
        assert_eq!(
            prepared.input_ids,
            reference.ids(n, "input_ids")?,
            "{name} case {n}: input ids"
        );
        let media: &LlavaImages = family_media(&prepared)?;
        let px = media.pixel_values.as_ref().context("pixel values")?;
        let d = max_abs_diff(px, reference.tensor(n, "pixel_values")?)?;
        assert!(
            d <= PIXEL_TOL,
            "{name} case {n}: pixel values differ by {d}"
        );

        let llava: &Llava = family_model(&vlm)?;
        let vis = llava.vision_features(px)?;
        let d = max_abs_diff(&vis, reference.tensor(n, "vision_selected")?)?;
        assert!(
            d <= FEATURE_TOL,
            "{name} case {n}: vision features differ by {d}"
        );
        let feats = llava.image_features(px)?;
        let d = max_abs_diff(&feats, reference.tensor(n, "image_features")?)?;
        assert!(
            d <= FEATURE_TOL,
            "{name} case {n}: projector output differs by {d}"
        );

        check_logits_and_greedy(
            &vlm,
            &prepared,
            &reference,
            n,
            12,
            LOGIT_TOL,
            &format!("{name} case {n}"),
        )?;
    }
    Ok(())
}

#[test]
fn clip_llama_gqa_llama3_rope_untied_matches_transformers() -> Result<()> {
    check_model("llava-clip-llama")
}

#[test]
fn siglip_qwen2_tied_sharded_published_layout_matches_transformers() -> Result<()> {
    check_model("llava-siglip-qwen2")
}

#[test]
fn reference_cases_are_sensitive_to_the_image() -> Result<()> {
    // Guards the fixtures themselves: if the image did not change the logits, the parity tests
    // above could pass with a broken vision path.
    for name in ["llava-clip-llama", "llava-siglip-qwen2"] {
        let r = Reference::load(name)?;
        let a = r.tensor(1, "logits")?;
        let last_a = a.get(a.dim(0)? - 1)?;
        let mut differs = false;
        for n in 2..=r.cases().len() {
            let b = r.tensor(n, "logits")?;
            let last_b = b.get(b.dim(0)? - 1)?;
            differs |= max_abs_diff(&last_a, &last_b)? > 1e-2;
        }
        assert!(
            differs,
            "{name}: reference logits do not depend on the case"
        );
    }
    Ok(())
}

#[test]
fn half_precision_tracks_the_f32_reference() -> Result<()> {
    // bf16/f16 cannot meet the f32 tolerance; they must still compute the same function.
    // Metric: cosine similarity of the whole prompt's logits with transformers' f32 logits.
    let name = "llava-siglip-qwen2";
    let reference = Reference::load(name)?;
    let case = &reference.cases()[0];
    let expected = reference.tensor(1, "logits")?;
    for dtype in [vlm::DType::BF16, vlm::DType::F16] {
        let options = LoadOptions {
            dtype: Some(dtype),
            ..LoadOptions::default()
        };
        let vlm = Vlm::load(&ModelSource::Local(fixtures().join(name)), &options)?;
        let prepared = vlm.prepare(&request(&vlm, case)?)?;
        let got = vlm.prompt_logits(&prepared)?;
        let cosine = cosine(&got, expected)?;
        assert!(cosine > 0.999, "{dtype:?}: cosine similarity {cosine}");
    }
    Ok(())
}
