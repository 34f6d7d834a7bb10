//! LLaVA-NeXT (1.6) and LLaVA-OneVision "anyres" preprocessing: an image becomes a low-resolution
//! view of the whole picture plus a grid of full-resolution tiles.
//!
//! ```
//! use vlm_preprocess::anyres::{AnyresConfig, AnyresImageProcessor};
//! use vlm_preprocess::image::{Rgb, RgbImage};
//!
//! # fn main() -> Result<(), vlm_preprocess::PreprocessError> {
//! // Usually `AnyresImageProcessor::from_dir(model_dir)?`.
//! let config = AnyresConfig::from_json_str(
//!     r#"{"image_processor_type": "LlavaNextImageProcessor",
//!         "size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28},
//!         "image_grid_pinpoints": [[28, 56], [56, 28], [56, 56]]}"#,
//! )?;
//! let processor = AnyresImageProcessor::from_config(&config)?;
//! let photo = RgbImage::from_fn(120, 40, |x, y| Rgb([x as u8, y as u8, 9]));
//! let pixels = processor.process(&photo)?;
//! assert_eq!(processor.best_resolution(40, 120)?, (28, 56)); // (height, width)
//! assert_eq!(pixels.shape, [3, 3, 28, 28]); // the base view + a 1x2 grid of tiles
//! assert_eq!(pixels.image_size, (40, 120)); // the original (height, width)
//! # Ok(())
//! # }
//! ```
//!
//! # Reference
//!
//! transformers 5.23 `LlavaNextImageProcessorPil`
//! (`models/llava_next/image_processing_pil_llava_next.py`) and `LlavaOnevisionImageProcessorPil`
//! (`models/llava_onevision/image_processing_pil_llava_onevision.py`), with
//! `select_best_resolution` / `get_patch_output_size` (`image_processing_utils.py`) and
//! `divide_to_patches` (`image_transforms.py`).
//!
//! # Pipeline (one image)
//!
//! 1. [`select_best_resolution`] picks the `image_grid_pinpoints` entry `(height, width)` that
//!    keeps the most of the image's pixels once it is scaled to fit, ties going to the one that
//!    wastes the least area, then to the earliest.
//! 2. [`resize_and_pad_for_patching`]: a Pillow resize keeping the aspect ratio (the short side
//!    rounded **up**, [`patch_output_size`]), then black padding centred on the image, the odd
//!    pixel at the bottom/right.
//! 3. [`divide_into_tiles`] cuts that into `crop_size.height`-sided tiles (or `size.height`, or
//!    `size.shortest_edge`, in that order), row by row.
//! 4. The base view is the whole image resized to `(size.height, size.width)`, or to a
//!    `shortest_edge` square: the aspect ratio is **not** kept, for either model.
//! 5. Every view, base first, then goes through the per-image steps: resize by `size` (for
//!    LLaVA-NeXT's `shortest_edge` this keeps the aspect ratio and is the identity on square
//!    tiles of that side), center crop when `do_center_crop` (LLaVA-NeXT by default, not
//!    OneVision), rescale, normalize.
//!
//! The output is `(1 + tiles, 3, H, W)` and the original `(height, width)`, which the model
//! needs to undo the padding. `do_pad` only pads a batch of images to the same number of
//! views; one image at a time, it has no effect here.
//!
//! # LLaVA-OneVision with several images
//!
//! `LlavaOnevisionImageProcessorPil` tiles an image only when it is the only image of its prompt
//! (`batch_num_images == 1`; `apply_chat_template` passes the images of one conversation
//! together). The images of a multi-image prompt are padded to a square with the mean colour
//! (`int(mean * 255)`, like LLaVA-1.5) and resized to `size`, one view each:
//! [`AnyresImageProcessor::process_prompt`] applies that rule, [`AnyresImageProcessor::process_untiled`]
//! is the second path alone.

mod config;
mod grid;

pub use self::config::{
    llava_onevision_pinpoints, parse_pinpoints, AnyresConfig, AnyresKind, LLAVA_NEXT_PINPOINTS,
};
pub use self::grid::{
    divide_into_tiles, patch_output_size, resize_and_pad_for_patching, select_best_resolution,
};

use std::path::Path;

use image::RgbImage;
use serde_json::Value;

use crate::config::{
    parse_extent, parse_resize_target, parse_triplet, Extent, Resample, ResizeTarget,
};
use crate::error::{PreprocessError, Result};
use crate::resize::resize;
use crate::transforms::{
    center_crop, mean_background, pad_to_square, shortest_edge_size, to_pixel_values, Normalize,
    PixelValues,
};

