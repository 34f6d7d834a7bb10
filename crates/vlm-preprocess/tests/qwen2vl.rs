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

fn run_image_case(st: &SafeTensors, case: &Value) -> Result<f32> {
    let config = case["config"].as_str().context("config")?;
    let name = case["image"].as_str().context("image")?;
    let dir = fixture_dir();
    let processor = Qwen2VlImageProcessor::from_dir(&dir.join("configs").join(config))?;
    ensure!(
        processor.min_pixels() == case["min_pixels"].as_u64().context("min_pixels")?
            && processor.max_pixels() == case["max_pixels"].as_u64().context("max_pixels")?,
        "pixel bounds {}..{} differ from the reference's",
        processor.min_pixels(),
        processor.max_pixels()
    );
    let image = load_image(&dir.join("images").join(format!("{name}.png")))?;
    let key = format!("image/{config}/{name}");

    let (expected_resized, shape) = u8_tensor(st, &format!("{key}/resized"))?;
    let resized = processor.resize(&image)?;
    ensure!(
        shape == [3, resized.height() as usize, resized.width() as usize],
        "resized to {}x{}, reference {shape:?}",
        resized.height(),
        resized.width()
    );
    ensure!(
        chw(&resized) == expected_resized,
        "resized uint8 image differs"
    );

    let patches = processor.process(&image)?;
    let expected_grid = grid(&case["grid_thw"]);
    ensure!(
        patches.grid_thw == expected_grid,
        "grid_thw {:?}, reference {expected_grid:?}",
        patches.grid_thw
    );
    ensure!(processor.grid_thw(image.height(), image.width())? == expected_grid);
    ensure!(
        processor.num_image_tokens(image.height(), image.width())?
            == expected_grid.iter().product::<usize>() / 4
    );
    // The fixture keeps one of the identical temporal copies: [patches, 3 * 14 * 14].
    let (expected, shape) = f32_tensor(st, &format!("{key}/pixel_values_t0"))?;
    let t = processor.temporal_patch_size();
    let plane = 14 * 14;
    ensure!(
        shape == [patches.num_patches, 3 * plane] && patches.patch_dim == 3 * t * plane,
        "patches {}x{}, reference {shape:?}",
        patches.num_patches,
        patches.patch_dim
    );
    let mut max_diff = 0f32;
    for row in 0..patches.num_patches {
        let got = patches.row(row).context("row")?;
        let want = &expected[row * 3 * plane..(row + 1) * 3 * plane];
        for c in 0..3 {
            for copy in 0..t {
                let g = &got[(c * t + copy) * plane..(c * t + copy + 1) * plane];
                max_diff = max_diff.max(max_abs_diff(g, &want[c * plane..(c + 1) * plane]));
            }
        }
    }
    ensure!(
        max_diff <= PIXEL_TOLERANCE,
        "pixel_values max |diff| {max_diff} > {PIXEL_TOLERANCE}"
    );
    Ok(max_diff)
}

