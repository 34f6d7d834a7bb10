//! Idefics3 / SmolVLM image preprocessing: an image into square tiles plus a global view.
//!
//! ```
//! use vlm_preprocess::idefics3::{Idefics3ImageProcessor, Idefics3ProcessorConfig};
//! use vlm_preprocess::image::{Rgb, RgbImage};
//!
//! # fn main() -> Result<(), vlm_preprocess::PreprocessError> {
//! // Usually `Idefics3ImageProcessor::from_dir(model_dir)?`.
//! let config = Idefics3ProcessorConfig::from_json_str(
//!     r#"{"image_processor_type": "Idefics3ImageProcessor",
//!         "size": {"longest_edge": 72}, "max_image_size": {"longest_edge": 24}}"#,
//! )?;
//! let processor = Idefics3ImageProcessor::from_config(&config)?;
//! let photo = RgbImage::from_fn(64, 44, |x, y| Rgb([x as u8, y as u8, 7]));
//! let tiles = processor.process(&photo)?;
//! // 64x44 -> 72x50 (longest edge 72, even height) -> 72x72 (multiples of 24): 3x3 tiles + global.
//! assert_eq!(tiles.grid(), (3, 3));
//! assert_eq!(tiles.shape, [10, 3, 24, 24]);
//! assert_eq!(processor.grid(44, 64)?, (3, 3));
//!
//! // Without splitting, one 24x24 tile and no grid.
//! let single = processor.clone().with_image_splitting(false).process(&photo)?;
//! assert_eq!((single.grid(), single.shape), ((0, 0), [1, 3, 24, 24]));
//! # Ok(())
//! # }
//! ```
//!
//! # Reference
//!
//! transformers 5.23 `Idefics3ImageProcessorPil._preprocess`
//! (`models/idefics3/image_processing_pil_idefics3.py`), as `Idefics3Processor` calls it (with
//! `return_row_col_info=True`). SmolVLM-256M/500M/2.2B-Instruct and Idefics3-8B use this class.
//!
//! # Pipeline
//!
//! 1. `do_resize`: resize so the longest edge is exactly `size.longest_edge`, **enlarging
//!    smaller images**, the other edge `int(longest / aspect)` made even
//!    ([`resize_output_size`]); Pillow's filter (`resample`, Lanczos by default) via
//!    [`crate::resize()`].
//! 2. `do_image_splitting`: resize again so both sides are multiples of `max_image_size`
//!    ([`vision_encoder_size`]), cut into `max_image_size` squares in row-major order, and append
//!    the whole image resized to `max_image_size x max_image_size` (the global view). An image
//!    that is a single tile after this step is kept as is, without a global view, and has grid
//!    `(0, 0)`. Without splitting, the image is resized to `max_image_size` squared (aspect ratio
//!    not kept) and has grid `(0, 0)`.
//! 3. Rescale and normalize every tile (mean = std = 0.5 by default), NumPy's dtypes.
//! 4. `do_pad`: tiles are padded to the largest tile of the batch, `pixel_attention_mask` marks
//!    real pixels, and prompts with fewer tiles get all-zero tiles ([`pad_batch`]). With the
//!    sizes above every tile is `max_image_size` squared, so inside a tile the mask is all ones;
//!    padding only appears as whole zero tiles in a batch of several prompts.
//!
//! All images of **one** prompt form one sample (their tiles concatenated in prompt order):
//! that is how `Idefics3Processor` groups images, so one request gives
//! `pixel_values` `(1, total_tiles, 3, M, M)` without padding tiles
//! ([`Idefics3ImageProcessor::process_prompt`]).

mod config;
mod sizes;
mod tiles;

use std::path::Path;

use image::RgbImage;

pub use self::config::{
    FirstResize, Idefics3ProcessorConfig, DEFAULT_LONGEST_EDGE, DEFAULT_MAX_IMAGE_SIZE,
    MAX_IMAGE_SIZE,
};
pub use self::sizes::{resize_output_size, split_grid, vision_encoder_size};
pub use self::tiles::{pad_batch, Idefics3Batch, Idefics3Tiles};

use self::config::Resolved;
use crate::config::Resample;
use crate::error::{PreprocessError, Result};
use crate::resize::resize;
use crate::transforms::to_pixel_values;

/// Idefics3 / SmolVLM image preprocessing (`Idefics3ImageProcessorPil`), bit-exact: Pillow's
/// resize is [`crate::resize()`]; rescale and normalize follow NumPy's `f64` multiply cast to
/// `f32`, then `f32` arithmetic. [`Default`] is the class defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Idefics3ImageProcessor {
    options: Resolved,
}

