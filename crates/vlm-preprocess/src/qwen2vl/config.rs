//! The Qwen2-VL image and video processor configs, as transformers 5.23 reads them.
//!
//! Mirrors the class attributes and `__init__` of
//! `transformers/models/qwen2_vl/image_processing_pil_qwen2_vl.py::Qwen2VLImageProcessorPil` and
//! `transformers/models/qwen2_vl/video_processing_qwen2_vl.py::Qwen2VLVideoProcessor`
//! (Qwen2.5-VL checkpoints use the same two classes).
//!
//! Which file is read and how `min_pixels` / `max_pixels` / `size` combine is documented on
//! [`Qwen2VlConfig`] (`ImageProcessingMixin.get_image_processor_dict`,
//! `BaseVideoProcessor.get_video_processor_dict`, `AutoVideoProcessor.from_pretrained` and the
//! two classes' `__init__`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{
    parse_triplet, read_json, Resample, PREPROCESSOR_CONFIG_FILE, PROCESSOR_CONFIG_FILE,
};
use crate::error::{PreprocessError, Result};
use crate::processor::{OPENAI_CLIP_MEAN, OPENAI_CLIP_STD};
use crate::qwen2vl::smart_resize::check_pixel_bounds;
use crate::transforms::Normalize;

/// File name of a published checkpoint's video processor config.
pub const VIDEO_PREPROCESSOR_CONFIG_FILE: &str = "video_preprocessor_config.json";

/// `image_processor_type` values that select the Qwen2-VL image processor.
const IMAGE_TYPES: &[&str] = &[
    "Qwen2VLImageProcessor",
    "Qwen2VLImageProcessorPil",
    "Qwen2VLImageProcessorFast",
];
/// `video_processor_type` values that select the Qwen2-VL video processor.
const VIDEO_TYPES: &[&str] = &["Qwen2VLVideoProcessor"];

/// A Qwen2-VL image or video processor config: the JSON object as written (unknown keys are
/// ignored, `None` = absent or `null` = the class default).
///
/// The same keys serve both processors, because transformers may build the video processor
/// from the image processor's file; the `*_frames`, `fps`, `cap_pixels_per_frame` and
/// `max_video_tokens` keys only matter for video.
///
/// Files, as transformers 5.23 picks them: for images `processor_config.json`'s
/// `"image_processor"` entry, else `preprocessor_config.json`; for videos
/// `processor_config.json`'s `"video_processor"` entry, else `video_preprocessor_config.json`,
/// else `preprocessor_config.json` (`AutoVideoProcessor` falls back to the image processor's
/// file, pixel bounds included; the image entry of `processor_config.json` is not a fallback).
///
/// Pixel budget: `size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}` (pixel
/// counts despite the names). Top-level `min_pixels` / `max_pixels` override `size`'s entries;
/// a missing `size` is the class default (images `56*56 ..= 28*28*1280`, videos `128*28*28 ..=
/// 28*28*768`). The result must be exactly those two keys: a legacy `size: {"min_pixels",
/// "max_pixels"}` without top-level keys loads in transformers but fails at the first resize,
/// so it is an error here, as is `min_pixels > max_pixels`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Qwen2VlConfig {
    /// `"Qwen2VLImageProcessor"` (or its `Pil` / `Fast` variants).
    pub image_processor_type: Option<String>,
    /// `"Qwen2VLVideoProcessor"`.
    pub video_processor_type: Option<String>,
    /// Resize with `smart_resize` (default `true`).
    pub do_resize: Option<bool>,
    /// `{"shortest_edge": min_pixels, "longest_edge": max_pixels}`.
    pub size: Option<Value>,
    /// Smallest pixel budget; overrides `size.shortest_edge`.
    pub min_pixels: Option<u64>,
    /// Largest pixel budget; overrides `size.longest_edge`.
    pub max_pixels: Option<u64>,
    /// Pillow filter number (default 3, bicubic).
    pub resample: Option<Value>,
    /// Multiply by `rescale_factor` (default `true`).
    pub do_rescale: Option<bool>,
    /// Default `1/255`.
    pub rescale_factor: Option<f64>,
    /// Normalize with `image_mean` / `image_std` (default `true`).
    pub do_normalize: Option<bool>,
    /// Default `OPENAI_CLIP_MEAN`.
    pub image_mean: Option<Value>,
    /// Default `OPENAI_CLIP_STD`.
    pub image_std: Option<Value>,
    /// Convert to RGB (default `true`; images are RGB by the time they reach a processor here).
    pub do_convert_rgb: Option<bool>,
    /// Side of a vision-tower patch (default 14).
    pub patch_size: Option<u32>,
    /// Frames per temporal patch (default 2; an image is repeated this many times).
    pub temporal_patch_size: Option<u32>,
    /// Side of the window of patches merged into one LLM token (default 2).
    pub merge_size: Option<u32>,
    /// Video: sample frames instead of using all of them (default `false`).
    pub do_sample_frames: Option<bool>,
    /// Video: frames to sample when `do_sample_frames` (rounded to `temporal_patch_size`).
    pub num_frames: Option<u64>,
    /// Video: frames per second to sample when `do_sample_frames`.
    pub fps: Option<f64>,
    /// Video: fewest frames fps sampling takes (default 4).
    pub min_frames: Option<u64>,
    /// Video: most frames fps sampling takes (default 768).
    pub max_frames: Option<u64>,
    /// Video: also cap each frame at an even share of a whole-video pixel budget (default off).
    pub cap_pixels_per_frame: Option<bool>,
    /// Video: context length the budget of `cap_pixels_per_frame` assumes (default 128000).
    pub max_video_tokens: Option<u64>,
}

