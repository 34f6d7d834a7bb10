//! Parity of the LLaVA-NeXT / LLaVA-OneVision ("anyres") processors with transformers 5.23's
//! `LlavaNextImageProcessorPil` and `LlavaOnevisionImageProcessorPil`.
//!
//! Fixtures come from `tests/scripts/anyres_preprocess_fixtures.py`: skimage photographs wider
//! than tall, taller than wide, an 8:1 panorama, one smaller than a tile and a very large one;
//! tiny configs (28 and 32 pixel tiles, size != crop_size, pinpoints that are not tile
//! multiples) whose whole `pixel_values` are stored, and the published llava-v1.6-mistral and
//! llava-onevision-qwen2-0.5b configs, of which a strided sample and the sum are stored. Each
//! config exists in both dialects. Tolerances: `pixel_values` max |diff| <= 1e-6 (measured: 0);
//! shapes, `image_sizes`, the chosen grid resolution and the padded `uint8` image equal.

// Tests assert by panicking; the workspace lints target library code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use vlm_preprocess::anyres::{
    resize_and_pad_for_patching, select_best_resolution, AnyresConfig, AnyresImageProcessor,
    AnyresKind, AnyresPixels,
};
use vlm_preprocess::image::RgbImage;
use vlm_preprocess::{load_image, Extent, PreprocessError, Resample};

const PIXEL_TOLERANCE: f32 = 1e-6;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/preprocess/anyres")
}

