//! The video pipeline of `Qwen2VLVideoProcessor`
//! (`transformers/models/qwen2_vl/video_processing_qwen2_vl.py`), with Pillow's resize in place
//! of torchvision's (see the module docs of [`crate::qwen2vl`]).

use std::borrow::Cow;
use std::path::Path;

use image::RgbImage;

use crate::error::{PreprocessError, Result};
use crate::qwen2vl::config::{check_type, Qwen2VlConfig, Resolved, VIDEO_DEFAULTS};
use crate::qwen2vl::patches::{patchify, Patches};
use crate::qwen2vl::sampling::{sample_indices, FrameSampling, SamplingLimits};
use crate::qwen2vl::smart_resize::{check_pixel_bounds, smart_resize};
use crate::resize::resize;
use crate::transforms::{Normalize, PixelValues};
use crate::video::Video;

/// The frame rate transformers assumes for a video whose frame rate is unknown
/// (`VideoMetadata.sampled_fps` returns `self.fps or 24`).
pub const DEFAULT_VIDEO_FPS: f64 = 24.0;

/// Default `max_video_tokens` of `Qwen2VLVideoProcessor`.
pub const DEFAULT_MAX_VIDEO_TOKENS: u64 = 128_000;

/// One processed video: its patches and the timing the model needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedVideo {
    /// `pixel_values_videos` and `video_grid_thw` for this video. Frames are padded to a
    /// multiple of `temporal_patch_size` by repeating the last sampled frame.
    pub patches: Patches,
    /// Indices of the frames used, in order (before padding).
    pub frame_indices: Vec<usize>,
    /// `VideoMetadata.sampled_fps`: `len(frame_indices) / total_frames * fps` when the video's
    /// fps is known (just `fps` when every frame is used), else 24.
    pub sampled_fps: f64,
    /// Qwen2.5-VL's `second_per_grid_ts` entry: `temporal_patch_size / sampled_fps`, the
    /// seconds one temporal patch spans (`Qwen2_5_VLProcessor._process_videos`).
    pub second_per_grid_t: f64,
}

/// Qwen2-VL / Qwen2.5-VL video preprocessing: frame sampling, `smart_resize` with the video
/// pixel budget (optionally capped per frame by a whole-video token budget), Pillow resize,
/// torchvision's fused rescale + normalize, padding to whole temporal patches, then
/// [`Patches`] in video order.
///
/// [`Default`] is `Qwen2VLVideoProcessor`'s class defaults: every frame used, frames of
/// `128*28*28 ..= 768*28*28` pixels, no per-frame cap.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlVideoProcessor {
    options: Resolved,
    sampling: FrameSampling,
    min_frames: u64,
    max_frames: u64,
    /// `Some(max_video_tokens)` when `cap_pixels_per_frame` is on.
    video_token_budget: Option<u64>,
}

impl Default for Qwen2VlVideoProcessor {
    fn default() -> Self {
        Self {
            options: Resolved::defaults(VIDEO_DEFAULTS),
            sampling: FrameSampling::All,
            min_frames: 4,
            max_frames: 768,
            video_token_budget: None,
        }
    }
}

impl Qwen2VlVideoProcessor {
    /// Builds the processor from a config with `Qwen2VLVideoProcessor`'s class defaults.
    ///
    /// `do_sample_frames: true` needs exactly one of `num_frames` and `fps` (transformers
    /// fails at the first call otherwise). `cap_pixels_per_frame` unset means off, as in
    /// transformers 5.23 (which warns that the default will change).
    pub fn from_config(config: &Qwen2VlConfig) -> Result<Self> {
        check_type(config, true)?;
        let options = Resolved::from_config(config, VIDEO_DEFAULTS)?;
        let sampling = if config.do_sample_frames.unwrap_or(false) {
            match (config.num_frames, config.fps) {
                (Some(n), None) => FrameSampling::NumFrames(usize::try_from(n).map_err(|_| {
                    PreprocessError::InvalidConfig {
                        field: "num_frames",
                        expected: "a frame count that fits in usize",
                        found: n.to_string(),
                    }
                })?),
                (None, Some(fps)) if fps.is_finite() && fps > 0.0 => FrameSampling::Fps(fps),
                (None, Some(fps)) => {
                    return Err(PreprocessError::InvalidConfig {
                        field: "fps",
                        expected: "a positive frame rate",
                        found: fps.to_string(),
                    })
                }
                (Some(n), Some(fps)) => {
                    return Err(PreprocessError::InvalidConfig {
                        field: "num_frames",
                        expected:
                            "either num_frames or fps, not both (they are mutually exclusive)",
                        found: format!("num_frames = {n}, fps = {fps}"),
                    })
                }
                (None, None) => {
                    return Err(PreprocessError::InvalidConfig {
                        field: "do_sample_frames",
                        expected: "num_frames or fps alongside do_sample_frames = true",
                        found: "neither".to_string(),
                    })
                }
            }
        } else {
            FrameSampling::All
        };
        let video_token_budget = config
            .cap_pixels_per_frame
            .unwrap_or(false)
            .then(|| config.max_video_tokens.unwrap_or(DEFAULT_MAX_VIDEO_TOKENS));
        Ok(Self {
            options,
            sampling,
            min_frames: config.min_frames.unwrap_or(4),
            max_frames: config.max_frames.unwrap_or(768),
            video_token_budget,
        })
    }