/// What the video processor uses from a directory's files, see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Image,
    Video,
}

impl Qwen2VlConfig {
    /// Parses one flat JSON object (the `preprocessor_config.json` dialect).
    pub fn from_json_str(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|source| PreprocessError::ConfigJson {
            origin: "<json>".to_string(),
            source,
        })
    }

    /// The image processor config of a model directory: `processor_config.json`'s
    /// `"image_processor"` entry, else `preprocessor_config.json`.
    pub fn image_from_dir(dir: &Path) -> Result<Self> {
        from_dir(dir, Entry::Image)
    }

    /// The video processor config of a model directory: `processor_config.json`'s
    /// `"video_processor"` entry, else `video_preprocessor_config.json`, else
    /// `preprocessor_config.json` (transformers' fallback to the image processor's file).
    pub fn video_from_dir(dir: &Path) -> Result<Self> {
        from_dir(dir, Entry::Video)
    }
}

fn from_dir(dir: &Path, entry: Entry) -> Result<Qwen2VlConfig> {
    let nested = dir.join(PROCESSOR_CONFIG_FILE);
    let key = match entry {
        Entry::Image => "image_processor",
        Entry::Video => "video_processor",
    };
    if nested.is_file() {
        let value: Value = read_json(&nested)?;
        if let Some(found) = value.get(key) {
            return serde_json::from_value(found.clone()).map_err(|source| {
                PreprocessError::ConfigJson {
                    origin: format!("{} (key \"{key}\")", nested.display()),
                    source,
                }
            });
        }
    }
    let mut looked_for = vec![nested];
    let flat_files: &[&str] = match entry {
        Entry::Image => &[PREPROCESSOR_CONFIG_FILE],
        Entry::Video => &[VIDEO_PREPROCESSOR_CONFIG_FILE, PREPROCESSOR_CONFIG_FILE],
    };
    for name in flat_files {
        let path = dir.join(name);
        if path.is_file() {
            return read_json(&path);
        }
        looked_for.push(path);
    }
    Err(PreprocessError::ConfigNotFound {
        dir: dir.to_path_buf(),
        looked_for,
    })
}