/// The views of one image, preprocessed: `data` is `shape = [views, 3, H, W]`, row-major, the
/// base view first, then the tiles row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct AnyresPixels {
    /// The values, `shape.iter().product()` of them.
    pub data: Vec<f32>,
    /// `[1 + tiles, channels, height, width]` (`[1, 3, H, W]` for an untiled image).
    pub shape: [usize; 4],
    /// The original image's `(height, width)`: transformers' `image_sizes` entry.
    pub image_size: (u32, u32),
    /// The grid resolution `(height, width)` picked by [`select_best_resolution`]; `None` for an
    /// untiled image.
    pub best_resolution: Option<(u32, u32)>,
}

impl AnyresPixels {
    /// Number of views (`1 + tiles`, or 1 untiled).
    pub fn num_views(&self) -> usize {
        self.shape[0]
    }

    /// The values of view `i` (`[3, H, W]`, row-major), if in range.
    pub fn view(&self, i: usize) -> Option<&[f32]> {
        let len = self.shape[1] * self.shape[2] * self.shape[3];
        self.data.get(i * len..(i + 1) * len)
    }

    fn stack(views: Vec<PixelValues>, image: &RgbImage, best: Option<Extent>) -> Result<Self> {
        let first = views.first().map(|v| v.shape).unwrap_or([3, 0, 0]);
        let mut data = Vec::with_capacity(views.len() * first.iter().product::<usize>());
        for (index, view) in views.iter().enumerate() {
            if view.shape != first {
                return Err(PreprocessError::RaggedViews {
                    index,
                    expected: first,
                    found: view.shape,
                });
            }
            data.extend_from_slice(&view.data);
        }
        Ok(Self {
            data,
            shape: [views.len(), first[0], first[1], first[2]],
            image_size: (image.height(), image.width()),
            best_resolution: best.map(|e| (e.height, e.width)),
        })
    }
}

/// A configured LLaVA-NeXT / LLaVA-OneVision image processor (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct AnyresImageProcessor {
    kind: AnyresKind,
    pinpoints: Vec<Extent>,
    /// Size of the base view before the per-view steps (`size_tuple` in the reference).
    base_size: Extent,
    /// Side of a tile (`patch_size` in the reference).
    tile: u32,
    /// Filter of every resize, including the anyres ones, which ignore `do_resize`.
    resample: Resample,
    /// The per-view resize (`do_resize`).
    view_resize: Option<ResizeTarget>,
    center_crop: Option<Extent>,
    rescale: Option<f64>,
    normalize: Option<Normalize>,
    /// OneVision's square padding colour for multi-image prompts, from `image_mean`.
    square_pad: [u8; 3],
}

impl AnyresImageProcessor {
    /// Builds the processor, resolving every option once with the class defaults of
    /// `LlavaNextImageProcessorPil` / `LlavaOnevisionImageProcessorPil` for absent keys.
    pub fn from_config(config: &AnyresConfig) -> Result<Self> {
        let c = &config.base;
        let type_name =
            c.image_processor_type
                .as_deref()
                .ok_or_else(|| PreprocessError::InvalidConfig {
                    field: "image_processor_type",
                    expected: "\"LlavaNextImageProcessor\" or \"LlavaOnevisionImageProcessor\"",
                    found: "nothing".to_string(),
                })?;
        let kind = AnyresKind::from_type_name(type_name)?;
        let d = kind.defaults();
        let pick = |own: &Option<Value>, default: &Option<Value>| {
            own.clone()
                .filter(|v| !v.is_null())
                .or_else(|| default.clone())
        };
        let flag = |own: Option<bool>, default: Option<bool>| own.or(default).unwrap_or(false);

        let pinpoints = match pick(&config.image_grid_pinpoints, &d.image_grid_pinpoints) {
            Some(v) => parse_pinpoints(&v)?,
            None => return Err(missing("image_grid_pinpoints")),
        };
        let resample = Resample::from_json(
            &pick(&c.resample, &d.base.resample).unwrap_or(serde_json::json!(2)),
        )?;
        let size =
            parse_resize_target(&pick(&c.size, &d.base.size).ok_or_else(|| missing("size"))?)?;
        let crop = pick(&c.crop_size, &d.base.crop_size)
            .map(|v| parse_extent("crop_size", &v))
            .transpose()?;
        // `size_tuple` and `patch_size` of `_preprocess`.
        let base_size = match size {
            ResizeTarget::Exact(e) => e,
            ResizeTarget::ShortestEdge(s) => Extent {
                height: s,
                width: s,
            },
        };
        let tile = match (crop, size) {
            (Some(crop), _) => crop.height,
            (None, ResizeTarget::Exact(e)) => e.height,
            (None, ResizeTarget::ShortestEdge(s)) => s,
        };
        let center_crop = if flag(c.do_center_crop, d.base.do_center_crop) {
            Some(crop.ok_or(PreprocessError::InvalidConfig {
                field: "crop_size",
                expected: "a crop size when do_center_crop is true",
                found: "null".to_string(),
            })?)
        } else {
            None
        };
        let rescale = flag(c.do_rescale, d.base.do_rescale).then(|| {
            c.rescale_factor
                .or(d.base.rescale_factor)
                .unwrap_or(1.0 / 255.0)
        });
        let mean = pick(&c.image_mean, &d.base.image_mean)
            .map(|v| parse_triplet("image_mean", &v))
            .transpose()?
            .ok_or_else(|| missing("image_mean"))?;
        let std = pick(&c.image_std, &d.base.image_std)
            .map(|v| parse_triplet("image_std", &v))
            .transpose()?
            .ok_or_else(|| missing("image_std"))?;
        let normalize =
            flag(c.do_normalize, d.base.do_normalize).then_some(Normalize { mean, std });
        Ok(Self {
            kind,
            pinpoints,
            base_size,
            tile,
            resample,
            view_resize: flag(c.do_resize, d.base.do_resize).then_some(size),
            center_crop,
            rescale,
            normalize,
            square_pad: mean_background(mean)?,
        })
    }

