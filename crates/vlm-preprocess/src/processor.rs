//! The processor pipelines of transformers 5's Pillow backends:
//! `PilBackend._preprocess` (`transformers/image_processing_backends.py`) for CLIP and SigLIP,
//! `LlavaImageProcessorPil._preprocess` (`transformers/models/llava/image_processing_pil_llava.py`)
//! for LLaVA.
//!
//! The torchvision-backed default classes (`CLIPImageProcessor`, ...) read the same config
//! but resize with torch kernels; this crate always reproduces the Pillow-backed class, which
//! is what the name without suffix meant in transformers 4.

use std::path::Path;

use image::RgbImage;

use crate::config::{
    parse_extent, parse_resize_target, parse_triplet, Extent, ImageProcessorConfig, Resample,
    ResizeTarget,
};
use crate::error::{PreprocessError, Result};
use crate::resize::resize;
use crate::transforms::{
    center_crop, mean_background, pad_bottom_right, pad_to_square, shortest_edge_size,
    to_pixel_values, Normalize, PixelValues,
};

/// `OPENAI_CLIP_MEAN` in `transformers/image_utils.py`.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// `OPENAI_CLIP_STD` in `transformers/image_utils.py`.
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// `IMAGENET_STANDARD_MEAN` / `_STD` in `transformers/image_utils.py`.
pub const IMAGENET_STANDARD_MEAN_STD: [f64; 3] = [0.5, 0.5, 0.5];

/// The processor families this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessorKind {
    /// `CLIPImageProcessorPil`: shortest-edge resize, center crop, rescale, normalize.
    Clip,
    /// `SiglipImageProcessorPil`: fixed-size resize, rescale, normalize.
    Siglip,
    /// `LlavaImageProcessorPil`: CLIP's pipeline, optionally padded to a square first.
    Llava,
}

/// `image_processor_type` values accepted, with the family each selects.
const SUPPORTED_TYPES: &[(&str, ProcessorKind)] = &[
    ("CLIPImageProcessor", ProcessorKind::Clip),
    ("CLIPImageProcessorPil", ProcessorKind::Clip),
    ("CLIPImageProcessorFast", ProcessorKind::Clip),
    ("CLIPFeatureExtractor", ProcessorKind::Clip),
    ("SiglipImageProcessor", ProcessorKind::Siglip),
    ("SiglipImageProcessorPil", ProcessorKind::Siglip),
    ("SiglipImageProcessorFast", ProcessorKind::Siglip),
    ("LlavaImageProcessor", ProcessorKind::Llava),
    ("LlavaImageProcessorPil", ProcessorKind::Llava),
    ("LlavaImageProcessorFast", ProcessorKind::Llava),
];

impl ProcessorKind {
    /// Looks up an `image_processor_type` (or legacy `feature_extractor_type`) value.
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

    /// Class attributes of the Pillow processor (what an absent config key means).
    fn defaults(self) -> ImageProcessorConfig {
        let clip_like = ImageProcessorConfig {
            do_resize: Some(true),
            size: Some(serde_json::json!({"shortest_edge": 224})),
            resample: Some(serde_json::json!(3)),
            do_center_crop: Some(true),
            crop_size: Some(serde_json::json!({"height": 224, "width": 224})),
            do_rescale: Some(true),
            rescale_factor: Some(1.0 / 255.0),
            do_normalize: Some(true),
            image_mean: Some(serde_json::json!(OPENAI_CLIP_MEAN)),
            image_std: Some(serde_json::json!(OPENAI_CLIP_STD)),
            do_convert_rgb: Some(true),
            do_pad: Some(false),
            ..ImageProcessorConfig::default()
        };
        match self {
            Self::Clip | Self::Llava => clip_like,
            Self::Siglip => ImageProcessorConfig {
                size: Some(serde_json::json!({"height": 224, "width": 224})),
                do_center_crop: Some(false),
                crop_size: None,
                image_mean: Some(serde_json::json!(IMAGENET_STANDARD_MEAN_STD)),
                image_std: Some(serde_json::json!(IMAGENET_STANDARD_MEAN_STD)),
                ..clip_like
            },
        }
    }
}

/// A configured preprocessing pipeline: RGB image in, [`PixelValues`] out.
///
/// Steps, in transformers' order: LLaVA pad-to-square, resize, center crop (all on 8-bit
/// pixels), then rescale and normalize (floating point), then the optional bottom/right pad.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    kind: ProcessorKind,
    resize: Option<(ResizeTarget, Resample)>,
    center_crop: Option<Extent>,
    rescale: Option<f64>,
    normalize: Option<Normalize>,
    pad_to_square: Option<[u8; 3]>,
    pad_size: Option<Extent>,
}

fn required<'a>(
    field: &'static str,
    value: &'a Option<serde_json::Value>,
    step: &'static str,
) -> Result<&'a serde_json::Value> {
    value.as_ref().ok_or(PreprocessError::InvalidConfig {
        field,
        expected: step,
        found: "null".to_string(),
    })
}