fn index() -> Value {
    let path = fixture_dir().join("index.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f32_tensor(st: &SafeTensors, key: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    let t = st
        .tensor(key)
        .with_context(|| format!("missing tensor {key}"))?;
    ensure!(t.dtype() == Dtype::F32, "{key}: {:?}", t.dtype());
    let data = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((data, t.shape().to_vec()))
}

fn pair(v: &Value) -> (u32, u32) {
    (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32)
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Loads a config in both dialects; they must resolve to the same processor.
fn processor(config: &str) -> Result<AnyresImageProcessor> {
    let dir = fixture_dir().join("configs");
    let flat = AnyresImageProcessor::from_dir(&dir.join(config))?;
    let nested = AnyresImageProcessor::from_dir(&dir.join(format!("{config}_nested")))?;
    ensure!(
        flat == nested,
        "{config}: the two dialects resolve differently:\n{flat:?}\n{nested:?}"
    );
    Ok(flat)
}

fn image(name: &str) -> Result<RgbImage> {
    Ok(load_image(
        &fixture_dir().join("images").join(format!("{name}.png")),
    )?)
}

fn compare_full(st: &SafeTensors, key: &str, got: &AnyresPixels) -> Result<f32> {
    let (expected, shape) = f32_tensor(st, &format!("{key}/pixel_values"))?;
    ensure!(
        shape == got.shape,
        "{key}: shape {:?}, expected {shape:?}",
        got.shape
    );
    let diff = max_abs_diff(&got.data, &expected);
    ensure!(
        diff <= PIXEL_TOLERANCE,
        "{key}: pixel_values differ by {diff}"
    );
    Ok(diff)
}

#[test]
fn single_images_match_transformers() -> Result<()> {
    let bytes = std::fs::read(fixture_dir().join("expected.safetensors"))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let index = index();
    let stride = index["sample_stride"].as_u64().unwrap() as usize;
    let cases = index["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut worst = 0f32;
    for case in cases {
        let config = case["config"].as_str().unwrap();
        let name = case["image"].as_str().unwrap();
        let key = format!("{config}/{name}");
        let p = processor(config)?;
        let img = image(name)?;
        let got = p.process(&img)?;
        let (h, w) = pair(&case["image_size"]);
        ensure!(
            got.image_size == (h, w),
            "{key}: image_size {:?}",
            got.image_size
        );
        let best = pair(&case["best_resolution"]);
        ensure!(
            got.best_resolution == Some(best) && p.best_resolution(h, w)? == best,
            "{key}: best resolution {:?}, expected {best:?}",
            got.best_resolution
        );
        let shape = usizes(&case["shape"]);
        ensure!(
            shape == got.shape,
            "{key}: shape {:?}, expected {shape:?}",
            got.shape
        );
        let (rows, cols) = p.tile_grid(h, w)?;
        ensure!(
            1 + rows * cols == got.num_views(),
            "{key}: tile grid {rows}x{cols}"
        );
        if case["full"].as_bool().unwrap() {
            worst = worst.max(compare_full(&st, &key, &got)?);
            // The uint8 image the tiles are cut from.
            let padded = st.tensor(&format!("{key}/padded"))?;
            let target = Extent {
                height: best.0,
                width: best.1,
            };
            let filter = Resample::from_json(&serde_json::json!(match config {
                "next_crop" => 2,
                "onevision_odd" => 1,
                _ => 3,
            }))?;
            let ours = resize_and_pad_for_patching(&img, target, filter)?;
            let (pw, ph) = ours.dimensions();
            ensure!(
                padded.shape() == [3, ph as usize, pw as usize],
                "{key}: padded shape"
            );
            for (x, y, px) in ours.enumerate_pixels() {
                for c in 0..3 {
                    let want =
                        padded.data()[(c * ph as usize + y as usize) * pw as usize + x as usize];
                    ensure!(
                        px.0[c] == want,
                        "{key}: padded pixel ({x}, {y}, {c}) differs"
                    );
                }
            }
        } else {
            let (sample, _) = f32_tensor(&st, &format!("{key}/pixel_values_sample"))?;
            let ours: Vec<f32> = got.data.iter().step_by(stride).copied().collect();
            ensure!(ours.len() == sample.len(), "{key}: sample length");
            let diff = max_abs_diff(&ours, &sample);
            ensure!(
                diff <= PIXEL_TOLERANCE,
                "{key}: sampled pixel_values differ by {diff}"
            );
            worst = worst.max(diff);
        }
        let sum: f64 = got.data.iter().map(|&v| f64::from(v)).sum();
        let want = case["sum"].as_f64().unwrap();
        ensure!(
            (sum - want).abs() <= 1e-6 * got.data.len() as f64,
            "{key}: sum {sum}, expected {want}"
        );
    }
    println!(
        "anyres pixel_values: max |diff| = {worst:e} over {} cases",
        cases.len()
    );
    Ok(())
}

#[test]
fn multi_image_prompts_match_transformers() -> Result<()> {
    let bytes = std::fs::read(fixture_dir().join("expected.safetensors"))?;
    let st = SafeTensors::deserialize(&bytes)?;
    for prompt in index()["prompts"].as_array().unwrap() {
        let config = prompt["config"].as_str().unwrap();
        let p = processor(config)?;
        let entries = prompt["images"].as_array().unwrap();
        let images = entries
            .iter()
            .map(|e| image(e["image"].as_str().unwrap()))
            .collect::<Result<Vec<_>>>()?;
        let got = p.process_prompt(&images)?;
        ensure!(got.len() == entries.len());
        // OneVision leaves the images of a multi-image prompt untiled.
        assert_eq!(
            p.tiles_in_prompt_of(images.len()),
            p.kind() == AnyresKind::LlavaNext
        );
        for (k, (entry, pixels)) in entries.iter().zip(&got).enumerate() {
            let key = format!("{config}/prompt{}/{k}", prompt["prompt"]);
            ensure!(
                pixels.image_size == pair(&entry["image_size"]),
                "{key}: image_size"
            );
            compare_full(&st, &key, pixels)?;
        }
    }
    Ok(())
}

#[test]
fn published_defaults_and_the_best_resolution_rule() -> Result<()> {
    let next = processor("next_published")?;
    assert_eq!(next.kind(), AnyresKind::LlavaNext);
    assert_eq!(next.tile_size(), 336);
    assert_eq!(next.output_size(), Some((336, 336)));
    // A 1200x760 photo keeps the most pixels at 672x672; a tiny one wastes the least at
    // 336x672 (the first of the two equally small candidates).
    assert_eq!(next.best_resolution(760, 1200)?, (672, 672));
    assert_eq!(next.best_resolution(15, 20)?, (336, 672));
    let ov = processor("onevision_published")?;
    assert_eq!(
        (ov.kind(), ov.tile_size()),
        (AnyresKind::LlavaOnevision, 384)
    );
    assert_eq!(ov.grid_pinpoints().len(), 36);
    assert_eq!(ov.tile_grid(760, 1200)?, (2, 4));
    let e = |height, width| Extent { height, width };
    assert_eq!(
        select_best_resolution(100, 100, &[e(50, 50), e(100, 100), e(200, 200)]),
        Some(e(100, 100))
    );
    Ok(())
}

#[test]
fn config_errors_name_the_field() -> Result<()> {
    let err = |json: &str| -> String {
        match AnyresConfig::from_json_str(json).and_then(|c| AnyresImageProcessor::from_config(&c))
        {
            Ok(_) => panic!("accepted {json}"),
            Err(e) => e.to_string(),
        }
    };
    let msg = err(
        r#"{"image_processor_type": "LlavaNextImageProcessor", "image_grid_pinpoints": [[336]]}"#,
    );
    assert!(msg.contains("image_grid_pinpoints"), "{msg}");
    let msg =
        err(r#"{"image_processor_type": "LlavaOnevisionImageProcessor", "do_center_crop": true}"#);
    assert!(msg.contains("crop_size"), "{msg}");
    let msg = err(r#"{"image_processor_type": "Qwen2VLImageProcessor"}"#);
    assert!(msg.contains("LlavaNextImageProcessor"), "{msg}");
    let p = processor("onevision_small")?;
    assert!(matches!(
        p.process(&RgbImage::new(5, 0)),
        Err(PreprocessError::EmptyImage { .. })
    ));
    assert!(p.best_resolution(0, 3).is_err());
    Ok(())
}

/// The pixel values the model fixtures (`tests/scripts/make_llava_next_fixtures.py`) were run
/// on, rebuilt from each model folder's own processor config: the published flat
/// `preprocessor_config.json` of llava-next-tiny and the nested `processor_config.json` of
/// llava-onevision-tiny, with OneVision's multi-image prompt left untiled.
#[test]
fn model_fixture_pixels_match() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    for (model, kind) in [
        ("llava-next-tiny", AnyresKind::LlavaNext),
        ("llava-onevision-tiny", AnyresKind::LlavaOnevision),
    ] {
        let p = AnyresImageProcessor::from_dir(&root.join(model))?;
        assert_eq!(p.kind(), kind);
        let bytes = std::fs::read(root.join("reference").join(format!("{model}.safetensors")))?;
        let st = SafeTensors::deserialize(&bytes)?;
        let meta: Value = serde_json::from_str(&std::fs::read_to_string(
            root.join("reference").join(format!("{model}.json")),
        )?)?;
        let mut checked = 0;
        for case in meta["cases"].as_array().unwrap() {
            let entries = case["images"].as_array().unwrap();
            let images = entries
                .iter()
                .map(|e| {
                    let file = e["file"].as_str().unwrap();
                    Ok(load_image(&root.join("reference/images").join(file))?)
                })
                .collect::<Result<Vec<_>>>()?;
            for (k, (entry, got)) in entries.iter().zip(p.process_prompt(&images)?).enumerate() {
                let key = format!("case{}.pixel_values.{k}", case["case"]);
                let (want, shape) = f32_tensor(&st, &key)?;
                ensure!(
                    shape == got.shape,
                    "{model} {key}: shape {:?} vs {shape:?}",
                    got.shape
                );
                ensure!(
                    got.image_size == pair(&entry["image_size"]),
                    "{model} {key}: image_size"
                );
                let diff = max_abs_diff(&got.data, &want);
                ensure!(diff <= PIXEL_TOLERANCE, "{model} {key}: differs by {diff}");
                checked += 1;
            }
        }
        assert!(checked >= 5, "{model}: only {checked} images checked");
    }
    Ok(())
}
