//! LLaVA-NeXT and LLaVA-OneVision parity against transformers 5.23 (fixtures from
//! `tests/scripts/make_llava_next_fixtures.py`).
//!
//! Tolerances (f32): pixel values <= 1e-5 (Pillow-exact resizes), image sizes, expanded prompt
//! ids and greedy ids exact, selected vision features, packed image features (unpadded, with
//! `image_newline`, OneVision's downscale) and whole-prompt logits <= 1e-4.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result};
use candle_core::DType;
use vlm::{LoadOptions, ModelSource, Request, Vlm};
use vlm_core::models::{AnyresImages, LlavaNext};
use vlm_tests::{
    check_logits_and_greedy, family_media, family_model, fixtures, max_abs_diff, request, Reference,
};

const PIXEL_TOL: f32 = 1e-5;
const FEATURE_TOL: f32 = 1e-4;
const LOGIT_TOL: f32 = 1e-4;

fn load(name: &str) -> Result<Vlm> {
    Ok(Vlm::load(
        &ModelSource::Local(fixtures().join(name)),
        &LoadOptions::default(),
    )?)
}

fn check_model(name: &str) -> Result<()> {
    let vlm = load(name)?;
    let reference = Reference::load(name)?;
    let cases = reference.cases();
    assert!(cases.len() >= 5, "{name}: too few reference cases");
    let model: &LlavaNext = family_model(&vlm)?;
    for (i, case) in cases.iter().enumerate() {
        let n = i + 1;
        let what = format!("{name} case {n} ({})", case["description"]);
        let prepared = vlm.prepare(&request(&vlm, case)?)?;
        assert_eq!(
            prepared.prompt,
            case["prompt"].as_str().context("prompt")?,
            "{what}: prompt"
        );
        assert_eq!(
            prepared.input_ids,
            reference.ids(n, "input_ids")?,
            "{what}: expanded ids"
        );
        let images = case["images"].as_array().context("images")?;
        let media: &AnyresImages = family_media(&prepared)?;
        if let Some(px) = &media.pixel_values {
            let sizes = reference
                .tensor(n, "image_sizes")?
                .to_dtype(DType::I64)?
                .to_vec2::<i64>()?;
            let sizes: Vec<(usize, usize)> = sizes
                .iter()
                .map(|s| (s[0] as usize, s[1] as usize))
                .collect();
            assert_eq!(media.image_sizes, sizes, "{what}: image sizes");
            let mut start = 0;
            for (k, &views) in media.views_per_image.iter().enumerate() {
                let want_views = images[k]["views"].as_u64().context("views")? as usize;
                assert_eq!(views, want_views, "{what}: views of image {k}");
                let mine = px.narrow(0, start, views)?;
                let d = max_abs_diff(&mine, reference.tensor(n, &format!("pixel_values.{k}"))?)?;
                assert!(
                    d <= PIXEL_TOL,
                    "{what}: image {k} pixel values differ by {d}"
                );
                let vis = model.vision_features(&mine)?;
                let d = max_abs_diff(&vis, reference.tensor(n, &format!("vision_selected.{k}"))?)?;
                assert!(
                    d <= FEATURE_TOL,
                    "{what}: image {k} vision features differ by {d}"
                );
                start += views;
            }
            let mut per_image = Vec::new();
            let mut start = 0;
            for &views in &media.views_per_image {
                per_image.push(px.narrow(0, start, views)?);
                start += views;
            }
            let feats = model.image_features(&per_image, &media.image_sizes)?;
            let d = max_abs_diff(&feats, reference.tensor(n, "image_features")?)?;
            assert!(
                d <= FEATURE_TOL,
                "{what}: packed image features differ by {d}"
            );
        } else {
            assert!(images.is_empty(), "{what}: images expected");
        }

        check_logits_and_greedy(&vlm, &prepared, &reference, n, 10, LOGIT_TOL, &what)?;
    }
    Ok(())
}

#[test]
fn llava_next_anyres_published_layout_matches_transformers() -> Result<()> {
    check_model("llava-next-tiny")
}

#[test]
fn llava_onevision_anyres_max_9_matches_transformers() -> Result<()> {
    check_model("llava-onevision-tiny")
}

#[test]
fn anyres_placeholder_and_feature_counts_must_match() -> Result<()> {
    for name in ["llava-next-tiny", "llava-onevision-tiny"] {
        let vlm = load(name)?;
        let img = vlm.load_image(fixtures().join("reference/images/large_astronaut.png"))?;
        let good = vlm.prepare(&Request::new("What is in the image?", vec![img]))?;
        let mut bad = good.clone();
        let image_token = vlm.model().image_token_id();
        let at = bad
            .input_ids
            .iter()
            .position(|&t| t == image_token)
            .unwrap();
        bad.input_ids.remove(at);
        let e = vlm.prompt_logits(&bad).unwrap_err().to_string();
        assert!(
            e.contains("placeholder") && e.contains("feature rows"),
            "{name}: {e}"
        );
    }
    Ok(())
}