impl ImageProcessor {
    /// Builds the pipeline, resolving every option once (defaults of the processor class for
    /// absent keys, sizes and filters into enums).
    pub fn from_config(config: &ImageProcessorConfig) -> Result<Self> {
        let type_name = match (&config.image_processor_type, &config.feature_extractor_type) {
            (Some(name), _) => name.clone(),
            (None, Some(name)) => name.clone(),
            (None, None) => {
                return Err(PreprocessError::InvalidConfig {
                    field: "image_processor_type",
                    expected: "a processor class name such as \"CLIPImageProcessor\"",
                    found: "nothing (neither image_processor_type nor feature_extractor_type)"
                        .to_string(),
                })
            }
        };
        let kind = ProcessorKind::from_type_name(&type_name)?;
        let d = kind.defaults();
        let pick = |own: &Option<serde_json::Value>, default: &Option<serde_json::Value>| {
            own.clone().or_else(|| default.clone())
        };
        let flag = |own: Option<bool>, default: Option<bool>| own.or(default).unwrap_or(false);

        let resample = Resample::from_json(&pick(&config.resample, &d.resample).unwrap_or(
            // transformers' resize falls back to BILINEAR when resample is None.
            serde_json::json!(2),
        ))?;
        let resize = if flag(config.do_resize, d.do_resize) {
            let size = pick(&config.size, &d.size);
            let size = required("size", &size, "a size when do_resize is true")?;
            Some((parse_resize_target(size)?, resample))
        } else {
            None
        };
        let center_crop = if flag(config.do_center_crop, d.do_center_crop) {
            let crop = pick(&config.crop_size, &d.crop_size);
            let crop = required(
                "crop_size",
                &crop,
                "a crop size when do_center_crop is true",
            )?;
            Some(parse_extent("crop_size", crop)?)
        } else {
            None
        };
        let rescale = flag(config.do_rescale, d.do_rescale).then(|| {
            config
                .rescale_factor
                .or(d.rescale_factor)
                .unwrap_or(1.0 / 255.0)
        });
        let mean = pick(&config.image_mean, &d.image_mean)
            .map(|v| parse_triplet("image_mean", &v))
            .transpose()?;
        let std = pick(&config.image_std, &d.image_std)
            .map(|v| parse_triplet("image_std", &v))
            .transpose()?;
        let normalize = if flag(config.do_normalize, d.do_normalize) {
            match (mean, std) {
                (Some(mean), Some(std)) => Some(Normalize { mean, std }),
                _ => {
                    return Err(PreprocessError::InvalidConfig {
                        field: "image_mean",
                        expected: "image_mean and image_std when do_normalize is true",
                        found: "null".to_string(),
                    })
                }
            }
        } else {
            None
        };
        let do_pad = flag(config.do_pad, d.do_pad);
        let (pad_to_square, pad_size) = match (kind, do_pad) {
            (_, false) => (None, None),
            (ProcessorKind::Llava, true) => {
                let color = match mean {
                    Some(mean) => mean_background(mean)?,
                    None => [0; 3],
                };
                (Some(color), None)
            }
            // Without pad_size a single image is padded to its own size: nothing to do.
            (_, true) => (
                None,
                config
                    .pad_size
                    .as_ref()
                    .map(|v| parse_extent("pad_size", v))
                    .transpose()?,
            ),
        };
        Ok(Self {
            kind,
            resize,
            center_crop,
            rescale,
            normalize,
            pad_to_square,
            pad_size,
        })
    }

    /// [`ImageProcessorConfig::from_dir`] then [`ImageProcessor::from_config`].
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_config(&ImageProcessorConfig::from_dir(dir)?)
    }

    /// The processor family.
    pub fn kind(&self) -> ProcessorKind {
        self.kind
    }

    /// The LLaVA padding colour, when the pipeline pads to a square.
    pub fn pad_to_square_color(&self) -> Option<[u8; 3]> {
        self.pad_to_square
    }

    /// The resize step alone (size computation + Pillow resize); a copy if resizing is off.
    pub fn resize(&self, image: &RgbImage) -> Result<RgbImage> {
        let Some((target, filter)) = self.resize else {
            return Ok(image.clone());
        };
        let (height, width) = match target {
            ResizeTarget::ShortestEdge(size) => {
                shortest_edge_size(image.height(), image.width(), size)
            }
            ResizeTarget::Exact(e) => (e.height, e.width),
        };
        resize(image, width, height, filter)
    }

    /// All 8-bit steps (pad to square, resize, center crop): the image transformers rescales.
    pub fn prepare(&self, image: &RgbImage) -> Result<RgbImage> {
        let padded;
        let mut current = image;
        if let Some(color) = self.pad_to_square {
            padded = pad_to_square(image, color);
            current = &padded;
        }
        let resized = self.resize(current)?;
        match self.center_crop {
            Some(size) => center_crop(&resized, size),
            None => Ok(resized),
        }
    }

    /// The whole pipeline for one image.
    pub fn process(&self, image: &RgbImage) -> Result<PixelValues> {
        let prepared = self.prepare(image)?;
        let pixels = to_pixel_values(&prepared, self.rescale, self.normalize.as_ref());
        match self.pad_size {
            Some(size) => pad_bottom_right(&pixels, size),
            None => Ok(pixels),
        }
    }
}