impl Idefics3ImageProcessor {
    /// Builds the processor from a config, applying the class defaults of
    /// `Idefics3ImageProcessorPil` (`size.longest_edge` 1456, `max_image_size.longest_edge` 364,
    /// Lanczos, splitting on, mean = std = 0.5).
    pub fn from_config(config: &Idefics3ProcessorConfig) -> Result<Self> {
        Ok(Self {
            options: Resolved::from_config(config)?,
        })
    }

    /// [`Idefics3ProcessorConfig::from_dir`] then [`Idefics3ImageProcessor::from_config`].
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_config(&Idefics3ProcessorConfig::from_dir(dir)?)
    }

    /// Turns splitting on or off (`do_image_splitting`, a per-call option in transformers);
    /// without it an image costs one tile.
    pub fn with_image_splitting(mut self, splitting: bool) -> Self {
        self.options.splitting = splitting;
        self
    }

    /// Whether images are split into tiles.
    pub fn image_splitting(&self) -> bool {
        self.options.splitting
    }

    /// The side of a tile (`max_image_size.longest_edge`).
    pub fn max_image_size(&self) -> u32 {
        self.options.max_image_size
    }

    /// The first resize, `None` when `do_resize` is false.
    pub fn first_resize(&self) -> Option<FirstResize> {
        self.options.first_resize
    }

    /// The Pillow filter used by every resize.
    pub fn resample(&self) -> Resample {
        self.options.resample
    }

    /// Whether `do_pad` is on (the tiles and masks returned are the same either way: every tile
    /// has the same size, so there is nothing to pad inside one request).
    pub fn pads(&self) -> bool {
        self.options.pad
    }

    /// `(height, width)` after the first resize (the input size when `do_resize` is false).
    pub fn resized_size(&self, height: u32, width: u32) -> Result<(u32, u32)> {
        match self.options.first_resize {
            None => {
                if height == 0 || width == 0 {
                    return Err(PreprocessError::EmptyImage {
                        origin: "Idefics3 image processor input".to_string(),
                        width,
                        height,
                    });
                }
                Ok((height, width))
            }
            Some(FirstResize::LongestEdge(edge)) => resize_output_size(height, width, edge),
            Some(FirstResize::Exact(e)) => {
                if height == 0 || width == 0 {
                    return Err(PreprocessError::EmptyImage {
                        origin: "Idefics3 image processor input".to_string(),
                        width,
                        height,
                    });
                }
                Ok((e.height, e.width))
            }
        }
    }

    /// `(rows, cols)` of the tile grid for an image of this size, as the prompt needs it;
    /// `(0, 0)` when the image is one tile (splitting off, or small enough).
    pub fn grid(&self, height: u32, width: u32) -> Result<(usize, usize)> {
        let (h, w) = self.resized_size(height, width)?;
        if !self.options.splitting {
            return Ok((0, 0));
        }
        let m = self.options.max_image_size;
        let (h, w) = vision_encoder_size(h, w, m)?;
        Ok(split_grid(h, w, m))
    }

    /// Number of tiles (and of `image_seq_len` placeholder blocks) of an image of this size.
    pub fn num_tiles(&self, height: u32, width: u32) -> Result<usize> {
        let (rows, cols) = self.grid(height, width)?;
        Ok(if rows == 0 && cols == 0 {
            1
        } else {
            rows * cols + 1
        })
    }

    /// Step 1 alone: the first resize (a copy when `do_resize` is false).
    pub fn resize(&self, image: &RgbImage) -> Result<RgbImage> {
        let (h, w) = self.resized_size(image.height(), image.width())?;
        resize(image, w, h, self.options.resample)
    }

    /// Step 2's resize alone (`resize_for_vision_encoder`), on a first-resized image.
    pub fn resize_for_vision_encoder(&self, image: &RgbImage) -> Result<RgbImage> {
        let (h, w) =
            vision_encoder_size(image.height(), image.width(), self.options.max_image_size)?;
        resize(image, w, h, self.options.resample)
    }

    /// The 8-bit tiles of one image in the reference's order, and its `(rows, cols)`.
    pub fn tiles_u8(&self, image: &RgbImage) -> Result<(Vec<RgbImage>, usize, usize)> {
        let resized = self.resize(image)?;
        let m = self.options.max_image_size;
        if !self.options.splitting {
            return Ok((vec![resize(&resized, m, m, self.options.resample)?], 0, 0));
        }
        let encoder = self.resize_for_vision_encoder(&resized)?;
        let (rows, cols) = split_grid(encoder.height(), encoder.width(), m);
        if rows == 0 && cols == 0 {
            return Ok((vec![encoder], 0, 0));
        }
        let mut tiles = Vec::with_capacity(rows * cols + 1);
        for r in 0..rows as u32 {
            for c in 0..cols as u32 {
                tiles.push(image::imageops::crop_imm(&encoder, c * m, r * m, m, m).to_image());
            }
        }
        tiles.push(resize(&encoder, m, m, self.options.resample)?);
        Ok((tiles, rows, cols))
    }

    /// The whole pipeline for one image.
    pub fn process(&self, image: &RgbImage) -> Result<Idefics3Tiles> {
        let (tiles, rows, cols) = self.tiles_u8(image)?;
        let pixels: Vec<_> = tiles
            .iter()
            .map(|t| to_pixel_values(t, self.options.rescale, self.options.normalize.as_ref()))
            .collect();
        Idefics3Tiles::from_tiles(&pixels, rows, cols)
    }

    /// All images of one prompt, in prompt order, as the reference processor returns them:
    /// one sample, `(1, total_tiles, 3, M, M)`. Errors when `images` is empty.
    pub fn process_prompt(&self, images: &[RgbImage]) -> Result<Idefics3Batch> {
        let tiles = images
            .iter()
            .map(|im| self.process(im))
            .collect::<Result<Vec<_>>>()?;
        pad_batch(&[tiles])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn build(json: &str) -> Result<Idefics3ImageProcessor> {
        Idefics3ImageProcessor::from_config(&Idefics3ProcessorConfig::from_json_str(json)?)
    }

    #[test]
    fn class_defaults() -> Result<()> {
        let p = build("{}")?;
        assert_eq!(p, Idefics3ImageProcessor::default());
        assert_eq!(
            p.first_resize(),
            Some(FirstResize::LongestEdge(DEFAULT_LONGEST_EDGE))
        );
        assert_eq!(p.max_image_size(), 364);
        assert_eq!(p.resample(), Resample::Lanczos);
        assert!(p.image_splitting() && p.pads());
        // A 640x480 photo: 1456x1092, both multiples of 364 already: 3x4 tiles + global.
        assert_eq!(p.grid(480, 640)?, (3, 4));
        assert_eq!(p.num_tiles(480, 640)?, 13);
        Ok(())
    }

    #[test]
    fn size_dialects() -> Result<()> {
        let exact = build(r#"{"size": {"height": 72, "width": 48}}"#)?;
        assert_eq!(exact.resized_size(10, 10)?, (72, 48));
        assert_eq!(build(r#"{"size": 72}"#)?.resized_size(5, 9)?, (72, 72));
        assert_eq!(
            build(r#"{"size": {"longest_edge": 72, "shortest_edge": 4}}"#)?.first_resize(),
            Some(FirstResize::LongestEdge(72))
        );
        let no_resize = build(r#"{"do_resize": false, "max_image_size": {"longest_edge": 16}}"#)?;
        assert_eq!(no_resize.grid(20, 40)?, (2, 3));
        Ok(())
    }

    #[test]
    fn bad_configs_are_errors() {
        for bad in [
            r#"{"size": {"shortest_edge": 30}}"#,
            r#"{"size": {"max_height": 30, "max_width": 30}}"#,
            r#"{"size": {"longest_edge": 0}}"#,
            r#"{"size": "big"}"#,
            r#"{"max_image_size": 24}"#,
            r#"{"max_image_size": {"height": 24, "width": 24}}"#,
            r#"{"max_image_size": {"longest_edge": -1}}"#,
            r#"{"resample": 7}"#,
            r#"{"image_mean": [0.5, 0.5]}"#,
            r#"{"image_processor_type": "SiglipImageProcessor"}"#,
        ] {
            assert!(build(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_images_are_errors() -> Result<()> {
        let p = build(r#"{"size": {"longest_edge": 32}, "max_image_size": {"longest_edge": 16}}"#)?;
        let empty = RgbImage::new(0, 5);
        assert!(matches!(
            p.process(&empty),
            Err(PreprocessError::EmptyImage { .. })
        ));
        assert!(p.grid(5, 0).is_err());
        assert!(p.process_prompt(&[]).is_err());
        Ok(())
    }

    #[test]
    fn tiles_are_crops_of_the_resized_image() -> Result<()> {
        let p = build(
            r#"{"do_resize": false, "max_image_size": {"longest_edge": 4},
                "do_rescale": false, "do_normalize": false}"#,
        )?;
        // 8x4 (w x h) stays 8x4: two tiles side by side plus a 4x4 global view.
        let image = RgbImage::from_fn(8, 4, |x, y| Rgb([(x * 10 + y) as u8, 0, 0]));
        let tiles = p.process(&image)?;
        assert_eq!((tiles.grid(), tiles.shape), ((1, 2), [3, 3, 4, 4]));
        // Tile 1, channel 0, row 2, column 1 is pixel (4 + 1, 2).
        assert_eq!(tiles.pixel_values[3 * 16 + 2 * 4 + 1], 52.0);
        assert!(tiles.pixel_attention_mask.iter().all(|&m| m == 1));
        Ok(())
    }
}
