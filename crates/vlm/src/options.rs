//! How to load a model: device, dtype, quantization, decode limits, and the media options that
//! only some families read.

use candle_core::{DType, Device};
use vlm_core::nn::Quantization;
use vlm_preprocess::qwen2vl::FrameSampling;
use vlm_preprocess::DecodeLimits;

use crate::{Error, Result};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where tensors live.
    pub device: Device,
    /// Weight and activation dtype. `None`: f32 on CPU (the fast path there), the checkpoint's
    /// own dtype on GPUs.
    pub dtype: Option<DType>,
    /// Largest image (in pixels, from its header) that will be decoded.
    pub image_limits: DecodeLimits,
    /// Quantize the language model's linear layers at load time (`None`: keep `dtype`).
    /// Activations of quantized layers run in f32.
    pub quantization: Option<Quantization>,
    /// How images and videos are sized and sampled, for the families that read each option.
    pub media: MediaOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            image_limits: DecodeLimits::default(),
            quantization: None,
            media: MediaOptions::default(),
        }
    }
}

/// Overrides of the checkpoint's image and video processor settings. Each family reads some of
/// them (see [`MediaOption`]); `None` keeps the checkpoint's setting, and setting one that the
/// loaded family does not read is an error at load, not a silent no-op.
#[derive(Debug, Clone, Default)]
pub struct MediaOptions {
    /// Tiling models (Idefics3 / SmolVLM): split images into tiles plus a global view
    /// (`do_image_splitting`).
    pub image_splitting: Option<bool>,
    /// Native-resolution models (Qwen2-VL): the fewest pixels an image is resized to
    /// (`min_pixels`).
    pub min_pixels: Option<u64>,
    /// Native-resolution models: the most pixels an image is resized to (`max_pixels`), which
    /// bounds its token count (one token per 28 x 28 pixels).
    pub max_pixels: Option<u64>,
    /// Native-resolution models: the fewest pixels of each video frame.
    pub video_min_pixels: Option<u64>,
    /// Native-resolution models: the most pixels of each video frame.
    pub video_max_pixels: Option<u64>,
    /// Video models: which frames of a video are used (the checkpoint's default: every frame).
    pub video_sampling: Option<FrameSampling>,
    /// Video models: a total token budget per video (transformers' `cap_pixels_per_frame` with
    /// `max_video_tokens`): each frame is also capped at an even share of it, so a long video
    /// cannot exhaust memory. `None`: no total budget, as transformers 5.23 defaults to.
    pub max_video_tokens: Option<u64>,
}

/// One field of [`MediaOptions`], for a family to say which it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MediaOption {
    /// [`MediaOptions::image_splitting`].
    ImageSplitting,
    /// [`MediaOptions::min_pixels`].
    MinPixels,
    /// [`MediaOptions::max_pixels`].
    MaxPixels,
    /// [`MediaOptions::video_min_pixels`].
    VideoMinPixels,
    /// [`MediaOptions::video_max_pixels`].
    VideoMaxPixels,
    /// [`MediaOptions::video_sampling`].
    VideoSampling,
    /// [`MediaOptions::max_video_tokens`].
    MaxVideoTokens,
}

impl MediaOption {
    /// The field's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ImageSplitting => "image_splitting",
            Self::MinPixels => "min_pixels",
            Self::MaxPixels => "max_pixels",
            Self::VideoMinPixels => "video_min_pixels",
            Self::VideoMaxPixels => "video_max_pixels",
            Self::VideoSampling => "video_sampling",
            Self::MaxVideoTokens => "max_video_tokens",
        }
    }
}

impl MediaOptions {
    /// The options that are set.
    pub fn given(&self) -> Vec<MediaOption> {
        let set = [
            (MediaOption::ImageSplitting, self.image_splitting.is_some()),
            (MediaOption::MinPixels, self.min_pixels.is_some()),
            (MediaOption::MaxPixels, self.max_pixels.is_some()),
            (MediaOption::VideoMinPixels, self.video_min_pixels.is_some()),
            (MediaOption::VideoMaxPixels, self.video_max_pixels.is_some()),
            (MediaOption::VideoSampling, self.video_sampling.is_some()),
            (MediaOption::MaxVideoTokens, self.max_video_tokens.is_some()),
        ];
        set.into_iter()
            .filter_map(|(option, given)| given.then_some(option))
            .collect()
    }

    /// Refuses every set option that `model_type` does not read (`honoured`).
    pub(crate) fn check(&self, model_type: &str, honoured: &[MediaOption]) -> Result<()> {
        let ignored: Vec<&str> = self
            .given()
            .into_iter()
            .filter(|o| !honoured.contains(o))
            .map(MediaOption::name)
            .collect();
        if ignored.is_empty() {
            return Ok(());
        }
        let reads = match honoured {
            [] => "none".to_string(),
            some => some.iter().map(|o| o.name()).collect::<Vec<_>>().join(", "),
        };
        Err(Error::InvalidOption(format!(
            "{model_type} does not read the media option(s) {} (it reads: {reads})",
            ignored.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_option_the_family_does_not_read_is_refused() {
        let options = MediaOptions {
            min_pixels: Some(1),
            image_splitting: Some(false),
            ..MediaOptions::default()
        };
        assert_eq!(
            options.given(),
            [MediaOption::ImageSplitting, MediaOption::MinPixels]
        );
        assert!(options
            .check("x", &[MediaOption::ImageSplitting, MediaOption::MinPixels])
            .is_ok());
        let e = options
            .check("idefics3", &[MediaOption::ImageSplitting])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("idefics3")
                && e.contains("min_pixels")
                && e.contains("reads: image_splitting"),
            "{e}"
        );
        let e = options.check("llava", &[]).unwrap_err().to_string();
        assert!(
            e.contains("image_splitting, min_pixels") && e.contains("reads: none"),
            "{e}"
        );
        assert!(MediaOptions::default().check("llava", &[]).is_ok());
    }
}