    /// [`AnyresConfig::from_dir`] then [`AnyresImageProcessor::from_config`].
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_config(&AnyresConfig::from_dir(dir)?)
    }

    /// Which processor class this is.
    pub fn kind(&self) -> AnyresKind {
        self.kind
    }

    /// The candidate grid resolutions, `(height, width)`.
    pub fn grid_pinpoints(&self) -> &[Extent] {
        &self.pinpoints
    }

    /// Side of a tile (`crop_size.height`, else `size.height`, else `size.shortest_edge`).
    pub fn tile_size(&self) -> u32 {
        self.tile
    }

    /// Side of every output view after the per-view steps, `(height, width)`, or `None` when
    /// it depends on the image (no per-view resize and no crop).
    pub fn output_size(&self) -> Option<(u32, u32)> {
        match (self.center_crop, self.view_resize) {
            (Some(c), _) => Some((c.height, c.width)),
            (None, Some(ResizeTarget::Exact(e))) => Some((e.height, e.width)),
            // A shortest-edge resize of the square base view.
            (None, Some(ResizeTarget::ShortestEdge(s))) => Some((s, s)),
            (None, None) => None,
        }
    }

    /// The grid resolution `(height, width)` for an image of `height x width`.
    pub fn best_resolution(&self, height: u32, width: u32) -> Result<(u32, u32)> {
        check_size(height, width)?;
        let best = select_best_resolution(height, width, &self.pinpoints)
            .ok_or_else(|| missing("image_grid_pinpoints"))?;
        Ok((best.height, best.width))
    }

    /// Number of tile rows and columns for an image of `height x width` (the bottom/right
    /// tiles may be partial when a pinpoint is not a multiple of the tile side).
    pub fn tile_grid(&self, height: u32, width: u32) -> Result<(usize, usize)> {
        let (h, w) = self.best_resolution(height, width)?;
        let t = self.tile;
        Ok((h.div_ceil(t) as usize, w.div_ceil(t) as usize))
    }

    /// The tiled path (`get_image_patches` + the per-view steps): `[1 + tiles, 3, H, W]`.
    pub fn process(&self, image: &RgbImage) -> Result<AnyresPixels> {
        check_size(image.height(), image.width())?;
        let best = select_best_resolution(image.height(), image.width(), &self.pinpoints)
            .ok_or_else(|| missing("image_grid_pinpoints"))?;
        let padded = resize_and_pad_for_patching(image, best, self.resample)?;
        let tiles = divide_into_tiles(&padded, self.tile)?;
        let base = resize(
            image,
            self.base_size.width,
            self.base_size.height,
            self.resample,
        )?;
        let views = std::iter::once(&base)
            .chain(&tiles)
            .map(|v| self.finish(v))
            .collect::<Result<Vec<_>>>()?;
        AnyresPixels::stack(views, image, Some(best))
    }

    /// LLaVA-OneVision's path for an image that shares its prompt with other images: padded to
    /// a square with the mean colour, then the per-view steps, `[1, 3, H, W]`. An error for
    /// LLaVA-NeXT, whose processor always tiles.
    pub fn process_untiled(&self, image: &RgbImage) -> Result<AnyresPixels> {
        if self.kind != AnyresKind::LlavaOnevision {
            return Err(PreprocessError::InvalidArgument {
                name: "process_untiled",
                expected: "a LLaVA-OneVision processor (LLaVA-NeXT tiles every image)",
                found: "a LLaVA-NeXT processor".to_string(),
            });
        }
        check_size(image.height(), image.width())?;
        let square = pad_to_square(image, self.square_pad);
        AnyresPixels::stack(vec![self.finish(&square)?], image, None)
    }

    /// Whether an image is tiled when its prompt holds `images_in_prompt` images: always for
    /// LLaVA-NeXT, only for a lone image for LLaVA-OneVision.
    pub fn tiles_in_prompt_of(&self, images_in_prompt: usize) -> bool {
        self.kind == AnyresKind::LlavaNext || images_in_prompt == 1
    }

    /// The images of one prompt, in order, as the processor treats the images of one
    /// conversation (see the module docs).
    pub fn process_prompt(&self, images: &[RgbImage]) -> Result<Vec<AnyresPixels>> {
        let tiled = self.tiles_in_prompt_of(images.len());
        images
            .iter()
            .map(|image| {
                if tiled {
                    self.process(image)
                } else {
                    self.process_untiled(image)
                }
            })
            .collect()
    }

    /// The per-view steps of `_preprocess`: resize by `size`, center crop, rescale, normalize.
    fn finish(&self, view: &RgbImage) -> Result<PixelValues> {
        let resized = match self.view_resize {
            Some(ResizeTarget::ShortestEdge(s)) => {
                let (h, w) = shortest_edge_size(view.height(), view.width(), s);
                resize(view, w, h, self.resample)?
            }
            Some(ResizeTarget::Exact(e)) => resize(view, e.width, e.height, self.resample)?,
            None => view.clone(),
        };
        let cropped = match self.center_crop {
            Some(size) => center_crop(&resized, size)?,
            None => resized,
        };
        Ok(to_pixel_values(
            &cropped,
            self.rescale,
            self.normalize.as_ref(),
        ))
    }
}

