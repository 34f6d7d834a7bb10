//! Image and video decoding and preprocessing for vision-language models, bit-exact to the
//! Hugging Face transformers 5 Pillow-backed image processors (`CLIPImageProcessorPil`,
//! `SiglipImageProcessorPil`, `LlavaImageProcessorPil`, `Qwen2VLImageProcessorPil`) and, for
//! frames it does not resize, to `Qwen2VLVideoProcessor`.
//!
//! Fixed-resolution processors live at the crate root ([`ImageProcessor`]); Qwen2-VL's
//! native-resolution patches, grids and videos in [`qwen2vl`]; [`Video`] loads frames or an
//! animated GIF.
//!
//! ```
//! use vlm_preprocess::{ImageProcessor, ImageProcessorConfig, PixelValues};
//!
//! # fn main() -> Result<(), vlm_preprocess::PreprocessError> {
//! // Usually `ImageProcessorConfig::from_dir(model_dir)?`.
//! let config = ImageProcessorConfig::from_json_str(
//!     r#"{"image_processor_type": "CLIPImageProcessor",
//!         "size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}"#,
//! )?;
//! let processor = ImageProcessor::from_config(&config)?;
//! // Usually `vlm_preprocess::load_image(path)?`.
//! let image = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 128]));
//! let pixels: PixelValues = processor.process(&image)?;
//! assert_eq!(pixels.shape, [3, 32, 32]); // channels first
//! # Ok(())
//! # }
//! ```
//!
//! # Design
//!
//! - **Exactness over speed.** Vision towers are trained on Pillow's output, and small
//!   systematic resampling differences shift features. [`resize()`] reimplements Pillow's
//!   fixed-point separable convolution (`Resample.c`) and its NEAREST path, so the 8-bit image
//!   fed to rescale/normalize is bit-identical; floating-point steps follow NumPy's dtypes
//!   (`f64` rescale cast to `f32`, `f32` normalize), which makes `pixel_values` match to the
//!   last bit in practice (tests allow 1e-5).
//! - **Composable transforms.** [`ImageProcessor`] only chains the public steps
//!   ([`pad_to_square`], [`resize()`], [`center_crop`], [`to_pixel_values`], [`pad_bottom_right`]),
//!   each documented with the transformers function it mirrors.
//! - **Config parsed once.** [`ImageProcessorConfig`] is the JSON as written;
//!   [`ImageProcessor::from_config`] applies the class defaults and turns sizes and filters
//!   into enums, failing early with a message naming the field and the accepted values.
//! - **Decoding like `Image.open` + `exif_transpose` + `convert_to_rgb`**, including Pillow's
//!   surprising 16-bit behaviour (see [`to_rgb`]). Decoding checks the header against
//!   [`DecodeLimits`] before allocating pixels.
//! - No dependency on a tensor library: [`PixelValues`] is a plain `Vec<f32>` with a
//!   `[channels, height, width]` shape.
#![deny(missing_docs)]

pub mod anyres;
mod config;
mod error;
pub mod idefics3;
mod load;
mod processor;
pub mod qwen2vl;
mod resize;
mod transforms;
mod video;

pub use config::{
    Extent, ImageProcessorConfig, Resample, ResizeTarget, PREPROCESSOR_CONFIG_FILE,
    PROCESSOR_CONFIG_FILE,
};
pub use error::{PreprocessError, Result};
pub use load::{
    load_image, load_image_from_bytes, load_image_from_bytes_with_limits, load_image_with_limits,
    to_rgb, DecodeLimits,
};
pub use processor::{
    ImageProcessor, ProcessorKind, IMAGENET_STANDARD_MEAN_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};
pub use resize::resize;
pub use transforms::{
    center_crop, mean_background, pad_bottom_right, pad_to_square, shortest_edge_size,
    to_pixel_values, Normalize, PixelValues,
};

pub use video::{Video, VideoLimits};

/// Re-export of the `image` crate, whose [`image::RgbImage`] is this crate's 8-bit image type.
pub use image;