/// The class attributes that differ between the image and the video processor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassDefaults {
    pub min_pixels: u64,
    pub max_pixels: u64,
}

/// `Qwen2VLImageProcessorPil.size`.
pub(crate) const IMAGE_DEFAULTS: ClassDefaults = ClassDefaults {
    min_pixels: 56 * 56,
    max_pixels: 28 * 28 * 1280,
};
/// `Qwen2VLVideoProcessor.size`.
pub(crate) const VIDEO_DEFAULTS: ClassDefaults = ClassDefaults {
    min_pixels: 128 * 28 * 28,
    max_pixels: 28 * 28 * 768,
};

/// The options both processors share, resolved once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Resolved {
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub patch_size: u32,
    pub temporal_patch_size: u32,
    pub merge_size: u32,
    /// `None` when `do_resize` is false.
    pub resample: Option<Resample>,
    pub rescale: Option<f64>,
    pub normalize: Option<Normalize>,
}

impl Resolved {
    pub fn defaults(class: ClassDefaults) -> Self {
        Self {
            min_pixels: class.min_pixels,
            max_pixels: class.max_pixels,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            resample: Some(Resample::Bicubic),
            rescale: Some(1.0 / 255.0),
            normalize: Some(Normalize {
                mean: OPENAI_CLIP_MEAN,
                std: OPENAI_CLIP_STD,
            }),
        }
    }

    /// Applies the class defaults and the precedence rules of the module docs.
    pub fn from_config(config: &Qwen2VlConfig, class: ClassDefaults) -> Result<Self> {
        let (min_pixels, max_pixels) = resolve_bounds(config, class)?;
        let positive = |field: &'static str, value: Option<u32>, default: u32| match value {
            None => Ok(default),
            Some(0) => Err(PreprocessError::InvalidConfig {
                field,
                expected: "a positive integer",
                found: "0".to_string(),
            }),
            Some(v) => Ok(v),
        };
        let resample = match &config.resample {
            None => Resample::Bicubic,
            Some(value) => Resample::from_json(value)?,
        };
        let rescale = config
            .do_rescale
            .unwrap_or(true)
            .then(|| config.rescale_factor.unwrap_or(1.0 / 255.0));
        let normalize = if config.do_normalize.unwrap_or(true) {
            let mean = match &config.image_mean {
                Some(v) => parse_triplet("image_mean", v)?,
                None => OPENAI_CLIP_MEAN,
            };
            let std = match &config.image_std {
                Some(v) => parse_triplet("image_std", v)?,
                None => OPENAI_CLIP_STD,
            };
            Some(Normalize { mean, std })
        } else {
            None
        };
        Ok(Self {
            min_pixels,
            max_pixels,
            patch_size: positive("patch_size", config.patch_size, 14)?,
            temporal_patch_size: positive("temporal_patch_size", config.temporal_patch_size, 2)?,
            merge_size: positive("merge_size", config.merge_size, 2)?,
            resample: config.do_resize.unwrap_or(true).then_some(resample),
            rescale,
            normalize,
        })
    }

    /// `patch_size * merge_size`, the multiple every resized side is rounded to.
    pub fn factor(&self) -> Result<u32> {
        self.patch_size
            .checked_mul(self.merge_size)
            .ok_or(PreprocessError::InvalidArgument {
                name: "patch_size * merge_size",
                expected: "a product that fits in 32 bits",
                found: format!("{} * {}", self.patch_size, self.merge_size),
            })
    }
}

