//! The Idefics3 image processor config, as transformers 5.23 reads it.
//!
//! Mirrors the class attributes of
//! `transformers/models/idefics3/image_processing_pil_idefics3.py::Idefics3ImageProcessorPil`
//! and the way `ImageProcessingMixin.get_image_processor_dict` finds the file:
//! `processor_config.json`'s `"image_processor"` entry (what transformers 5 `save_pretrained`
//! writes) when present, else the flat `preprocessor_config.json` (what the published SmolVLM and
//! Idefics3 repositories ship; their `processor_config.json` only holds `image_seq_len`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{parse_extent, parse_triplet, Extent, Resample};
use crate::error::{PreprocessError, Result};
use crate::processor::IMAGENET_STANDARD_MEAN_STD;
use crate::transforms::Normalize;

/// `image_processor_type` values that select this processor (the Pillow, torchvision and
/// transformers 4 class names; the file always says `Idefics3ImageProcessor`).
const SUPPORTED_TYPES: &[&str] = &[
    "Idefics3ImageProcessor",
    "Idefics3ImageProcessorPil",
    "Idefics3ImageProcessorFast",
];

/// `Idefics3ImageProcessorPil.size`: the longest edge after the first resize.
pub const DEFAULT_LONGEST_EDGE: u32 = 4 * 364;
/// `Idefics3ImageProcessorPil.max_image_size`: the side of a tile.
pub const DEFAULT_MAX_IMAGE_SIZE: u32 = 364;
/// `MAX_IMAGE_SIZE`: no side exceeds this after the first resize.
pub const MAX_IMAGE_SIZE: u32 = 4096;

/// An Idefics3 image processor config: the JSON object as written (unknown keys are ignored;
/// `None` = absent or `null` = the class default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Idefics3ProcessorConfig {
    /// Processor class, `"Idefics3ImageProcessor"` in every saved file.
    pub image_processor_type: Option<String>,
    /// Resize before splitting (default `true`).
    pub do_resize: Option<bool>,
    /// Target of the first resize: `{"longest_edge": N}` (default 1456), or an exact
    /// `{"height": H, "width": W}` / an integer (a square) / `[H, W]`.
    pub size: Option<Value>,
    /// `{"longest_edge": N}`: the side of the square tiles (default 364).
    pub max_image_size: Option<Value>,
    /// Cut the image into tiles plus a downscaled global view (default `true`).
    pub do_image_splitting: Option<bool>,
    /// Pillow filter number (default 1, Lanczos).
    pub resample: Option<Value>,
    /// Multiply by `rescale_factor` (default `true`).
    pub do_rescale: Option<bool>,
    /// Rescale factor (default `1/255`).
    pub rescale_factor: Option<f64>,
    /// Subtract `image_mean` and divide by `image_std` (default `true`).
    pub do_normalize: Option<bool>,
    /// Per-channel mean (default 0.5 each).
    pub image_mean: Option<Value>,
    /// Per-channel standard deviation (default 0.5 each).
    pub image_std: Option<Value>,
    /// Pad the tiles of a batch to one size and return `pixel_attention_mask` (default `true`).
    pub do_pad: Option<bool>,
}

impl Idefics3ProcessorConfig {
    /// Parses a flat config (the `preprocessor_config.json` dialect).
    pub fn from_json_str(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|source| PreprocessError::ConfigJson {
            origin: "<json>".to_string(),
            source,
        })
    }

    /// Reads the config of a model directory the way transformers 5 does: the
    /// `"image_processor"` entry of `processor_config.json` if present, else
    /// `preprocessor_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        crate::config::image_processor_from_dir(dir)
    }

    /// Reads one file: a flat config, or a `processor_config.json` with an `"image_processor"`
    /// entry.
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::config::image_processor_from_file(path)
    }
}

/// The first resize: what `Idefics3ImageProcessorPil.resize` does with `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstResize {
    /// Scale so the longest edge is exactly this (small images are enlarged), the other edge
    /// rounded to an even number, then capped at [`MAX_IMAGE_SIZE`].
    LongestEdge(u32),
    /// Exactly this size (`size: {"height", "width"}` or an integer).
    Exact(Extent),
}

/// Options resolved once, with the class defaults applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Resolved {
    /// `None` when `do_resize` is false.
    pub first_resize: Option<FirstResize>,
    pub max_image_size: u32,
    pub splitting: bool,
    pub resample: Resample,
    pub rescale: Option<f64>,
    pub normalize: Option<Normalize>,
    pub pad: bool,
}