fn missing(field: &'static str) -> PreprocessError {
    PreprocessError::InvalidConfig {
        field,
        expected: "a value (the class has a default; null is not accepted here)",
        found: "null".to_string(),
    }
}

fn check_size(height: u32, width: u32) -> Result<()> {
    if height == 0 || width == 0 {
        return Err(PreprocessError::EmptyImage {
            origin: "anyres input".to_string(),
            width,
            height,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onevision_defaults_have_36_pinpoints_and_no_crop() -> Result<()> {
        let p = AnyresImageProcessor::from_config(&AnyresConfig::from_json_str(
            r#"{"image_processor_type": "LlavaOnevisionImageProcessor"}"#,
        )?)?;
        assert_eq!(p.grid_pinpoints().len(), 36);
        assert_eq!(p.tile_size(), 384);
        assert_eq!(p.output_size(), Some((384, 384)));
        assert_eq!(p.best_resolution(300, 1000)?, (384, 1152));
        Ok(())
    }

    #[test]
    fn bad_configs_and_images_are_errors() -> Result<()> {
        for bad in [
            r#"{"image_processor_type": "LlavaNextImageProcessor", "image_grid_pinpoints": []}"#,
            r#"{"image_processor_type": "LlavaNextImageProcessor", "image_grid_pinpoints": [[0, 5]]}"#,
            r#"{"image_processor_type": "LlavaNextImageProcessor", "image_grid_pinpoints": [[5]]}"#,
            r#"{"image_processor_type": "LlavaNextImageProcessor", "size": {"longest_edge": 5}}"#,
            r#"{"image_processor_type": "CLIPImageProcessor"}"#,
            r#"{"size": {"shortest_edge": 5}}"#,
        ] {
            assert!(
                AnyresImageProcessor::from_config(&AnyresConfig::from_json_str(bad)?).is_err(),
                "{bad}"
            );
        }
        let p = AnyresImageProcessor::from_config(&AnyresConfig::from_json_str(
            r#"{"image_processor_type": "LlavaNextImageProcessor"}"#,
        )?)?;
        assert!(matches!(
            p.process(&RgbImage::new(0, 4)),
            Err(PreprocessError::EmptyImage { .. })
        ));
        assert!(p.process_untiled(&RgbImage::new(4, 4)).is_err());
        Ok(())
    }
}
