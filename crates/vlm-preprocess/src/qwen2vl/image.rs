//! The image pipeline of `Qwen2VLImageProcessorPil._preprocess`
//! (`transformers/models/qwen2_vl/image_processing_pil_qwen2_vl.py`).

use std::path::Path;

use image::RgbImage;

use crate::error::{PreprocessError, Result};
use crate::qwen2vl::config::{check_type, Qwen2VlConfig, Resolved, IMAGE_DEFAULTS};
use crate::qwen2vl::patches::{patchify, Patches};
use crate::qwen2vl::smart_resize::{
    check_pixel_bounds, smart_resize, smart_resize_detailed, SmartResize,
};
use crate::resize::resize;
use crate::transforms::to_pixel_values;

/// Qwen2-VL / Qwen2.5-VL image preprocessing: `smart_resize` + Pillow resize, rescale,
/// normalize, then [`Patches`] with the image repeated `temporal_patch_size` times.
///
/// Bit-exact to `Qwen2VLImageProcessorPil` (the Pillow resize is [`crate::resize()`]; rescale
/// and normalize are NumPy's `f64` multiply cast to `f32`, then `f32` arithmetic).
/// [`Default`] is the class defaults (what an empty config gives).
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlImageProcessor {
    options: Resolved,
}

impl Default for Qwen2VlImageProcessor {
    fn default() -> Self {
        Self {
            options: Resolved::defaults(IMAGE_DEFAULTS),
        }
    }
}

impl Qwen2VlImageProcessor {
    /// Builds the processor from a config, applying the class defaults of
    /// `Qwen2VLImageProcessorPil` and the `min_pixels` / `max_pixels` / `size` precedence (see
    /// [`Qwen2VlConfig`]).
    pub fn from_config(config: &Qwen2VlConfig) -> Result<Self> {
        check_type(config, false)?;
        Ok(Self {
            options: Resolved::from_config(config, IMAGE_DEFAULTS)?,
        })
    }

    /// [`Qwen2VlConfig::image_from_dir`] then [`Qwen2VlImageProcessor::from_config`].
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_config(&Qwen2VlConfig::image_from_dir(dir)?)
    }

    /// Replaces the pixel budget (`size.shortest_edge` / `size.longest_edge`, or a call's
    /// `min_pixels` / `max_pixels` in transformers). Errors unless `0 < min_pixels <=
    /// max_pixels <= 2^53`.
    pub fn with_pixel_bounds(mut self, min_pixels: u64, max_pixels: u64) -> Result<Self> {
        check_pixel_bounds(min_pixels, max_pixels)?;
        self.options.min_pixels = min_pixels;
        self.options.max_pixels = max_pixels;
        Ok(self)
    }

    /// Smallest pixel budget.
    pub fn min_pixels(&self) -> u64 {
        self.options.min_pixels
    }

    /// Largest pixel budget.
    pub fn max_pixels(&self) -> u64 {
        self.options.max_pixels
    }

    /// Side of a vision-tower patch (14).
    pub fn patch_size(&self) -> usize {
        self.options.patch_size as usize
    }

    /// Side of the window of patches merged into one token (2).
    pub fn merge_size(&self) -> usize {
        self.options.merge_size as usize
    }

    /// Frames per temporal patch (2): how many times an image is repeated.
    pub fn temporal_patch_size(&self) -> usize {
        self.options.temporal_patch_size as usize
    }

    /// The `(height, width)` an image of this size is resized to (itself when resizing is off).
    pub fn resized_size(&self, height: u32, width: u32) -> Result<(u32, u32)> {
        if self.options.resample.is_none() {
            return Ok((height, width));
        }
        smart_resize(
            height,
            width,
            self.options.factor()?,
            self.options.min_pixels,
            self.options.max_pixels,
        )
    }

    /// The `smart_resize` decision for an image of this size with this processor's factor and
    /// pixel budget, `None` when resizing is off.
    /// [`GrownToMinPixels`](crate::qwen2vl::ResizeBranch::GrownToMinPixels) flags
    /// images the reference silently upsizes (below `min_pixels` once rounded).
    pub fn resize_plan(&self, height: u32, width: u32) -> Result<Option<SmartResize>> {
        if self.options.resample.is_none() {
            return Ok(None);
        }
        smart_resize_detailed(
            height,
            width,
            self.options.factor()?,
            self.options.min_pixels,
            self.options.max_pixels,
        )
        .map(Some)
    }

    /// `image_grid_thw` for an image of this size, without processing it: `[1, resized height /
    /// patch_size, resized width / patch_size]`.
    pub fn grid_thw(&self, height: u32, width: u32) -> Result<[usize; 3]> {
        let (h, w) = self.resized_size(height, width)?;
        let factor = self.options.factor()?;
        if h % factor != 0 || w % factor != 0 {
            return Err(PreprocessError::NotPatchAligned {
                height: h,
                width: w,
                factor,
            });
        }
        let p = self.options.patch_size;
        Ok([1, (h / p) as usize, (w / p) as usize])
    }

    /// The number of `<|image_pad|>` tokens an image of this size becomes: the grid product
    /// divided by `merge_size^2`, as `Qwen2VLProcessor` computes it.
    pub fn num_image_tokens(&self, height: u32, width: u32) -> Result<usize> {
        let [t, h, w] = self.grid_thw(height, width)?;
        Ok(t * h * w / (self.merge_size() * self.merge_size()))
    }

    /// The 8-bit step alone: `smart_resize` then Pillow's resize (a copy when resizing is off).
    pub fn resize(&self, image: &RgbImage) -> Result<RgbImage> {
        let Some(filter) = self.options.resample else {
            return Ok(image.clone());
        };
        let (height, width) = self.resized_size(image.height(), image.width())?;
        resize(image, width, height, filter)
    }

    /// The whole pipeline for one image. Errors on an aspect ratio above 200, and, with
    /// resizing off, on sides that are not multiples of `patch_size * merge_size`.
    pub fn process(&self, image: &RgbImage) -> Result<Patches> {
        let resized = self.resize(image)?;
        let pixels = to_pixel_values(
            &resized,
            self.options.rescale,
            self.options.normalize.as_ref(),
        );
        let repeated = vec![&pixels; self.temporal_patch_size()];
        patchify(
            &repeated,
            self.patch_size(),
            self.merge_size(),
            self.temporal_patch_size(),
        )
    }
}