/// `Qwen2VLImageProcessorPil.__init__` / `Qwen2VLVideoProcessor.__init__`: `min_pixels` and
/// `max_pixels` override the entries of `size`, which defaults to the class's.
fn resolve_bounds(config: &Qwen2VlConfig, class: ClassDefaults) -> Result<(u64, u64)> {
    let mut size = match &config.size {
        None => serde_json::Map::from_iter([
            ("shortest_edge".to_string(), Value::from(class.min_pixels)),
            ("longest_edge".to_string(), Value::from(class.max_pixels)),
        ]),
        Some(Value::Object(map)) => map.clone(),
        Some(other) => {
            return Err(PreprocessError::InvalidConfig {
                field: "size",
                expected: "{\"shortest_edge\": min_pixels, \"longest_edge\": max_pixels}",
                found: other.to_string(),
            })
        }
    };
    if let Some(min) = config.min_pixels {
        size.insert("shortest_edge".to_string(), Value::from(min));
        size.remove("min_pixels");
    }
    if let Some(max) = config.max_pixels {
        size.insert("longest_edge".to_string(), Value::from(max));
        size.remove("max_pixels");
    }
    let invalid = || PreprocessError::InvalidConfig {
        field: "size",
        expected: "exactly {\"shortest_edge\": min_pixels, \"longest_edge\": max_pixels} \
                   (or top-level min_pixels and max_pixels), positive integers",
        found: Value::Object(size.clone()).to_string(),
    };
    if size.len() != 2 {
        return Err(invalid());
    }
    let get = |key: &str| {
        size.get(key)
            .and_then(Value::as_u64)
            .filter(|v| *v > 0)
            .ok_or_else(invalid)
    };
    let (min, max) = (get("shortest_edge")?, get("longest_edge")?);
    check_pixel_bounds(min, max)?;
    Ok((min, max))
}

/// Checks `image_processor_type` / `video_processor_type` when present.
pub(crate) fn check_type(config: &Qwen2VlConfig, video: bool) -> Result<()> {
    let (found, supported) = match (&config.video_processor_type, &config.image_processor_type) {
        (Some(v), _) if video => (v, VIDEO_TYPES),
        // transformers derives the video class from the image class name when the video
        // processor is read from preprocessor_config.json.
        (_, Some(i)) => (i, IMAGE_TYPES),
        _ => return Ok(()),
    };
    if supported.contains(&found.as_str()) {
        Ok(())
    } else {
        Err(PreprocessError::UnknownProcessorType {
            found: found.clone(),
            supported: supported.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(json: &str) -> Result<(u64, u64)> {
        resolve_bounds(&Qwen2VlConfig::from_json_str(json)?, IMAGE_DEFAULTS)
    }

    #[test]
    fn precedence() {
        assert_eq!(bounds("{}").ok(), Some((3136, 1003520)));
        assert_eq!(
            bounds(r#"{"min_pixels": 100, "max_pixels": 2000}"#).ok(),
            Some((100, 2000))
        );
        assert_eq!(
            bounds(r#"{"min_pixels": 100, "max_pixels": 2000, "size": {"shortest_edge": 5, "longest_edge": 6}}"#).ok(),
            Some((100, 2000))
        );
        assert_eq!(bounds(r#"{"min_pixels": 7}"#).ok(), Some((7, 1003520)));
        assert_eq!(
            bounds(
                r#"{"min_pixels": 7, "max_pixels": 9, "size": {"min_pixels": 5, "max_pixels": 6}}"#
            )
            .ok(),
            Some((7, 9))
        );
        assert_eq!(
            bounds(r#"{"min_pixels": null, "size": {"shortest_edge": 5, "longest_edge": 9}}"#).ok(),
            Some((5, 9))
        );
        for bad in [
            r#"{"size": {"min_pixels": 5, "max_pixels": 6}}"#,
            r#"{"min_pixels": 7, "size": {"min_pixels": 5, "max_pixels": 6}}"#,
            r#"{"size": {"shortest_edge": 5}}"#,
            r#"{"size": 5}"#,
            r#"{"min_pixels": 10, "max_pixels": 9}"#,
        ] {
            assert!(bounds(bad).is_err(), "{bad}");
        }
    }
}