#[test]
fn images_match_transformers() {
    let index = index();
    let bytes = tensor_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases = index["image_cases"].as_array().unwrap();
    assert!(cases.len() >= 9, "expected the full fixture set");
    let mut failures = Vec::new();
    let mut worst = 0f32;
    for case in cases {
        match run_image_case(&st, case) {
            Ok(diff) => worst = worst.max(diff),
            Err(e) => failures.push(format!("{}/{}: {e:#}", case["config"], case["image"])),
        }
    }
    println!(
        "{} image cases, measured pixel_values max |diff| {worst:e}",
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn smart_resize_table_is_exact() {
    let index = index();
    let rows = index["smart_resize"].as_array().unwrap();
    assert!(rows.len() > 1000);
    let mut failures = Vec::new();
    for row in rows {
        let r: Vec<Option<u64>> = row.as_array().unwrap().iter().map(Value::as_u64).collect();
        let (h, w, factor) = (
            r[0].unwrap() as u32,
            r[1].unwrap() as u32,
            r[2].unwrap() as u32,
        );
        let got = smart_resize(h, w, factor, r[3].unwrap(), r[4].unwrap());
        let ok = match (&got, r[5], r[6]) {
            (Ok((gh, gw)), Some(eh), Some(ew)) => u64::from(*gh) == eh && u64::from(*gw) == ew,
            (Err(PreprocessError::AspectRatio { .. }), None, None) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!("{row}: got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn frame_sampling_table_is_exact() {
    let index = index();
    let rows = index["sampling"].as_array().unwrap();
    assert!(rows.len() > 1000);
    let mut failures = Vec::new();
    let mut errors = 0;
    for row in rows {
        let r = row.as_array().unwrap();
        let total = r[0].as_u64().unwrap() as usize;
        let sampling = match r[1].as_str().unwrap() {
            "num_frames" => FrameSampling::NumFrames(r[2].as_u64().unwrap() as usize),
            "fps" => FrameSampling::Fps(r[2].as_f64().unwrap()),
            other => panic!("unknown sampling {other}"),
        };
        let config = Qwen2VlConfig::from_json_str(&format!(
            r#"{{"temporal_patch_size": {}, "min_frames": {}, "max_frames": {}}}"#,
            r[4], r[5], r[6]
        ))
        .unwrap();
        let processor = Qwen2VlVideoProcessor::from_config(&config).unwrap();
        let got = processor.sample_indices(total, r[3].as_f64(), sampling);
        let ok = match (&got, &r[7]) {
            (Ok(indices), Value::Array(expected)) => {
                indices.len() == expected.len()
                    && indices
                        .iter()
                        .zip(expected)
                        .all(|(a, b)| Some(*a as u64) == b.as_u64())
            }
            (Err(PreprocessError::FrameSampling { .. }), Value::String(s)) if s == "error" => {
                errors += 1;
                true
            }
            _ => false,
        };
        if !ok {
            failures.push(format!("{r:?}: got {got:?}"));
        }
    }
    assert!(errors > 50, "the table should exercise the error paths");
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
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

/// Returns (max |pixel diff|, worst uint8 level diff, fraction of differing uint8 values).
fn run_video_case(st: &SafeTensors, case: &Value) -> Result<(f32, u8, f64)> {
    let name = case["name"].as_str().context("name")?;
    let config = case["config"].as_str().context("config")?;
    let source = case["source"].as_str().context("source")?;
    let fps = case["fps"].as_f64();
    let processor = Qwen2VlVideoProcessor::from_dir(&fixture_dir().join("configs").join(config))?;
    let video = if source.ends_with(".gif") {
        let video = Video::from_gif(&fixture_dir().join("video").join(source))?;
        ensure!(
            video.fps == fps,
            "GIF fps {:?}, reference {fps:?}",
            video.fps
        );
        video
    } else {
        let mut paths = frame_files(source);
        if let Some(first) = case["first"].as_u64() {
            paths.truncate(first as usize);
        }
        Video::from_frame_files(&paths, fps)?
    };
    let sampling = &case["sampling"];
    let out = match sampling["kind"].as_str().context("kind")? {
        "all" => processor.process_with(&video, FrameSampling::All)?,
        "num_frames" => processor.process_with(
            &video,
            FrameSampling::NumFrames(sampling["value"].as_u64().context("value")? as usize),
        )?,
        "fps" => processor.process_with(
            &video,
            FrameSampling::Fps(sampling["value"].as_f64().context("value")?),
        )?,
        "config" => processor.process(&video)?,
        other => bail!("unknown sampling {other}"),
    };
    let indices: Vec<usize> = case["frame_indices"]
        .as_array()
        .context("frame_indices")?
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    ensure!(
        out.frame_indices == indices,
        "frame indices {:?}, reference {indices:?}",
        out.frame_indices
    );
    let expected_grid = grid(&case["grid_thw"]);
    ensure!(
        out.patches.grid_thw == expected_grid,
        "grid_thw {:?}, reference {expected_grid:?}",
        out.patches.grid_thw
    );
    let (h, w) = video.frame_size().context("frames")?;
    ensure!(processor.grid_thw(indices.len(), h, w)? == expected_grid);
    ensure!(
        out.sampled_fps == case["sampled_fps"].as_f64().context("sampled_fps")?
            && out.second_per_grid_t
                == case["second_per_grid_t"]
                    .as_f64()
                    .context("second_per_grid_t")?,
        "sampled_fps {} / second_per_grid_t {}, reference {} / {}",
        out.sampled_fps,
        out.second_per_grid_t,
        case["sampled_fps"],
        case["second_per_grid_t"]
    );

    let key = format!("video/{name}");
    let (expected, shape) = f32_tensor(st, &format!("{key}/pixel_values"))?;
    ensure!(
        shape == [out.patches.num_patches, out.patches.patch_dim],
        "patches {}x{}, reference {shape:?}",
        out.patches.num_patches,
        out.patches.patch_dim
    );
    let diff = max_abs_diff(&out.patches.data, &expected);
    if !case["resized"].as_bool().context("resized")? {
        ensure!(
            diff == 0.0,
            "identity-resize case: max |diff| {diff}, expected 0"
        );
        return Ok((diff, 0, 0.0));
    }
    // Frames were resized: compare our Pillow frames with torchvision's uint8 output.
    let (reference, shape) = u8_tensor(st, &format!("{key}/resized"))?;
    let (rh, rw) = processor.frame_size(h, w, indices.len())?;
    ensure!(shape == [indices.len(), rh as usize, rw as usize, 3]);
    let mut ours = Vec::new();
    for &i in &indices {
        ours.extend_from_slice(resize(&video.frames[i], rw, rh, Resample::Bicubic)?.as_raw());
    }
    let levels: Vec<u8> = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let worst = levels.iter().copied().max().unwrap_or(0);
    let fraction = levels.iter().filter(|&&d| d > 0).count() as f64 / levels.len() as f64;
    ensure!(
        worst <= RESIZED_MAX_LEVELS && fraction <= RESIZED_MAX_FRACTION,
        "resized frames differ by up to {worst} levels on {:.2}% of values",
        fraction * 100.0
    );
    ensure!(
        diff <= RESIZED_PIXEL_TOLERANCE,
        "pixel_values_videos max |diff| {diff} > {RESIZED_PIXEL_TOLERANCE}"
    );
    Ok((diff, worst, fraction))
}

#[test]
fn videos_match_transformers() {
    let index = index();
    let bytes = tensor_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases = index["video_cases"].as_array().unwrap();
    assert!(cases.len() >= 6, "expected the full fixture set");
    let mut failures = Vec::new();
    for case in cases {
        match run_video_case(&st, case) {
            Ok((diff, levels, fraction)) => println!(
                "video {}: max |pixel diff| {diff:e}, resized uint8 max diff {levels} level(s) \
                 on {:.2}% of values",
                case["name"],
                fraction * 100.0
            ),
            Err(e) => failures.push(format!("{}: {e:#}", case["name"])),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn gif_frames_match_pillow() {
    let index = index();
    let bytes = tensor_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let gifs = index["gifs"].as_array().unwrap();
    assert_eq!(gifs.len(), 3);
    let mut failures = Vec::new();
    for gif in gifs {
        let name = gif["name"].as_str().unwrap();
        let path = fixture_dir().join(gif["file"].as_str().unwrap());
        let video = Video::from_gif(&path).unwrap();
        let (expected, shape) = u8_tensor(&st, &format!("gif/{name}/frames")).unwrap();
        let (h, w) = video.frame_size().unwrap();
        if shape != [video.len(), h as usize, w as usize, 3] {
            failures.push(format!(
                "{name}: {} frames of {h}x{w}, reference {shape:?}",
                video.len()
            ));
            continue;
        }
        if video.fps != gif["fps"].as_f64() {
            failures.push(format!(
                "{name}: fps {:?}, reference {}",
                video.fps, gif["fps"]
            ));
        }
        let frame_len = (h * w * 3) as usize;
        for (i, frame) in video.frames.iter().enumerate() {
            let want = &expected[i * frame_len..(i + 1) * frame_len];
            let bad = frame
                .as_raw()
                .iter()
                .zip(want)
                .filter(|(a, b)| a != b)
                .count();
            if bad > 0 {
                failures.push(format!(
                    "{name}: frame {i}: {bad} of {frame_len} values differ"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn frame(w: u32, h: u32, v: u8) -> RgbImage {
    RgbImage::from_pixel(w, h, Rgb([v, v / 2, 255 - v]))
}

#[test]
fn aspect_ratio_above_200_is_an_error() {
    let processor = Qwen2VlImageProcessor::default();
    let err = processor.process(&frame(402, 2, 9)).unwrap_err();
    assert!(
        matches!(err, PreprocessError::AspectRatio { ratio, limit, .. } if ratio == 201.0 && limit == 200.0)
    );
    let message = err.to_string();
    assert!(
        message.contains("201") && message.contains("200"),
        "{message}"
    );
    assert!(processor.num_image_tokens(1, 201).is_err());
    // The reference upsizes images below min_pixels; callers can see it coming.
    let plan = processor.resize_plan(14, 20).unwrap().unwrap();
    assert_eq!(
        (plan.height, plan.width, plan.branch),
        (56, 84, ResizeBranch::GrownToMinPixels)
    );
    // Exactly 200:1 is accepted.
    assert_eq!(processor.process(&frame(400, 2, 9)).unwrap().grid_thw[0], 1);
}

#[test]
fn videos_need_two_frames() {
    let processor = Qwen2VlVideoProcessor::default();
    for n in [0usize, 1] {
        let video = Video::new((0..n).map(|_| frame(56, 28, 3)).collect(), None).unwrap();
        let err = processor.process(&video).unwrap_err();
        assert!(
            matches!(err, PreprocessError::VideoTooShort { found, needed: 2, .. } if found == n)
        );
        let message = err.to_string();
        assert!(
            message.contains("at least 2 frames") && message.contains("as an image"),
            "{message}"
        );
    }
    let two = Video::new(vec![frame(56, 28, 3), frame(56, 28, 90)], None).unwrap();
    assert_eq!(processor.process(&two).unwrap().patches.grid_thw[0], 1);
}

#[test]
fn mismatched_frame_sizes_are_errors() {
    let mut paths = frame_files("frames28x56");
    paths.insert(2, frame_files("frames37x47")[0].clone());
    let err = Video::from_frame_files(&paths, None).unwrap_err();
    match &err {
        PreprocessError::FrameSizeMismatch {
            origin,
            index,
            width,
            height,
            found_width,
            found_height,
        } => {
            assert_eq!(
                (*index, *width, *height, *found_width, *found_height),
                (2, 56, 28, 47, 37)
            );
            assert!(origin.contains("frames37x47"), "{origin}");
        }
        other => panic!("expected FrameSizeMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("frame 2"), "{err}");

    assert!(matches!(
        Video::new(
            vec![frame(56, 28, 1), frame(56, 28, 2), frame(28, 56, 3)],
            None
        ),
        Err(PreprocessError::FrameSizeMismatch { index: 2, .. })
    ));
    // The fields are public: processing checks again.
    let video = Video {
        frames: vec![frame(56, 28, 1), frame(57, 28, 2)],
        fps: None,
    };
    assert!(matches!(
        Qwen2VlVideoProcessor::default().process(&video),
        Err(PreprocessError::FrameSizeMismatch { index: 1, .. })
    ));
    assert!(Video::new(vec![frame(56, 28, 1)], Some(f64::NAN)).is_err());
}

#[test]
fn bad_pixel_bounds_are_errors() {
    for (min, max) in [(0, 100), (200, 100), (1, u64::MAX)] {
        let image = Qwen2VlImageProcessor::default().with_pixel_bounds(min, max);
        assert!(
            matches!(image, Err(PreprocessError::InvalidArgument { .. })),
            "{min}..{max}"
        );
        let video = Qwen2VlVideoProcessor::default().with_pixel_bounds(min, max);
        assert!(
            matches!(video, Err(PreprocessError::InvalidArgument { .. })),
            "{min}..{max}"
        );
    }
    let processor = Qwen2VlImageProcessor::default()
        .with_pixel_bounds(784, 784)
        .unwrap();
    assert_eq!(processor.grid_thw(1000, 1000).unwrap(), [1, 2, 2]);
    // In a config too.
    let config =
        Qwen2VlConfig::from_json_str(r#"{"min_pixels": 5000, "max_pixels": 4000}"#).unwrap();
    assert!(Qwen2VlImageProcessor::from_config(&config).is_err());
}

#[test]
fn gif_limits_are_enforced() {
    let path = fixture_dir().join("video/clip.gif");
    let limits = VideoLimits {
        max_frames: 5,
        ..VideoLimits::default()
    };
    let err = Video::from_gif_with_limits(&path, &limits).unwrap_err();
    assert!(
        matches!(err, PreprocessError::VideoTooLarge { limit: 5, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("frame 6"), "{err}");

    let limits = VideoLimits {
        max_total_pixels: 28 * 56 * 3,
        ..VideoLimits::default()
    };
    assert!(matches!(
        Video::from_gif_with_limits(&path, &limits),
        Err(PreprocessError::VideoTooLarge { .. })
    ));
    let mut limits = VideoLimits::default();
    limits.frame.max_pixels = 28 * 56 - 1;
    assert!(matches!(
        Video::from_gif_with_limits(&path, &limits),
        Err(PreprocessError::TooManyPixels { .. })
    ));
    // Exactly at the limits is fine.
    let limits = VideoLimits {
        max_frames: 8,
        max_total_pixels: 8 * 28 * 56,
        ..VideoLimits::default()
    };
    assert_eq!(
        Video::from_gif_with_limits(&path, &limits).unwrap().len(),
        8
    );
    // Truncated or empty data is an error, not a panic.
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 10, 100, bytes.len() / 2, bytes.len() - 2] {
        assert!(
            Video::from_gif_bytes(&bytes[..cut], &VideoLimits::default()).is_err(),
            "{cut} bytes"
        );
    }
    // Not a GIF.
    assert!(matches!(
        Video::from_gif_bytes(b"\x89PNG\r\n\x1a\nxxxx", &VideoLimits::default()),
        Err(PreprocessError::UnknownFormat { .. })
    ));
    // Frame files count against max_frames too.
    let limits = VideoLimits {
        max_frames: 2,
        ..VideoLimits::default()
    };
    assert!(matches!(
        Video::from_frame_files_with_limits(&frame_files("frames28x56"), None, &limits),
        Err(PreprocessError::VideoTooLarge { .. })
    ));
}

#[test]
fn sampling_requests_transformers_refuses_are_errors() {
    let processor = Qwen2VlVideoProcessor::default();
    let video = Video::new((0..17).map(|i| frame(56, 28, i * 10)).collect(), None).unwrap();
    // 14 of 17 frames: torch.arange yields 15 indices, the last one 17 (IndexError upstream).
    let err = processor
        .process_with(&video, FrameSampling::NumFrames(14))
        .unwrap_err();
    assert!(matches!(
        err,
        PreprocessError::FrameSampling {
            total_frames: 17,
            ..
        }
    ));
    assert!(err.to_string().contains("IndexError"), "{err}");
    // More frames than the video has; fps without the video's fps.
    assert!(processor
        .process_with(&video, FrameSampling::NumFrames(18))
        .is_err());
    assert!(processor
        .process_with(&video, FrameSampling::Fps(2.0))
        .is_err());
    // With the video's fps it works, and sampled_fps follows the sampling.
    let timed = Video::new(video.frames.clone(), Some(10.0)).unwrap();
    let out = processor
        .process_with(&timed, FrameSampling::Fps(2.0))
        .unwrap();
    assert_eq!(out.frame_indices, [0, 4, 8, 12]);
    assert_eq!(out.sampled_fps, 4.0 / 17.0 * 10.0);
    // Without an fps, transformers assumes 24 even after sampling.
    let out = processor
        .process_with(&video, FrameSampling::NumFrames(6))
        .unwrap();
    assert_eq!(out.frame_indices, [0, 2, 5, 8, 11, 14]);
    assert_eq!((out.sampled_fps, out.second_per_grid_t), (24.0, 2.0 / 24.0));
}

#[test]
fn config_errors_and_file_lookup() {
    let bad = |json: &str| {
        Qwen2VlVideoProcessor::from_config(&Qwen2VlConfig::from_json_str(json).unwrap()).is_err()
    };
    assert!(bad(
        r#"{"do_sample_frames": true, "num_frames": 4, "fps": 2}"#
    ));
    assert!(bad(r#"{"do_sample_frames": true}"#));
    assert!(bad(r#"{"size": {"min_pixels": 5, "max_pixels": 6}}"#));
    assert!(bad(
        r#"{"video_processor_type": "LlavaOnevisionVideoProcessor"}"#
    ));
    assert!(!bad(
        r#"{"do_sample_frames": false, "num_frames": 4, "fps": 2}"#
    ));
    let image =
        Qwen2VlConfig::from_json_str(r#"{"image_processor_type": "CLIPImageProcessor"}"#).unwrap();
    assert!(matches!(
        Qwen2VlImageProcessor::from_config(&image),
        Err(PreprocessError::UnknownProcessorType { .. })
    ));

    // The video processor falls back to preprocessor_config.json, never to the image entry of
    // processor_config.json.
    let dir = std::env::temp_dir().join(format!("vlm-qwen2vl-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write(
        "processor_config.json",
        r#"{"image_processor": {"min_pixels": 1000, "max_pixels": 2000}}"#,
    );
    assert!(matches!(
        Qwen2VlVideoProcessor::from_dir(&dir),
        Err(PreprocessError::ConfigNotFound { ref looked_for, .. }) if looked_for.len() == 3
    ));
    assert_eq!(
        Qwen2VlImageProcessor::from_dir(&dir).unwrap().min_pixels(),
        1000
    );
    write(
        "preprocessor_config.json",
        r#"{"min_pixels": 3000, "max_pixels": 4000}"#,
    );
    let video = Qwen2VlVideoProcessor::from_dir(&dir).unwrap();
    assert_eq!((video.min_pixels(), video.max_pixels()), (3000, 4000));
    write(
        "video_preprocessor_config.json",
        r#"{"max_pixels": 200000, "do_sample_frames": true, "fps": 2}"#,
    );
    let video = Qwen2VlVideoProcessor::from_dir(&dir).unwrap();
    // min_pixels is the video class default, not the image file's.
    assert_eq!(
        (video.min_pixels(), video.max_pixels()),
        (128 * 28 * 28, 200000)
    );
    assert_eq!(video.sampling(), FrameSampling::Fps(2.0));
    std::fs::remove_dir_all(&dir).unwrap();
}
