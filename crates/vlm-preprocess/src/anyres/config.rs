//! The config of `LlavaNextImageProcessorPil` / `LlavaOnevisionImageProcessorPil`: the common
//! image processor keys plus `image_grid_pinpoints`, the class defaults, and the file lookup.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Extent, ImageProcessorConfig};
use crate::error::{PreprocessError, Result};
use crate::processor::{OPENAI_CLIP_MEAN, OPENAI_CLIP_STD};

/// `LlavaNextImageProcessorPil.image_grid_pinpoints` (and `LlavaNextConfig`'s), `(height, width)`.
pub const LLAVA_NEXT_PINPOINTS: [[u32; 2]; 5] =
    [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];

/// `LlavaOnevisionImageProcessorPil.image_grid_pinpoints` (and `LlavaOnevisionConfig`'s): every
/// `(384 * i, 384 * j)` for `i, j` in `1..=6`, row-major.
pub fn llava_onevision_pinpoints() -> Vec<[u32; 2]> {
    (1..=6u32)
        .flat_map(|i| (1..=6u32).map(move |j| [384 * i, 384 * j]))
        .collect()
}

/// The two processor classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnyresKind {
    /// `LlavaNextImageProcessor`: CLIP-style shortest-edge resize and center crop of each view.
    LlavaNext,
    /// `LlavaOnevisionImageProcessor`: fixed-size resize, no crop; multi-image prompts untiled.
    LlavaOnevision,
}

/// `image_processor_type` values accepted, with the class each selects.
const SUPPORTED_TYPES: &[(&str, AnyresKind)] = &[
    ("LlavaNextImageProcessor", AnyresKind::LlavaNext),
    ("LlavaNextImageProcessorPil", AnyresKind::LlavaNext),
    ("LlavaNextImageProcessorFast", AnyresKind::LlavaNext),
    ("LlavaOnevisionImageProcessor", AnyresKind::LlavaOnevision),
    (
        "LlavaOnevisionImageProcessorPil",
        AnyresKind::LlavaOnevision,
    ),
    (
        "LlavaOnevisionImageProcessorFast",
        AnyresKind::LlavaOnevision,
    ),
];

impl AnyresKind {
    /// Looks up an `image_processor_type` value.
    pub fn from_type_name(name: &str) -> Result<Self> {
        SUPPORTED_TYPES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, kind)| *kind)
            .ok_or_else(|| PreprocessError::UnknownProcessorType {
                found: name.to_string(),
                supported: SUPPORTED_TYPES.iter().map(|(n, _)| *n).collect(),
            })
    }

    /// Class attributes of the Pillow processor (what an absent or `null` key means).
    pub(super) fn defaults(self) -> AnyresConfig {
        let clip =
            |size: Value, crop: Option<Value>, center_crop: bool, pinpoints: Value| AnyresConfig {
                base: ImageProcessorConfig {
                    do_resize: Some(true),
                    size: Some(size),
                    resample: Some(serde_json::json!(3)),
                    do_center_crop: Some(center_crop),
                    crop_size: crop,
                    do_rescale: Some(true),
                    rescale_factor: Some(1.0 / 255.0),
                    do_normalize: Some(true),
                    image_mean: Some(serde_json::json!(OPENAI_CLIP_MEAN)),
                    image_std: Some(serde_json::json!(OPENAI_CLIP_STD)),
                    do_convert_rgb: Some(true),
                    do_pad: Some(true),
                    ..ImageProcessorConfig::default()
                },
                image_grid_pinpoints: Some(pinpoints),
            };
        match self {
            Self::LlavaNext => clip(
                serde_json::json!({"shortest_edge": 224}),
                Some(serde_json::json!({"height": 224, "width": 224})),
                true,
                serde_json::json!(LLAVA_NEXT_PINPOINTS),
            ),
            // `do_center_crop = None` and `crop_size = None` on the class.
            Self::LlavaOnevision => clip(
                serde_json::json!({"height": 384, "width": 384}),
                None,
                false,
                serde_json::json!(llava_onevision_pinpoints()),
            ),
        }
    }
}

/// The config of either processor: the keys every image processor has, plus
/// `image_grid_pinpoints`. Read from `processor_config.json`'s `"image_processor"` entry, else
/// `preprocessor_config.json`, like [`ImageProcessorConfig::from_dir`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnyresConfig {
    /// The common keys (`image_processor_type`, `size`, `crop_size`, `resample`, ...).
    #[serde(flatten)]
    pub base: ImageProcessorConfig,
    /// Candidate resolutions `[[height, width], ...]` for the tile grid.
    pub image_grid_pinpoints: Option<Value>,
}

impl AnyresConfig {
    /// Parses one flat JSON object (the `preprocessor_config.json` dialect).
    pub fn from_json_str(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|source| PreprocessError::ConfigJson {
            origin: "<json>".to_string(),
            source,
        })
    }

    /// The image processor config of a model directory: `processor_config.json`'s
    /// `"image_processor"` entry, else `preprocessor_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        crate::config::image_processor_from_dir(dir)
    }

    /// Reads one file: a flat `preprocessor_config.json`, or a `processor_config.json` holding
    /// an `"image_processor"` entry.
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::config::image_processor_from_file(path)
    }
}

/// Parses `image_grid_pinpoints`: a non-empty list of `[height, width]` pairs of positive
/// integers.
pub fn parse_pinpoints(value: &Value) -> Result<Vec<Extent>> {
    let invalid = || PreprocessError::InvalidConfig {
        field: "image_grid_pinpoints",
        expected: "a non-empty list of [height, width] pairs of positive integers",
        found: value.to_string(),
    };
    let items = value
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(invalid)?;
    items
        .iter()
        .map(|item| {
            let pair = item
                .as_array()
                .filter(|p| p.len() == 2)
                .ok_or_else(invalid)?;
            let side = |v: &Value| {
                v.as_u64()
                    .filter(|n| *n > 0 && *n <= u64::from(u32::MAX))
                    .map(|n| n as u32)
                    .ok_or_else(invalid)
            };
            Ok(Extent {
                height: side(&pair[0])?,
                width: side(&pair[1])?,
            })
        })
        .collect()
}
