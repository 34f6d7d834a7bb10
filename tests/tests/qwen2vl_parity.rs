//! Qwen2-VL and Qwen2.5-VL parity against transformers 5.23 (fixtures from
//! `tests/scripts/make_qwen2vl_fixtures.py`).
//!
//! Tolerances (f32): pixel values <= 1e-5 (Pillow-exact resize for images; the video frames are
//! sized so that the video resize is the identity), grids, 3-D positions and token ids exact,
//! vision tower output (before and after the merger) and whole-prompt logits <= 1e-4.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use vlm::{LoadOptions, ModelSource, Vlm};
use vlm_core::models::{Qwen2Vl, QwenMedia};
use vlm_tests::{
    check_logits_and_greedy, cosine, family_media, family_model, fixtures, max_abs_diff, request,
    Reference,
};

const PIXEL_TOL: f32 = 1e-5;
const FEATURE_TOL: f32 = 1e-4;
const LOGIT_TOL: f32 = 1e-4;

const MODELS: [&str; 2] = ["qwen2-vl-tiny", "qwen2.5-vl-tiny"];

fn load(name: &str) -> Result<Vlm> {
    let source = ModelSource::Local(fixtures().join(name));
    Ok(Vlm::load(&source, &LoadOptions::default())?)
}

fn grids(reference: &Reference, n: usize, name: &str) -> Result<Vec<[usize; 3]>> {
    let t = reference.tensor(n, name)?.to_dtype(DType::I64)?;
    Ok(t.to_vec2::<i64>()?
        .into_iter()
        .map(|g| [g[0] as usize, g[1] as usize, g[2] as usize])
        .collect())
}

fn check_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) -> Result<f32> {
    let d = max_abs_diff(got, want)?;
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
    Ok(d)
}

fn check_model(name: &str) -> Result<()> {
    let vlm = load(name)?;
    let reference = Reference::load(name)?;
    let cases = reference.cases();
    assert!(cases.len() >= 5, "{name}: too few reference cases");
    let model: &Qwen2Vl = family_model(&vlm)?;
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
            "{what}: input ids"
        );

        let media: &QwenMedia = family_media(&prepared)?;
        if let Some(px) = &media.pixel_values {
            check_close(
                &format!("{what}: pixel values"),
                px,
                reference.tensor(n, "pixel_values")?,
                PIXEL_TOL,
            )?;
            assert_eq!(
                media.image_grids,
                grids(&reference, n, "image_grid_thw")?,
                "{what}: image grids"
            );
            let (hidden, merged) = model
                .vision_tower()
                .forward_with_hidden(px, &media.image_grids)?;
            check_close(
                &format!("{what}: image tower hidden"),
                &hidden,
                reference.tensor(n, "image_hidden")?,
                FEATURE_TOL,
            )?;
            check_close(
                &format!("{what}: image features"),
                &merged,
                reference.tensor(n, "image_features")?,
                FEATURE_TOL,
            )?;
        } else {
            assert!(
                reference.tensor(n, "pixel_values").is_err(),
                "{what}: images expected"
            );
        }
        if let Some(px) = &media.video_pixel_values {
            check_close(
                &format!("{what}: video pixel values"),
                px,
                reference.tensor(n, "pixel_values_videos")?,
                PIXEL_TOL,
            )?;
            assert_eq!(
                media.video_grids,
                grids(&reference, n, "video_grid_thw")?,
                "{what}: video grids"
            );
            if let Ok(secs) = reference.tensor(n, "second_per_grid_ts") {
                let want = secs.to_vec1::<f32>()?;
                let got: Vec<f32> = media
                    .video_seconds_per_grid
                    .iter()
                    .map(|s| s.unwrap_or(f32::NAN))
                    .collect();
                assert_eq!(got, want, "{what}: seconds per temporal patch");
            }
            let (hidden, merged) = model
                .vision_tower()
                .forward_with_hidden(px, &media.video_grids)?;
            check_close(
                &format!("{what}: video tower hidden"),
                &hidden,
                reference.tensor(n, "video_hidden")?,
                FEATURE_TOL,
            )?;
            check_close(
                &format!("{what}: video features"),
                &merged,
                reference.tensor(n, "video_features")?,
                FEATURE_TOL,
            )?;
        } else {
            assert!(
                reference.tensor(n, "pixel_values_videos").is_err(),
                "{what}: a video expected"
            );
        }

        let positions = model.rope_index(
            &prepared.input_ids,
            &media.image_grids,
            &media.video_grids,
            &media.video_seconds_per_grid,
        )?;
        let want = reference
            .tensor(n, "position_ids")?
            .to_dtype(DType::I64)?
            .to_vec2::<i64>()?;
        assert_eq!(positions.axes.to_vec(), want, "{what}: 3-D positions");
        let delta = reference.tensor(n, "rope_delta")?.to_vec1::<i64>()?;
        assert_eq!(vec![positions.delta], delta, "{what}: rope delta");

        check_logits_and_greedy(&vlm, &prepared, &reference, n, 10, LOGIT_TOL, &what)?;
    }
    Ok(())
}

#[test]
fn qwen2_vl_tied_published_layout_matches_transformers() -> Result<()> {
    check_model(MODELS[0])
}

#[test]
fn qwen2_5_vl_windows_untied_transformers5_layout_matches_transformers() -> Result<()> {
    check_model(MODELS[1])
}

#[test]
fn reference_cases_are_sensitive_to_the_media() -> Result<()> {
    // Guards the fixtures: if the media did not change the logits, parity could pass with a
    // broken vision path.
    for name in MODELS {
        let r = Reference::load(name)?;
        let sens = &r.meta["image_sensitivity"];
        let diff = sens["last_logits_max_abs_diff"]
            .as_f64()
            .context("sensitivity")?;
        assert!(
            diff > 0.5,
            "{name}: swapping the image changed the logits by only {diff}"
        );
    }
    Ok(())
}

#[test]
fn half_precision_tracks_the_f32_reference() -> Result<()> {
    // bf16/f16 cannot meet the f32 tolerance; they must still compute the same function
    // (cosine similarity of the whole prompt's logits with transformers' f32 logits). Case 2 of
    // Qwen2.5-VL has an image, a video, windows and full-attention blocks.
    let name = MODELS[1];
    let reference = Reference::load(name)?;
    let case = &reference.cases()[1];
    let expected = reference.tensor(2, "logits")?;
    for dtype in [DType::BF16, DType::F16] {
        let options = LoadOptions {
            dtype: Some(dtype),
            ..LoadOptions::default()
        };
        let vlm = Vlm::load(&ModelSource::Local(fixtures().join(name)), &options)?;
        let prepared = vlm.prepare(&request(&vlm, case)?)?;
        let got = vlm.prompt_logits(&prepared)?;
        let cosine = cosine(&got, expected)?;
        eprintln!("{name} {dtype:?}: logits cosine {cosine:.5}");
        assert!(cosine > 0.999, "{dtype:?}: cosine similarity {cosine}");
    }
    Ok(())
}
