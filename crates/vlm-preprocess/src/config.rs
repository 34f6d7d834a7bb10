//! The image processor config, as transformers 5 reads it.
//!
//! Mirrors the attributes of `transformers/image_processing_utils.py::BaseImageProcessor` and
//! the per-model defaults in `transformers/models/{clip,siglip,llava}/image_processing_pil_*.py`.
//! Two dialects exist on disk:
//! - `preprocessor_config.json`: the flat object that published checkpoints ship;
//! - `processor_config.json`: what transformers 5 `ProcessorMixin.save_pretrained` writes, with
//!   the same object nested under `"image_processor"`.
//!
//! transformers 5 (`ImageProcessingMixin.get_image_processor_dict`) prefers the nested entry of
//! `processor_config.json` when it exists and falls back to `preprocessor_config.json`;
//! [`ImageProcessorConfig::from_dir`] does the same.
//!
//! Fields are kept as written (`None` = absent or `null`), because the defaults depend on the
//! processor class; [`crate::ImageProcessor::from_config`] resolves them once, into enums.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{PreprocessError, Result};

/// File name of the flat config shipped by published checkpoints.
pub const PREPROCESSOR_CONFIG_FILE: &str = "preprocessor_config.json";
/// File name of the transformers 5 processor config (image processor nested under `image_processor`).
pub const PROCESSOR_CONFIG_FILE: &str = "processor_config.json";

/// An image processor config (`preprocessor_config.json` keys). Unknown keys are ignored.
///
/// `None` means "use the default of the processor class", exactly as transformers treats an
/// absent key or a JSON `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageProcessorConfig {
    /// Processor class, e.g. `"CLIPImageProcessor"`, `"SiglipImageProcessor"`, `"LlavaImageProcessor"`.
    pub image_processor_type: Option<String>,
    /// Legacy class name (`"CLIPFeatureExtractor"`), used when `image_processor_type` is absent.
    pub feature_extractor_type: Option<String>,
    /// Resize at all (default `true`).
    pub do_resize: Option<bool>,
    /// Target size: `{"shortest_edge": N}`, `{"height": H, "width": W}`, an int (shortest edge
    /// for CLIP/SigLIP/LLaVA, whose `default_to_square` is false) or `[H, W]`.
    pub size: Option<Value>,
    /// Pillow filter number (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming).
    pub resample: Option<Value>,
    /// Center crop after resizing (default `true` for CLIP/LLaVA, `false` for SigLIP).
    pub do_center_crop: Option<bool>,
    /// Crop size: `{"height": H, "width": W}`, an int (square) or `[H, W]`.
    pub crop_size: Option<Value>,
    /// Multiply by `rescale_factor` (default `true`).
    pub do_rescale: Option<bool>,
    /// Rescale factor (default `1/255`).
    pub rescale_factor: Option<f64>,
    /// Subtract `image_mean` and divide by `image_std` (default `true`).
    pub do_normalize: Option<bool>,
    /// Per-channel mean, a list of 3 or a single number.
    pub image_mean: Option<Value>,
    /// Per-channel standard deviation, a list of 3 or a single number.
    pub image_std: Option<Value>,
    /// Convert the input to RGB (default `true`).
    pub do_convert_rgb: Option<bool>,
    /// LLaVA: pad to a square with the mean colour before resizing. CLIP/SigLIP: pad the
    /// normalized image at the bottom/right to `pad_size` (default `false`).
    pub do_pad: Option<bool>,
    /// Target of the CLIP/SigLIP padding: `{"height": H, "width": W}`.
    pub pad_size: Option<Value>,
}

impl ImageProcessorConfig {
    /// Parses a flat image processor config (the `preprocessor_config.json` dialect).
    pub fn from_json_str(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|source| PreprocessError::ConfigJson {
            origin: "<json>".to_string(),
            source,
        })
    }

    /// Reads the config of a model directory the way transformers 5 does: the
    /// `"image_processor"` entry of `processor_config.json` if present, else
    /// `preprocessor_config.json`. The error lists both files when neither provides one.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        image_processor_from_dir(dir)
    }

    /// Reads one config file: a flat `preprocessor_config.json`, or a `processor_config.json`
    /// holding an `"image_processor"` entry.
    pub fn from_file(path: &Path) -> Result<Self> {
        image_processor_from_file(path)
    }
}

/// Any image processor config of a model directory, found as transformers 5 finds it: the
/// `"image_processor"` entry of `processor_config.json` if present, else
/// `preprocessor_config.json`; the error lists both files when neither provides one.
pub(crate) fn image_processor_from_dir<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T> {
    let nested = dir.join(PROCESSOR_CONFIG_FILE);
    let flat = dir.join(PREPROCESSOR_CONFIG_FILE);
    if nested.is_file() {
        let value: Value = read_json(&nested)?;
        if let Some(entry) = value.get("image_processor") {
            return serde_json::from_value(entry.clone()).map_err(|source| {
                PreprocessError::ConfigJson {
                    origin: format!("{} (key \"image_processor\")", nested.display()),
                    source,
                }
            });
        }
    }
    if flat.is_file() {
        return read_json(&flat);
    }
    Err(PreprocessError::ConfigNotFound {
        dir: dir.to_path_buf(),
        looked_for: vec![nested, flat],
    })
}

/// One config file: a flat `preprocessor_config.json`, or a `processor_config.json` holding an
/// `"image_processor"` entry.
pub(crate) fn image_processor_from_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let value: Value = read_json(path)?;
    let entry = value.get("image_processor").cloned().unwrap_or(value);
    serde_json::from_value(entry).map_err(|source| PreprocessError::ConfigJson {
        origin: path.display().to_string(),
        source,
    })
}