    /// [`Qwen2VlConfig::video_from_dir`] then [`Qwen2VlVideoProcessor::from_config`].
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_config(&Qwen2VlConfig::video_from_dir(dir)?)
    }

    /// Replaces the per-frame pixel budget. Errors unless `0 < min_pixels <= max_pixels <= 2^53`.
    pub fn with_pixel_bounds(mut self, min_pixels: u64, max_pixels: u64) -> Result<Self> {
        check_pixel_bounds(min_pixels, max_pixels)?;
        self.options.min_pixels = min_pixels;
        self.options.max_pixels = max_pixels;
        Ok(self)
    }

    /// Replaces the default frame sampling ([`Qwen2VlVideoProcessor::process`] uses it).
    pub fn with_sampling(mut self, sampling: FrameSampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// `cap_pixels_per_frame`: `Some(max_video_tokens)` also caps each frame at an even share
    /// of `0.9 * max_video_tokens` tokens' worth of pixels (never below `1.05 * min_pixels`);
    /// `None` turns the cap off.
    pub fn with_video_token_budget(mut self, max_video_tokens: Option<u64>) -> Self {
        self.video_token_budget = max_video_tokens;
        self
    }

    /// The default frame sampling.
    pub fn sampling(&self) -> FrameSampling {
        self.sampling
    }

    /// Smallest per-frame pixel budget.
    pub fn min_pixels(&self) -> u64 {
        self.options.min_pixels
    }

    /// Largest per-frame pixel budget (before the optional whole-video cap).
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

    /// Frames per temporal patch (2).
    pub fn temporal_patch_size(&self) -> usize {
        self.options.temporal_patch_size as usize
    }

    /// The frame indices `sampling` keeps from a video of `total_frames` frames at
    /// `video_fps` (needed by [`FrameSampling::Fps`]), exactly as `sample_frames` computes
    /// them (`torch.arange(...).int()` included).
    pub fn sample_indices(
        &self,
        total_frames: usize,
        video_fps: Option<f64>,
        sampling: FrameSampling,
    ) -> Result<Vec<usize>> {
        sample_indices(
            total_frames,
            video_fps,
            sampling,
            SamplingLimits {
                temporal_patch_size: self.temporal_patch_size(),
                min_frames: self.min_frames,
                max_frames: self.max_frames,
            },
        )
    }

    /// The per-frame `max_pixels` for `num_frames` sampled frames: the configured one, or with
    /// the whole-video cap `max(min(max_pixels, int(tokens * factor^2 * 0.9) *
    /// temporal_patch_size // num_frames), int(min_pixels * 1.05))`.
    fn frame_max_pixels(&self, num_frames: usize) -> Result<u64> {
        let max_pixels = self.options.max_pixels;
        let Some(tokens) = self.video_token_budget else {
            return Ok(max_pixels);
        };
        let factor = u64::from(self.options.factor()?);
        let overflow = || PreprocessError::InvalidArgument {
            name: "max_video_tokens",
            expected: "a token budget whose pixel count fits in 64 bits",
            found: tokens.to_string(),
        };
        let budget = tokens.checked_mul(factor * factor).ok_or_else(overflow)?;
        let total_pixels = (budget as f64 * 0.9) as u64;
        let share = total_pixels
            .checked_mul(u64::from(self.options.temporal_patch_size))
            .ok_or_else(overflow)?
            / (num_frames.max(1) as u64);
        let floor = (self.options.min_pixels as f64 * 1.05) as u64;
        Ok(max_pixels.min(share).max(floor))
    }

    /// The `(height, width)` frames of this size are resized to when `num_frames` frames are
    /// sampled (the frame count matters only with the whole-video cap).
    pub fn frame_size(&self, height: u32, width: u32, num_frames: usize) -> Result<(u32, u32)> {
        if self.options.resample.is_none() {
            return Ok((height, width));
        }
        smart_resize(
            height,
            width,
            self.options.factor()?,
            self.options.min_pixels,
            self.frame_max_pixels(num_frames)?,
        )
    }

    /// `video_grid_thw` for `num_frames` sampled frames of this size, without processing.
    pub fn grid_thw(&self, num_frames: usize, height: u32, width: u32) -> Result<[usize; 3]> {
        let (h, w) = self.frame_size(height, width, num_frames)?;
        let factor = self.options.factor()?;
        if h % factor != 0 || w % factor != 0 {
            return Err(PreprocessError::NotPatchAligned {
                height: h,
                width: w,
                factor,
            });
        }
        let p = self.options.patch_size;
        Ok([
            num_frames.div_ceil(self.temporal_patch_size()),
            (h / p) as usize,
            (w / p) as usize,
        ])
    }

    /// The number of `<|video_pad|>` tokens for `num_frames` sampled frames of this size.
    /// Unlike transformers' `get_num_of_video_patches`, this includes the whole-video cap when
    /// it is on, so it always agrees with [`Qwen2VlVideoProcessor::process`].
    pub fn num_video_tokens(&self, num_frames: usize, height: u32, width: u32) -> Result<usize> {
        let [t, h, w] = self.grid_thw(num_frames, height, width)?;
        Ok(t * h * w / (self.merge_size() * self.merge_size()))
    }

    /// Processes a video with the configured sampling ([`Qwen2VlVideoProcessor::sampling`]).
    pub fn process(&self, video: &Video) -> Result<ProcessedVideo> {
        self.process_with(video, self.sampling)
    }

    /// Processes a video with an explicit sampling. Errors on fewer than 2 frames (a single
    /// frame is an image: use the image processor), frames of different sizes, and sampling
    /// requests transformers refuses.
    pub fn process_with(&self, video: &Video, sampling: FrameSampling) -> Result<ProcessedVideo> {
        video.validate("video")?;
        let total = video.frames.len();
        if total < 2 {
            return Err(PreprocessError::VideoTooShort {
                origin: "video".to_string(),
                found: total,
                needed: 2,
            });
        }
        let indices = self.sample_indices(total, video.fps, sampling)?;
        let (height, width) = video.frame_size().unwrap_or((0, 0));
        let (out_h, out_w) = self.frame_size(height, width, indices.len())?;
        let mut pixels = Vec::with_capacity(indices.len() + 1);
        for &i in &indices {
            let frame = video.frames.get(i).ok_or(PreprocessError::FrameSampling {
                total_frames: total,
                reason: format!("index {i} is past the last frame"),
            })?;
            let resized: Cow<'_, RgbImage> = match self.options.resample {
                Some(filter) => Cow::Owned(resize(frame, out_w, out_h, filter)?),
                None => Cow::Borrowed(frame),
            };
            pixels.push(to_pixel_values_torchvision(
                &resized,
                self.options.rescale,
                self.options.normalize.as_ref(),
            ));
        }
        let t = self.temporal_patch_size();
        let mut refs: Vec<&PixelValues> = pixels.iter().collect();
        if let Some(&last) = refs.last() {
            while !refs.len().is_multiple_of(t) {
                refs.push(last);
            }
        }
        let patches = patchify(&refs, self.patch_size(), self.merge_size(), t)?;
        let sampled_fps = match (video.fps, sampling) {
            (None, _) => DEFAULT_VIDEO_FPS,
            (Some(fps), FrameSampling::All) => fps,
            (Some(fps), _) => indices.len() as f64 / total as f64 * fps,
        };
        Ok(ProcessedVideo {
            patches,
            frame_indices: indices,
            sampled_fps,
            second_per_grid_t: t as f64 / sampled_fps,
        })
    }
}

