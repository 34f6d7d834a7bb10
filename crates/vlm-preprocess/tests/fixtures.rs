//! Parity with transformers 5.23's Pillow-backed processors on real photographs.
//!
//! Fixtures come from `tests/scripts/preprocess_fixtures.py`; for every (config, image) case they hold
//! the output of the resize step and the input of rescale (uint8, must match exactly) and the
//! final `pixel_values` (float32, max |diff| <= 1e-5).

// Tests assert by panicking; the workspace lints target library code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use vlm_preprocess::image::RgbImage;
use vlm_preprocess::{
    load_image, pad_to_square, ImageProcessor, ImageProcessorConfig, ProcessorKind,
};

const PIXEL_TOLERANCE: f32 = 1e-5;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/preprocess")
}

fn chw(image: &RgbImage) -> (Vec<u8>, Vec<usize>) {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut out = vec![0u8; 3 * h * w];
    for (x, y, p) in image.enumerate_pixels() {
        for c in 0..3 {
            out[(c * h + y as usize) * w + x as usize] = p.0[c];
        }
    }
    (out, vec![3, h, w])
}

fn compare_u8(st: &SafeTensors, key: &str, image: &RgbImage) -> Result<()> {
    let expected = st
        .tensor(key)
        .with_context(|| format!("missing tensor {key}"))?;
    if expected.dtype() != Dtype::U8 {
        bail!("{key}: expected U8, found {:?}", expected.dtype());
    }
    let (got, shape) = chw(image);
    if expected.shape() != shape.as_slice() {
        bail!("{key}: shape {:?}, expected {:?}", shape, expected.shape());
    }
    let diffs: Vec<(usize, u8, u8)> = got
        .iter()
        .zip(expected.data())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (i, *a, *b))
        .collect();
    if let Some((i, a, b)) = diffs.first() {
        bail!(
            "{key}: {} of {} values differ; first at flat index {i}: got {a}, expected {b}",
            diffs.len(),
            got.len()
        );
    }
    Ok(())
}

fn run_case(st: &SafeTensors, config: &str, image_name: &str, has_resized: bool) -> Result<()> {
    let dir = fixture_dir();
    let flat = ImageProcessorConfig::from_dir(&dir.join("configs").join(config))?;
    let nested =
        ImageProcessorConfig::from_dir(&dir.join("configs").join(format!("{config}_nested")))?;
    if flat != nested {
        bail!("{config}: the two config dialects parse differently:\n{flat:?}\n{nested:?}");
    }
    let processor = ImageProcessor::from_config(&flat)?;
    let image = load_image(&dir.join("images").join(format!("{image_name}.png")))?;
    let key = format!("{config}/{image_name}");

    if has_resized {
        let input = match processor.pad_to_square_color() {
            Some(color) => pad_to_square(&image, color),
            None => image.clone(),
        };
        compare_u8(st, &format!("{key}/resized"), &processor.resize(&input)?)?;
    }
    compare_u8(
        st,
        &format!("{key}/pre_rescale"),
        &processor.prepare(&image)?,
    )?;

    let got = processor.process(&image)?;
    let expected = st.tensor(&format!("{key}/pixel_values"))?;
    if expected.shape() != got.shape.as_slice() {
        bail!(
            "{key}/pixel_values: shape {:?}, expected {:?}",
            got.shape,
            expected.shape()
        );
    }
    let expected: Vec<f32> = expected
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let max_diff = got
        .data
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    if max_diff > PIXEL_TOLERANCE {
        bail!("{key}/pixel_values: max |diff| {max_diff} > {PIXEL_TOLERANCE}");
    }
    Ok(())
}

#[test]
fn matches_transformers_pillow_processors() -> Result<()> {
    let dir = fixture_dir();
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json"))?)?;
    let bytes = std::fs::read(dir.join("expected.safetensors"))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let cases = index["cases"].as_array().context("index.json: no cases")?;
    assert!(
        cases.len() >= 80,
        "expected the full fixture set, found {} cases",
        cases.len()
    );

    let mut failures = Vec::new();
    for case in cases {
        let config = case["config"].as_str().context("case without config")?;
        let image = case["image"].as_str().context("case without image")?;
        let has_resized = case["has_resized"].as_bool().unwrap_or(false);
        if let Err(e) = run_case(&st, config, image, has_resized) {
            failures.push(format!("{config}/{image}: {e:#}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn processor_config_json_takes_precedence() -> Result<()> {
    // transformers 5 reads processor_config.json's "image_processor" before preprocessor_config.json.
    let tmp =
        std::env::temp_dir().join(format!("vlm-preprocess-precedence-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    std::fs::write(
        tmp.join("preprocessor_config.json"),
        r#"{"image_processor_type": "CLIPImageProcessor"}"#,
    )?;
    std::fs::write(
        tmp.join("processor_config.json"),
        r#"{"image_processor": {"image_processor_type": "SiglipImageProcessor"}}"#,
    )?;
    let kind = ImageProcessor::from_dir(&tmp)?.kind();
    // Without the nested entry, the flat file is used.
    std::fs::write(
        tmp.join("processor_config.json"),
        r#"{"processor_class": "X"}"#,
    )?;
    let fallback = ImageProcessor::from_dir(&tmp)?.kind();
    std::fs::remove_dir_all(&tmp)?;
    assert_eq!(kind, ProcessorKind::Siglip);
    assert_eq!(fallback, ProcessorKind::Clip);
    Ok(())
}

#[test]
fn one_pixel_image_goes_through_every_pipeline() -> Result<()> {
    let image = RgbImage::from_pixel(1, 1, vlm_preprocess::image::Rgb([10, 200, 30]));
    for ty in [
        "CLIPImageProcessor",
        "SiglipImageProcessor",
        "LlavaImageProcessor",
    ] {
        for resample in 0..=5 {
            let config = ImageProcessorConfig::from_json_str(&format!(
                r#"{{"image_processor_type": "{ty}", "do_pad": true, "resample": {resample},
                    "size": {{"shortest_edge": 7}}, "crop_size": 5}}"#
            ))?;
            let pixels = ImageProcessor::from_config(&config)?.process(&image)?;
            let expected = if ty.starts_with("Siglip") {
                [3, 7, 7]
            } else {
                [3, 5, 5]
            };
            assert_eq!(pixels.shape, expected, "{ty} resample {resample}");
            assert!(pixels.data.iter().all(|v| v.is_finite()));
        }
    }
    Ok(())
}