/// Reads and parses a JSON file, naming it in errors.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| PreprocessError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| PreprocessError::ConfigJson {
        origin: path.display().to_string(),
        source,
    })
}

/// Pillow's resampling filters (`PIL.Image.Resampling`), by their config number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resample {
    /// 0: nearest neighbour (Pillow's affine-scale code path, not a convolution).
    Nearest,
    /// 1: Lanczos, support 3.
    Lanczos,
    /// 2: bilinear (triangle), support 1.
    Bilinear,
    /// 3: bicubic with a = -0.5, support 2 (the CLIP/SigLIP/LLaVA default).
    Bicubic,
    /// 4: box, support 0.5.
    Box,
    /// 5: Hamming-windowed sinc, support 1.
    Hamming,
}

impl Resample {
    /// Maps Pillow's filter number; 6/7 (MKS2013/MKS2021, Pillow 13) and anything else are errors.
    pub fn from_pillow(value: i64) -> Result<Self> {
        Ok(match value {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            other => {
                return Err(PreprocessError::UnknownResample {
                    found: other.to_string(),
                })
            }
        })
    }

    /// Parses the JSON value of `resample`.
    pub fn from_json(value: &Value) -> Result<Self> {
        match value.as_i64() {
            Some(n) => Self::from_pillow(n),
            None => Err(PreprocessError::UnknownResample {
                found: value.to_string(),
            }),
        }
    }

    /// Pillow's filter number.
    pub fn pillow_id(self) -> u8 {
        match self {
            Self::Nearest => 0,
            Self::Lanczos => 1,
            Self::Bilinear => 2,
            Self::Bicubic => 3,
            Self::Box => 4,
            Self::Hamming => 5,
        }
    }
}

/// How the resize step picks its output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// Scale so the shorter side equals this, keeping the aspect ratio
    /// (`get_resize_output_image_size(default_to_square=False)`).
    ShortestEdge(u32),
    /// Exactly this size.
    Exact(Extent),
}

/// A height and width in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Height in pixels.
    pub height: u32,
    /// Width in pixels.
    pub width: u32,
}

fn positive(field: &'static str, value: &Value) -> Result<u32> {
    value
        .as_u64()
        .filter(|v| *v > 0 && *v <= u64::from(u32::MAX))
        .map(|v| v as u32)
        .ok_or_else(|| PreprocessError::InvalidConfig {
            field,
            expected: "a positive integer",
            found: value.to_string(),
        })
}

/// Parses `size` the way `get_size_dict(size, default_to_square=False)` does.
pub(crate) fn parse_resize_target(value: &Value) -> Result<ResizeTarget> {
    const EXPECTED: &str =
        "{\"shortest_edge\": N}, {\"height\": H, \"width\": W}, an integer or [H, W]";
    let invalid = || PreprocessError::InvalidConfig {
        field: "size",
        expected: EXPECTED,
        found: value.to_string(),
    };
    match value {
        Value::Number(_) => Ok(ResizeTarget::ShortestEdge(positive("size", value)?)),
        Value::Array(_) => Ok(ResizeTarget::Exact(parse_extent("size", value)?)),
        Value::Object(map) => {
            let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
            keys.sort_unstable();
            match keys.as_slice() {
                ["shortest_edge"] => Ok(ResizeTarget::ShortestEdge(positive(
                    "size",
                    &map["shortest_edge"],
                )?)),
                ["height", "width"] => Ok(ResizeTarget::Exact(parse_extent("size", value)?)),
                _ => Err(invalid()),
            }
        }
        _ => Err(invalid()),
    }
}

/// Parses a `{"height", "width"}` / int (square) / `[H, W]` size.
pub(crate) fn parse_extent(field: &'static str, value: &Value) -> Result<Extent> {
    let invalid = || PreprocessError::InvalidConfig {
        field,
        expected: "{\"height\": H, \"width\": W}, an integer or [H, W]",
        found: value.to_string(),
    };
    match value {
        Value::Number(_) => {
            let side = positive(field, value)?;
            Ok(Extent {
                height: side,
                width: side,
            })
        }
        Value::Array(items) if items.len() == 2 => Ok(Extent {
            height: positive(field, &items[0])?,
            width: positive(field, &items[1])?,
        }),
        Value::Object(map) if map.len() == 2 => match (map.get("height"), map.get("width")) {
            (Some(h), Some(w)) => Ok(Extent {
                height: positive(field, h)?,
                width: positive(field, w)?,
            }),
            _ => Err(invalid()),
        },
        _ => Err(invalid()),
    }
}

/// Parses `image_mean` / `image_std`: a list of 3 numbers or one number for all channels.
pub(crate) fn parse_triplet(field: &'static str, value: &Value) -> Result<[f64; 3]> {
    let invalid = || PreprocessError::InvalidConfig {
        field,
        expected: "a list of 3 numbers or a single number",
        found: value.to_string(),
    };
    match value {
        Value::Number(n) => n.as_f64().map(|v| [v; 3]).ok_or_else(invalid),
        Value::Array(items) if items.len() == 3 => {
            let mut out = [0.0; 3];
            for (slot, item) in out.iter_mut().zip(items) {
                *slot = item.as_f64().ok_or_else(invalid)?;
            }
            Ok(out)
        }
        _ => Err(invalid()),
    }
}