impl Default for Resolved {
    fn default() -> Self {
        Self {
            first_resize: Some(FirstResize::LongestEdge(DEFAULT_LONGEST_EDGE)),
            max_image_size: DEFAULT_MAX_IMAGE_SIZE,
            splitting: true,
            resample: Resample::Lanczos,
            rescale: Some(1.0 / 255.0),
            normalize: Some(Normalize {
                mean: IMAGENET_STANDARD_MEAN_STD,
                std: IMAGENET_STANDARD_MEAN_STD,
            }),
            pad: true,
        }
    }
}

fn positive(field: &'static str, value: &Value, expected: &'static str) -> Result<u32> {
    value
        .as_u64()
        .filter(|v| *v > 0 && *v <= u64::from(u32::MAX))
        .map(|v| v as u32)
        .ok_or_else(|| PreprocessError::InvalidConfig {
            field,
            expected,
            found: value.to_string(),
        })
}

/// `size` as `get_size_dict` then `Idefics3ImageProcessorPil.resize` read it: `longest_edge`
/// wins when present (a `shortest_edge` beside it is ignored), else `height` and `width`.
fn parse_size(value: &Value) -> Result<FirstResize> {
    const EXPECTED: &str = "{\"longest_edge\": N}, {\"height\": H, \"width\": W}, an integer \
                            or [H, W] (positive integers)";
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
            keys.sort_unstable();
            match keys.as_slice() {
                ["longest_edge"] | ["longest_edge", "shortest_edge"] => Ok(
                    FirstResize::LongestEdge(positive("size", &map["longest_edge"], EXPECTED)?),
                ),
                ["height", "width"] => Ok(FirstResize::Exact(parse_extent("size", value)?)),
                _ => Err(PreprocessError::InvalidConfig {
                    field: "size",
                    expected: EXPECTED,
                    found: value.to_string(),
                }),
            }
        }
        Value::Number(_) | Value::Array(_) => Ok(FirstResize::Exact(parse_extent("size", value)?)),
        _ => Err(PreprocessError::InvalidConfig {
            field: "size",
            expected: EXPECTED,
            found: value.to_string(),
        }),
    }
}

/// `max_image_size["longest_edge"]`, the only key the reference reads.
fn parse_max_image_size(value: &Value) -> Result<u32> {
    const EXPECTED: &str = "{\"longest_edge\": N} with a positive integer N";
    match value.get("longest_edge") {
        Some(side) => positive("max_image_size", side, EXPECTED),
        None => Err(PreprocessError::InvalidConfig {
            field: "max_image_size",
            expected: EXPECTED,
            found: value.to_string(),
        }),
    }
}

impl Resolved {
    /// Applies the class defaults of `Idefics3ImageProcessorPil` to `config`.
    pub fn from_config(config: &Idefics3ProcessorConfig) -> Result<Self> {
        if let Some(name) = &config.image_processor_type {
            if !SUPPORTED_TYPES.contains(&name.as_str()) {
                return Err(PreprocessError::UnknownProcessorType {
                    found: name.clone(),
                    supported: SUPPORTED_TYPES.to_vec(),
                });
            }
        }
        let d = Self::default();
        let first_resize = match (config.do_resize.unwrap_or(true), &config.size) {
            (false, _) => None,
            (true, None) => d.first_resize,
            (true, Some(size)) => Some(parse_size(size)?),
        };
        let max_image_size = match &config.max_image_size {
            None => d.max_image_size,
            Some(v) => parse_max_image_size(v)?,
        };
        let resample = match &config.resample {
            None => d.resample,
            Some(v) => Resample::from_json(v)?,
        };
        let rescale = config
            .do_rescale
            .unwrap_or(true)
            .then(|| config.rescale_factor.unwrap_or(1.0 / 255.0));
        let normalize = if config.do_normalize.unwrap_or(true) {
            let mean = match &config.image_mean {
                Some(v) => parse_triplet("image_mean", v)?,
                None => IMAGENET_STANDARD_MEAN_STD,
            };
            let std = match &config.image_std {
                Some(v) => parse_triplet("image_std", v)?,
                None => IMAGENET_STANDARD_MEAN_STD,
            };
            Some(Normalize { mean, std })
        } else {
            None
        };
        Ok(Self {
            first_resize,
            max_image_size,
            splitting: config.do_image_splitting.unwrap_or(true),
            resample,
            rescale,
            normalize,
            pad: config.do_pad.unwrap_or(true),
        })
    }
}
