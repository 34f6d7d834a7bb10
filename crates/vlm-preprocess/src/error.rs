//! The crate's single error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading a config, decoding an image or preprocessing it.
///
/// Each message says what was expected, what was found and where (a file path, the
/// string `<bytes>` for in-memory input, or the config field).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreprocessError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The input holds no bytes at all.
    #[error("{origin}: expected an image, found an empty (0-byte) input")]
    EmptyInput {
        /// Where the bytes came from.
        origin: String,
    },
    /// The first bytes match no supported image format.
    #[error(
        "{origin}: expected a PNG, JPEG, GIF, WebP, BMP or TIFF image, found bytes starting with {head:02x?}"
    )]
    UnknownFormat {
        /// Where the bytes came from.
        origin: String,
        /// Up to the first 8 bytes of the input.
        head: Vec<u8>,
    },
    /// The decoder rejected the data (corrupt or truncated file).
    #[error("{origin}: cannot decode image: {source}")]
    Decode {
        /// Where the bytes came from.
        origin: String,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// The header announces more pixels than [`crate::DecodeLimits::max_pixels`]; nothing was decoded.
    #[error(
        "{origin}: image header claims {width}x{height} = {pixels} pixels, more than the limit of {max_pixels} pixels (raise DecodeLimits::max_pixels to accept it)"
    )]
    TooManyPixels {
        /// Where the bytes came from.
        origin: String,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// `width * height`.
        pixels: u64,
        /// The configured limit.
        max_pixels: u64,
    },
    /// An image (decoded or requested) with a zero dimension.
    #[error("{origin}: expected an image of at least 1x1 pixels, found {width}x{height}")]
    EmptyImage {
        /// Where the image came from or which step produced the size.
        origin: String,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// A decoded pixel format this crate cannot map onto Pillow's RGB conversion.
    #[error("{origin}: cannot convert pixel format {color} to RGB the way Pillow does (supported: 8- and 16-bit L, LA, RGB, RGBA, palette)")]
    UnsupportedColor {
        /// Where the image came from.
        origin: String,
        /// The decoder's colour type.
        color: String,
    },
    /// Neither config file exists in a directory.
    #[error("no image processor config in {dir}: looked for {}", looked_for.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and "))]
    ConfigNotFound {
        /// The directory searched.
        dir: PathBuf,
        /// The files looked for, in priority order.
        looked_for: Vec<PathBuf>,
    },
    /// A config file is not valid JSON of the expected shape.
    #[error("{origin}: invalid image processor config: {source}")]
    ConfigJson {
        /// The config file (or `<json>`).
        origin: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// `image_processor_type` names a processor this crate does not implement.
    #[error("unknown image_processor_type {found:?}; supported: {}", supported.join(", "))]
    UnknownProcessorType {
        /// The value found in the config.
        found: String,
        /// The supported names.
        supported: Vec<&'static str>,
    },
    /// `resample` is not one of Pillow's filters this crate implements.
    #[error("unknown resample {found}; supported: 0 (nearest), 1 (lanczos), 2 (bilinear), 3 (bicubic), 4 (box), 5 (hamming)")]
    UnknownResample {
        /// The value found in the config.
        found: String,
    },
    /// A config field has a value of the wrong shape or range.
    #[error("config field `{field}`: expected {expected}, found {found}")]
    InvalidConfig {
        /// The JSON key.
        field: &'static str,
        /// What is accepted.
        expected: &'static str,
        /// What was found (JSON text).
        found: String,
    },
    /// An argument passed through the API is out of range.
    #[error("{name}: expected {expected}, found {found}")]
    InvalidArgument {
        /// The argument (or pair of arguments).
        name: &'static str,
        /// What is accepted.
        expected: &'static str,
        /// What was found.
        found: String,
    },
    /// Qwen2-VL's `smart_resize` refuses images this elongated.
    #[error("a {width}x{height} image has an aspect ratio of {ratio}, more than the limit of {limit} that Qwen2-VL's smart_resize accepts")]
    AspectRatio {
        /// Height in pixels.
        height: u32,
        /// Width in pixels.
        width: u32,
        /// `max(height, width) / min(height, width)`.
        ratio: f64,
        /// The limit (200).
        limit: f64,
    },
    /// An image whose sides are not multiples of the patch grid (resizing was turned off).
    #[error("a {width}x{height} image cannot be cut into patches: both sides must be multiples of patch_size * merge_size = {factor} (turn do_resize on)")]
    NotPatchAligned {
        /// Height in pixels.
        height: u32,
        /// Width in pixels.
        width: u32,
        /// `patch_size * merge_size`.
        factor: u32,
    },
    /// A video with fewer frames than processing needs.
    #[error("{origin}: a video needs at least {needed} frames, found {found}; process a single frame as an image")]
    VideoTooShort {
        /// Where the video came from.
        origin: String,
        /// Frames found.
        found: usize,
        /// Frames needed.
        needed: usize,
    },
    /// A video frame whose size differs from the first frame's.
    #[error("{origin}: frame {index} is {found_width}x{found_height}, but frame 0 is {width}x{height}; all frames of a video must have the same size")]
    FrameSizeMismatch {
        /// The frame's file, or the video it belongs to.
        origin: String,
        /// Index of the offending frame.
        index: usize,
        /// Width of frame 0.
        width: u32,
        /// Height of frame 0.
        height: u32,
        /// Width of the offending frame.
        found_width: u32,
        /// Height of the offending frame.
        found_height: u32,
    },
    /// A video with more frames (or more pixels over all frames) than the configured limits.
    #[error("{origin}: {what} exceeds the limit of {limit} (raise VideoLimits to accept it)")]
    VideoTooLarge {
        /// Where the video came from.
        origin: String,
        /// What was counted, e.g. "frame 2049" or "1,234,567 pixels over 40 frames".
        what: String,
        /// The configured limit.
        limit: u64,
    },
    /// Frame sampling cannot produce the requested frames (transformers raises here too).
    #[error("cannot sample frames from a video of {total_frames} frames: {reason}")]
    FrameSampling {
        /// Frames in the video.
        total_frames: usize,
        /// What went wrong, with the values involved.
        reason: String,
    },
    /// The views of an anyres image (base view and tiles) came out of the per-view steps with
    /// different shapes, so they cannot be stacked (transformers fails here too). Happens only
    /// with `do_resize` and `do_center_crop` off and pinpoints that are not tile multiples.
    #[error("anyres view {index} has shape {found:?} but view 0 has {expected:?}; turn do_resize or do_center_crop on, or use image_grid_pinpoints that are multiples of the tile size")]
    RaggedViews {
        /// Index of the offending view (0 is the base view).
        index: usize,
        /// `[channels, height, width]` of view 0.
        expected: [usize; 3],
        /// `[channels, height, width]` of the offending view.
        found: [usize; 3],
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, PreprocessError>;
