//! Qwen2-VL and Qwen2.5-VL preprocessing: images and videos into flattened vision patches.
//!
//! ```
//! use vlm_preprocess::image::RgbImage;
//! use vlm_preprocess::qwen2vl::{FrameSampling, Qwen2VlImageProcessor, Qwen2VlVideoProcessor};
//! use vlm_preprocess::Video;
//!
//! # fn main() -> Result<(), vlm_preprocess::PreprocessError> {
//! // Usually `Qwen2VlImageProcessor::from_dir(model_dir)?`.
//! let images = Qwen2VlImageProcessor::default().with_pixel_bounds(28 * 28, 56 * 56)?;
//! let photo = RgbImage::from_fn(123, 77, |x, y| image::Rgb([x as u8, y as u8, 7]));
//! let patches = images.process(&photo)?;
//! assert_eq!(patches.grid_thw, [1, 2, 4]); // smart_resize: 77x123 -> 28x56
//! assert_eq!(patches.patch_dim, 3 * 2 * 14 * 14);
//! assert_eq!(images.num_image_tokens(77, 123)?, 2); // grid product / merge_size^2
//!
//! let frames = (0..5).map(|i| RgbImage::from_pixel(56, 28, image::Rgb([i * 40, 0, 0]))).collect();
//! let video = Video::new(frames, Some(10.0))?;
//! let videos = Qwen2VlVideoProcessor::default().with_pixel_bounds(28 * 28, 56 * 56)?;
//! let out = videos.process_with(&video, FrameSampling::NumFrames(4))?;
//! assert_eq!(out.frame_indices, [0, 1, 2, 3]);
//! assert_eq!(out.patches.grid_thw, [2, 2, 4]);
//! assert_eq!(out.second_per_grid_t, 2.0 / (4.0 / 5.0 * 10.0));
//! # Ok(())
//! # }
//! ```
//!
//! # Reference
//!
//! transformers 5.23: `Qwen2VLImageProcessorPil` (`models/qwen2_vl/image_processing_pil_qwen2_vl.py`)
//! for images and `Qwen2VLVideoProcessor` (`models/qwen2_vl/video_processing_qwen2_vl.py`,
//! `video_processing_utils.py`, `video_utils.py`) for videos; `Qwen2VLProcessor` /
//! `Qwen2_5_VLProcessor` for token counts and `second_per_grid_ts`. Qwen2.5-VL checkpoints use
//! the same two processor classes.
//!
//! # Pipeline
//!
//! 1. [`smart_resize`] picks a size whose sides are multiples of `patch_size * merge_size`
//!    (28) with about `min_pixels..=max_pixels` pixels; images below `min_pixels` are
//!    **upsized**, as in the reference ([`smart_resize_detailed`] tells).
//! 2. Pillow's bicubic resize ([`crate::resize()`]), then rescale and normalize with the
//!    OpenAI CLIP mean/std.
//! 3. Patchify into [`Patches`]: an image is repeated `temporal_patch_size` (2) times, a video's
//!    sampled frames are padded to a multiple of it by repeating the last frame.
//!
//! # Data layout
//!
//! `Patches::data` is `[num_patches, patch_dim]`, row-major. Rows run over temporal groups,
//! then 2x2 merge windows in raster order, then the 4 patches of a window in raster order, so
//! each run of `merge_size^2` rows is one LLM token. Columns run over channel, frame within the
//! temporal group, pixel row, pixel column: `3 * 2 * 14 * 14 = 1176` values. `grid_thw` is
//! `[temporal groups, patch rows, patch columns]`; an image has 1 temporal group and becomes
//! `grid_h * grid_w / 4` `<|image_pad|>` tokens.
//!
//! # Videos and torchvision
//!
//! transformers has no Pillow video processor: `Qwen2VLVideoProcessor` resizes `uint8` frame
//! tensors with `torchvision.transforms.v2.functional.resize(..., BICUBIC, antialias=True)`,
//! which on CPU runs torch's native `uint8` anti-aliased bicubic kernel (no float round trip),
//! and it rescales and normalizes in one fused `f32` step. Here frames are resized with
//! Pillow's filter, like images (what the model saw in training for images), and the fused
//! arithmetic is reproduced ([`to_pixel_values_torchvision`]). When `smart_resize` returns the
//! frame's own size, torchvision returns the tensor untouched and so does [`crate::resize()`],
//! and the output is bit-identical to transformers. When frames are resized, the two kernels
//! differ. Measured on the fixture videos (`tests/scripts/qwen2vl_preprocess_fixtures.py`,
//! checked again by `tests/qwen2vl/`): the resized `uint8` frames differ by at most 1 level,
//! on 19.8% of values when 37x47 frames are resized to 28x56 (torch's `uint8` kernel rounds
//! differently when upscaling a side) and on 0.03% when 28x56 frames are halved to 28x28; in
//! `pixel_values_videos` that is at most 0.0150 (one level / 255 / std).
//!
//! Videos also differ from transformers in two deliberate ways: a video of a single frame is an
//! error (transformers pads it to a 2-frame clip; process it as an image), and sampling requests
//! transformers crashes on (an `IndexError` from `torch.arange` producing one index too many,
//! `do_sample_frames` without `num_frames` or `fps`) are errors with a message.
//!
//! # Frame rate and `second_per_grid_ts`
//!
//! `Qwen2_5_VLProcessor` sets `second_per_grid_ts = temporal_patch_size / sampled_fps`, where
//! `sampled_fps = len(frames_indices) / total_num_frames * fps` when the video's fps is known
//! and **24** when it is not, even after sampling. A video given as a list of frames has no fps
//! unless the caller passes `video_metadata`; [`crate::Video::fps`] plays that role here.

mod config;
mod image;
mod patches;
mod sampling;
mod smart_resize;
mod video;

pub use self::config::{Qwen2VlConfig, VIDEO_PREPROCESSOR_CONFIG_FILE};
pub use self::image::Qwen2VlImageProcessor;
pub use self::patches::Patches;
pub use self::sampling::FrameSampling;
pub use self::smart_resize::{
    smart_resize, smart_resize_detailed, ResizeBranch, SmartResize, MAX_ASPECT_RATIO,
};
pub use self::video::{
    to_pixel_values_torchvision, ProcessedVideo, Qwen2VlVideoProcessor, DEFAULT_MAX_VIDEO_TOKENS,
    DEFAULT_VIDEO_FPS,
};
