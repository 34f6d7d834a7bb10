//! Parity of the Qwen2-VL / Qwen2.5-VL processors with transformers 5.23.
//!
//! Fixtures come from `tests/scripts/qwen2vl_preprocess_fixtures.py`: real photographs cut to
//! sizes that are not multiples of 28, configs in both dialects, PNG frame folders and animated
//! GIFs, and the reference outputs (`Qwen2VLImageProcessorPil`, `Qwen2VLVideoProcessor`, Pillow's
//! GIF decoder). Tolerances:
//! - image `pixel_values`: max |diff| <= 1e-6 (measured: 0), `image_grid_thw` and the resized
//!   `uint8` image equal;
//! - video `pixel_values_videos` when `smart_resize` keeps the frame size: equal (the resize is
//!   the identity in torchvision and Pillow alike);
//! - video frames that are resized: transformers resizes with torchvision's `uint8` bicubic
//!   kernel, vlm-preprocess with Pillow's. Measured on the fixtures: the resized `uint8` frames
//!   differ by at most 1 level, on 19.8% of values for 37x47 -> 28x56 frames and 0.03% for
//!   28x56 -> 28x28 frames; `pixel_values_videos` by at most 0.01501 (one level / 255 / std).
//!   Asserted: at most 1 level, at most 25% of values, max |diff| <= 0.0151;
//! - `smart_resize`, sampled frame indices, `video_grid_thw`, `sampled_fps` and
//!   `second_per_grid_ts`: equal.

// Tests assert by panicking; the workspace lints target library code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use vlm_preprocess::image::{Rgb, RgbImage};
use vlm_preprocess::qwen2vl::{
    smart_resize, FrameSampling, Qwen2VlConfig, Qwen2VlImageProcessor, Qwen2VlVideoProcessor,
    ResizeBranch,
};
use vlm_preprocess::{load_image, resize, PreprocessError, Resample, Video, VideoLimits};

mod errors;
mod images;
mod video;

const PIXEL_TOLERANCE: f32 = 1e-6;
/// Resized video frames: Pillow vs torchvision, see the file docs.
const RESIZED_MAX_LEVELS: u8 = 1;
const RESIZED_MAX_FRACTION: f64 = 0.25;
const RESIZED_PIXEL_TOLERANCE: f32 = 0.0151;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/preprocess/qwen2vl")
}

fn index() -> Value {
    let path = fixture_dir().join("index.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn tensor_bytes() -> Vec<u8> {
    std::fs::read(fixture_dir().join("expected.safetensors")).unwrap()
}

fn f32_tensor(st: &SafeTensors, key: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    let t = st
        .tensor(key)
        .with_context(|| format!("missing tensor {key}"))?;
    ensure!(
        t.dtype() == Dtype::F32,
        "{key}: expected F32, found {:?}",
        t.dtype()
    );
    let data = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((data, t.shape().to_vec()))
}

fn u8_tensor(st: &SafeTensors, key: &str) -> Result<(Vec<u8>, Vec<usize>)> {
    let t = st
        .tensor(key)
        .with_context(|| format!("missing tensor {key}"))?;
    ensure!(
        t.dtype() == Dtype::U8,
        "{key}: expected U8, found {:?}",
        t.dtype()
    );
    Ok((t.data().to_vec(), t.shape().to_vec()))
}

fn chw(image: &RgbImage) -> Vec<u8> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut out = vec![0u8; 3 * h * w];
    for (x, y, p) in image.enumerate_pixels() {
        for c in 0..3 {
            out[(c * h + y as usize) * w + x as usize] = p.0[c];
        }
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn grid(value: &Value) -> [usize; 3] {
    let v: Vec<usize> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    [v[0], v[1], v[2]]
}

fn frame_files(folder: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixture_dir().join("video").join(folder))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    paths
}
