//! Idefics3 (SmolVLM's architecture) parity against transformers 5.23 (fixtures from
//! `tests/scripts/make_idefics3_fixtures.py`).
//!
//! Tolerances (f32): pixel values <= 1e-5 (Pillow-exact resizes), pixel attention masks,
//! expanded prompt ids and greedy ids exact, vision tower and connector output and whole-prompt
//! logits <= 1e-4.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::DType;
use vlm::{LoadOptions, MediaOptions, Message, ModelSource, Request, Vlm};
use vlm_core::models::{Idefics3, Idefics3Images};
use vlm_tests::{
    check_logits_and_greedy, family_media, family_model, fixtures, max_abs_diff, request, Reference,
};

const PIXEL_TOL: f32 = 1e-5;
const FEATURE_TOL: f32 = 1e-4;
const LOGIT_TOL: f32 = 1e-4;
const NAME: &str = "idefics3-tiny";

fn load(name: &str) -> Result<Vlm> {
    let source = ModelSource::Local(fixtures().join(name));
    Ok(Vlm::load(&source, &LoadOptions::default())?)
}

#[test]
fn idefics3_tiling_split_and_unsplit_match_transformers() -> Result<()> {
    let reference = Reference::load(NAME)?;
    let cases = reference.cases();
    assert!(cases.len() >= 6, "too few reference cases");
    let mut models: HashMap<String, Vlm> = HashMap::new();
    for (i, case) in cases.iter().enumerate() {
        let n = i + 1;
        let folder = case["model"].as_str().context("model")?.to_string();
        if !models.contains_key(&folder) {
            models.insert(folder.clone(), load(&folder)?);
        }
        let vlm = &models[&folder];
        let what = format!("{folder} case {n} ({})", case["description"]);
        let prepared = vlm.prepare(&request(vlm, case)?)?;
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
        let want_grids: Vec<(usize, usize)> = case["grids"]
            .as_array()
            .context("grids")?
            .iter()
            .map(|g| {
                (
                    g[0].as_u64().unwrap_or(0) as usize,
                    g[1].as_u64().unwrap_or(0) as usize,
                )
            })
            .collect();
        let media: &Idefics3Images = family_media(&prepared)?;
        assert_eq!(media.tile_grids, want_grids, "{what}: tile grids");

        let model: &Idefics3 = family_model(vlm)?;
        if let Some(px) = &media.pixel_values {
            let d = max_abs_diff(px, reference.tensor(n, "pixel_values")?)?;
            assert!(d <= PIXEL_TOL, "{what}: pixel values differ by {d}");
            let mask = media.pixel_attention_mask.as_ref().context("mask")?;
            let want = reference
                .tensor(n, "pixel_attention_mask")?
                .to_dtype(DType::U8)?;
            assert_eq!(
                mask.flatten_all()?.to_vec1::<u8>()?,
                want.flatten_all()?.to_vec1::<u8>()?,
                "{what}: pixel attention mask"
            );
            let vis = model.vision_features(px, Some(mask))?;
            let d = max_abs_diff(&vis, reference.tensor(n, "vision_output")?)?;
            assert!(d <= FEATURE_TOL, "{what}: vision output differs by {d}");
            let feats = model.image_features(px, Some(mask))?;
            let d = max_abs_diff(&feats, reference.tensor(n, "image_features")?)?;
            assert!(d <= FEATURE_TOL, "{what}: connector output differs by {d}");
        } else {
            assert!(
                reference.tensor(n, "pixel_values").is_err(),
                "{what}: images expected"
            );
        }

        check_logits_and_greedy(vlm, &prepared, &reference, n, 10, LOGIT_TOL, &what)?;
    }
    Ok(())
}

#[test]
fn idefics3_placeholder_and_feature_counts_must_match() -> Result<()> {
    let vlm = load(NAME)?;
    let img = vlm.load_image(fixtures().join("reference/images/wide_astronaut.png"))?;
    let good = vlm.prepare(&Request::new("What is in the image?", vec![img.clone()]))?;
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
        "{e}"
    );
    // More images than markers.
    let req = Request {
        messages: vec![Message::user_with_images(1, "Two?")],
        images: vec![img.clone(), img],
        ..Request::default()
    };
    let e = vlm.prepare(&req).unwrap_err().to_string();
    assert!(
        e.contains("1 image marker") && e.contains("2 image(s)"),
        "{e}"
    );
    Ok(())
}

#[test]
fn idefics3_splitting_can_be_turned_off_from_the_api() -> Result<()> {
    let options = LoadOptions {
        media: MediaOptions {
            image_splitting: Some(false),
            ..MediaOptions::default()
        },
        ..LoadOptions::default()
    };
    let vlm = Vlm::load(&ModelSource::Local(fixtures().join(NAME)), &options)?;
    let img = vlm.load_image(fixtures().join("reference/images/large_astronaut.png"))?;
    let prepared = vlm.prepare(&Request::new("What is in the image?", vec![img]))?;
    let media: &Idefics3Images = family_media(&prepared)?;
    assert_eq!(media.tile_grids, vec![(0, 0)]);
    assert_eq!(media.pixel_values.as_ref().context("pixels")?.dim(0)?, 1);
    vlm.prompt_logits(&prepared)?;
    Ok(())
}