/// Channels-first `f32` pixels with the arithmetic of transformers' torchvision backend
/// (`TorchvisionBackend.rescale_and_normalize`), which the video processor uses:
/// - rescale and normalize are fused: `(x - mean * (1 / rescale)) / (std * (1 / rescale))`,
///   with `mean` and `std` as `f32` tensors scaled in `f32`;
/// - rescale alone is `x * f32(rescale)`; normalize alone is `(x - mean) / std` in `f32`.
///
/// The results differ from [`crate::to_pixel_values`] (NumPy's order: `f64` rescale, then
/// `f32` normalize) by about 1e-7.
pub fn to_pixel_values_torchvision(
    image: &RgbImage,
    rescale: Option<f64>,
    normalize: Option<&Normalize>,
) -> PixelValues {
    let (w, h) = (image.width() as usize, image.height() as usize);
    // Per channel: v = (x - sub) / div, or v = x * mul.
    enum Op {
        Affine { sub: [f32; 3], div: [f32; 3] },
        Scale(f32),
        Identity,
    }
    let op = match (rescale, normalize) {
        (Some(scale), Some(n)) => {
            let inverse = (1.0 / scale) as f32;
            Op::Affine {
                sub: n.mean.map(|m| m as f32 * inverse),
                div: n.std.map(|s| s as f32 * inverse),
            }
        }
        (None, Some(n)) => Op::Affine {
            sub: n.mean.map(|m| m as f32),
            div: n.std.map(|s| s as f32),
        },
        (Some(scale), None) => Op::Scale(scale as f32),
        (None, None) => Op::Identity,
    };
    let mut data = vec![0f32; 3 * h * w];
    for (x, y, p) in image.enumerate_pixels() {
        for (c, &v) in p.0.iter().enumerate() {
            let v = f32::from(v);
            data[(c * h + y as usize) * w + x as usize] = match &op {
                Op::Affine { sub, div } => (v - sub[c]) / div[c],
                Op::Scale(s) => v * s,
                Op::Identity => v,
            };
        }
    }
    PixelValues {
        data,
        shape: [3, h, w],
    }
}
