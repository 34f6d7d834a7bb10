//! Videos as decoded RGB frames: from a list of image files, or from an animated GIF decoded
//! the way `PIL.ImageSequence.Iterator(Image.open(path))` + `frame.convert("RGB")` sees it.
//! How GIF frames are composited is described on [`Video`].

use std::io::Cursor;
use std::num::NonZeroU64;
use std::path::Path;

use image::RgbImage;

use crate::error::{PreprocessError, Result};
use crate::load::{load_image_with_limits, DecodeLimits};

/// A video: RGB frames of one size, in display order, and its frame rate when known.
///
/// The fields are public; processors check the invariants again (same sizes, a positive finite
/// `fps`) and fail with an error rather than trusting them.
///
/// # GIF compositing
///
/// Pillow 13's `GifImagePlugin` (default `LOADING_STRATEGY`, `RGB_AFTER_FIRST`) is reproduced:
/// - frame 0 is a palette image: outside its rectangle the canvas holds palette entry 0, or
///   the frame's transparent index when it has one; its transparent pixels keep their palette
///   colour (Pillow's `convert("RGB")` ignores palette transparency);
/// - later frames are drawn over the previous canvas, their transparent pixels showing it;
/// - disposal is *sticky* (a frame whose control block says "unspecified" keeps the previous
///   frame's method); "restore to background" fills the frame's rectangle with the colour of
///   the transparent index (frame 0: its own; later frames: theirs) or, without one, of the
///   background index (0 when there is no global palette); "restore to previous" puts back
///   what the rectangle held before the frame was drawn;
/// - a palette that maps every index `i` to `(i, i, i)` makes Pillow decode in grayscale (`L`)
///   mode; the colours are the same, and background disposal then prefers frame 0's
///   transparent index, as Pillow does in that mode;
/// - indices past the end of a palette are black, except for disposal colours, which fall back
///   to palette entry 0 (Pillow's `_rgb`).
///
/// Known differences, all in files that well-formed encoders do not write: Pillow grows the
/// canvas when a frame extends past the logical screen (here: an error naming the frame); a
/// frame without a graphic control block resets the disposal to "keep" here instead of keeping
/// the previous method, and disposal codes 4-7 are ignored instead of acting like "restore to
/// previous"; a colour frame after a grayscale-palette first frame is decoded in colour here.
///
/// The video's frame rate is `frames / (sum of delays in seconds)`, `None` when every delay is
/// 0 (GIF delays are centiseconds; browsers' minimum-delay clamping is not applied).
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    /// The frames, all the same size.
    pub frames: Vec<RgbImage>,
    /// Frames per second of the source, if known. Sampling by fps needs it, and it sets the
    /// temporal scale Qwen2.5-VL's position ids use (transformers assumes 24 when unknown).
    pub fps: Option<f64>,
}

/// Limits applied while loading a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoLimits {
    /// Per-frame decoding limits (the canvas size of a GIF).
    pub frame: DecodeLimits,
    /// Most frames accepted; a GIF is refused as soon as frame `max_frames + 1` is met.
    pub max_frames: usize,
    /// Most pixels over all frames (`frames * width * height`): the decoded video takes 3 bytes
    /// per pixel. The default, 2^28, is 768 MiB of RGB.
    pub max_total_pixels: u64,
}

impl Default for VideoLimits {
    fn default() -> Self {
        Self {
            frame: DecodeLimits::default(),
            max_frames: 4096,
            max_total_pixels: 1 << 28,
        }
    }
}

impl Video {
    /// A video from decoded frames. Errors when the frames differ in size (naming the first
    /// that differs) or `fps` is not a positive finite number. Any number of frames is
    /// accepted here; processing needs at least 2.
    pub fn new(frames: Vec<RgbImage>, fps: Option<f64>) -> Result<Self> {
        let video = Self { frames, fps };
        video.validate("<frames>")?;
        Ok(video)
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when there are no frames.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// `(height, width)` of the frames (of frame 0), `None` without frames.
    pub fn frame_size(&self) -> Option<(u32, u32)> {
        self.frames.first().map(|f| (f.height(), f.width()))
    }

    /// Checks that every frame has frame 0's size and that `fps` is positive and finite.
    pub fn validate(&self, origin: &str) -> Result<()> {
        if let Some(fps) = self.fps {
            if !(fps.is_finite() && fps > 0.0) {
                return Err(PreprocessError::InvalidArgument {
                    name: "Video::fps",
                    expected: "a positive, finite frame rate",
                    found: fps.to_string(),
                });
            }
        }
        let Some(first) = self.frames.first() else {
            return Ok(());
        };
        for (index, frame) in self.frames.iter().enumerate() {
            if frame.dimensions() != first.dimensions() {
                return Err(PreprocessError::FrameSizeMismatch {
                    origin: origin.to_string(),
                    index,
                    width: first.width(),
                    height: first.height(),
                    found_width: frame.width(),
                    found_height: frame.height(),
                });
            }
        }
        Ok(())
    }

    /// Loads one image file per frame (any format [`crate::load_image`] reads, EXIF
    /// orientation applied), with the default [`VideoLimits`].
    pub fn from_frame_files<P: AsRef<Path>>(paths: &[P], fps: Option<f64>) -> Result<Self> {
        Self::from_frame_files_with_limits(paths, fps, &VideoLimits::default())
    }

    /// [`Video::from_frame_files`] with explicit limits. A frame whose size differs from the
    /// first frame's is an error naming its file and index.
    pub fn from_frame_files_with_limits<P: AsRef<Path>>(
        paths: &[P],
        fps: Option<f64>,
        limits: &VideoLimits,
    ) -> Result<Self> {
        if paths.len() > limits.max_frames {
            return Err(PreprocessError::VideoTooLarge {
                origin: "frame list".to_string(),
                what: format!("{} frame files", paths.len()),
                limit: limits.max_frames as u64,
            });
        }
        let mut frames: Vec<RgbImage> = Vec::with_capacity(paths.len());
        let mut total_pixels = 0u64;
        for (index, path) in paths.iter().enumerate() {
            let path = path.as_ref();
            let frame = load_image_with_limits(path, limits.frame)?;
            if let Some(first) = frames.first() {
                if frame.dimensions() != first.dimensions() {
                    return Err(PreprocessError::FrameSizeMismatch {
                        origin: path.display().to_string(),
                        index,
                        width: first.width(),
                        height: first.height(),
                        found_width: frame.width(),
                        found_height: frame.height(),
                    });
                }
            }
            total_pixels += u64::from(frame.width()) * u64::from(frame.height());
            if total_pixels > limits.max_total_pixels {
                return Err(PreprocessError::VideoTooLarge {
                    origin: path.display().to_string(),
                    what: format!("{total_pixels} pixels over {} frames", index + 1),
                    limit: limits.max_total_pixels,
                });
            }
            frames.push(frame);
        }
        let video = Self { frames, fps };
        video.validate("frame list")?;
        Ok(video)
    }

    /// Decodes an animated GIF file with the default [`VideoLimits`]; see the module docs for
    /// how frames are composited and the frame rate derived.
    pub fn from_gif(path: &Path) -> Result<Self> {
        Self::from_gif_with_limits(path, &VideoLimits::default())
    }

    /// [`Video::from_gif`] with explicit limits.
    pub fn from_gif_with_limits(path: &Path, limits: &VideoLimits) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| PreprocessError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        decode_gif(&bytes, &path.display().to_string(), limits)
    }

    /// Decodes an in-memory animated GIF.
    pub fn from_gif_bytes(bytes: &[u8], limits: &VideoLimits) -> Result<Self> {
        decode_gif(bytes, "<bytes>", limits)
    }
}

/// A GIF palette as Pillow holds it: `None` when absent or the identity grayscale ramp
/// (`GifImageFile._is_palette_needed` is false, and Pillow decodes in `L` mode).
fn real_palette(palette: Option<&[u8]>) -> Option<Vec<[u8; 3]>> {
    let palette = palette?;
    let entries: Vec<[u8; 3]> = palette
        .chunks_exact(3)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    let identity = entries
        .iter()
        .enumerate()
        .all(|(i, c)| usize::from(c[0]) == i && c[0] == c[1] && c[1] == c[2]);
    (!identity).then_some(entries)
}

/// `P -> RGB` conversion of one index: past the palette's end Pillow's palette is black.
fn convert_colour(palette: Option<&[[u8; 3]]>, index: u8) -> [u8; 3] {
    match palette {
        Some(p) => p.get(usize::from(index)).copied().unwrap_or([0; 3]),
        None => [index; 3],
    }
}

/// `GifImageFile._rgb`: the colour of a disposal fill; past the palette's end, entry 0.
fn dispose_colour(palette: Option<&[[u8; 3]]>, index: u8) -> [u8; 3] {
    match palette {
        Some(p) => p
            .get(usize::from(index))
            .or_else(|| p.first())
            .copied()
            .unwrap_or([0; 3]),
        None => [index; 3],
    }
}

/// A frame's rectangle on the canvas: `(left, top, width, height)`.
type Rect = (usize, usize, usize, usize);

/// What the next frame restores before it is drawn.
enum Dispose {
    Fill([u8; 3]),
    Restore(Vec<[u8; 3]>),
}

fn decode_gif(bytes: &[u8], origin: &str, limits: &VideoLimits) -> Result<Video> {
    if bytes.is_empty() {
        return Err(PreprocessError::EmptyInput {
            origin: origin.to_string(),
        });
    }
    let gif_err = |e: gif::DecodingError| PreprocessError::Decode {
        origin: origin.to_string(),
        source: image::ImageError::Decoding(image::error::DecodingError::new(
            image::ImageFormat::Gif.into(),
            e,
        )),
    };
    if !bytes.starts_with(b"GIF87a") && !bytes.starts_with(b"GIF89a") {
        return Err(PreprocessError::UnknownFormat {
            origin: format!("{origin} (expected an animated GIF)"),
            head: bytes.iter().take(8).copied().collect(),
        });
    }
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    // One byte per index: a frame larger than the canvas limit is refused by the decoder.
    options.set_memory_limit(gif::MemoryLimit::Bytes(
        NonZeroU64::new(limits.frame.max_pixels.max(1)).unwrap_or(NonZeroU64::MIN),
    ));
    let mut decoder = options.read_info(Cursor::new(bytes)).map_err(gif_err)?;
    let (width, height) = (usize::from(decoder.width()), usize::from(decoder.height()));
    let pixels = (width * height) as u64;
    if pixels > limits.frame.max_pixels {
        return Err(PreprocessError::TooManyPixels {
            origin: origin.to_string(),
            width: width as u32,
            height: height as u32,
            pixels,
            max_pixels: limits.frame.max_pixels,
        });
    }
    if pixels == 0 {
        return Err(PreprocessError::EmptyImage {
            origin: origin.to_string(),
            width: width as u32,
            height: height as u32,
        });
    }
    let global = real_palette(decoder.global_palette());
    // Pillow records the background index only with a global palette; the gif crate drops an
    // index past the palette's end, where Pillow's `_rgb` would use entry 0 anyway.
    let background = match decoder.global_palette() {
        Some(_) => decoder
            .bg_color()
            .and_then(|b| u8::try_from(b).ok())
            .unwrap_or(0),
        None => 0,
    };
    // Pillow's mode is decided by frame 0's palette: none (or the identity ramp) means `L`.
    let mut gray_mode: Option<bool> = None;
    let mut canvas: Vec<[u8; 3]> = Vec::new();
    let mut frames: Vec<RgbImage> = Vec::new();
    let mut pending: Option<(Rect, Dispose)> = None;
    let mut disposal = 0u8;
    let mut first_transparency: Option<u8> = None;
    let mut delay_cs_total = 0u64;

    while let Some(frame) = decoder.read_next_frame().map_err(gif_err)? {
        let index = frames.len();
        if index >= limits.max_frames {
            return Err(PreprocessError::VideoTooLarge {
                origin: origin.to_string(),
                what: format!("frame {}", index + 1),
                limit: limits.max_frames as u64,
            });
        }
        let total = (index as u64 + 1) * pixels;
        if total > limits.max_total_pixels {
            return Err(PreprocessError::VideoTooLarge {
                origin: origin.to_string(),
                what: format!("{total} pixels over {} frames", index + 1),
                limit: limits.max_total_pixels,
            });
        }
        let rect: Rect = (
            usize::from(frame.left),
            usize::from(frame.top),
            usize::from(frame.width),
            usize::from(frame.height),
        );
        let (left, top, fw, fh) = rect;
        if left + fw > width || top + fh > height {
            return Err(PreprocessError::InvalidArgument {
                name: "GIF frame",
                expected: "frames inside the logical screen",
                found: format!(
                    "{origin}: frame {index} covers x {left}..{} and y {top}..{} of a {width}x{height} screen",
                    left + fw,
                    top + fh
                ),
            });
        }
        if frame.buffer.len() < fw * fh {
            return Err(PreprocessError::InvalidArgument {
                name: "GIF frame",
                expected: "one palette index per pixel",
                found: format!(
                    "{origin}: frame {index} holds {} indices for {fw}x{fh} pixels",
                    frame.buffer.len()
                ),
            });
        }
        delay_cs_total += u64::from(frame.delay);
        let palette = match &frame.palette {
            Some(local) => real_palette(Some(local)),
            None => global.clone(),
        };
        let palette = palette.as_deref();
        let gray = *gray_mode.get_or_insert(palette.is_none());

        // The previous frame's disposal happens before anything else.
        if let Some(((l, t, w, h), dispose)) = pending.take() {
            for y in 0..h {
                let row = (t + y) * width + l;
                match &dispose {
                    Dispose::Fill(colour) => canvas[row..row + w].fill(*colour),
                    Dispose::Restore(saved) => {
                        canvas[row..row + w].copy_from_slice(&saved[y * w..(y + 1) * w])
                    }
                }
            }
        }
        let method = frame.dispose as u8;
        if method != 0 {
            disposal = method;
        }
        if index == 0 {
            first_transparency = frame.transparent;
            let fill = frame.transparent.unwrap_or(0);
            canvas = vec![convert_colour(palette, fill); width * height];
        }
        pending = match disposal {
            2 => {
                let colour_index = if gray {
                    first_transparency.or(frame.transparent)
                } else {
                    frame.transparent
                };
                let colour = match (colour_index, index) {
                    // Frame 0 is still a palette image: the fill goes through `convert`.
                    (Some(i), 0) => convert_colour(palette, i),
                    (Some(i), _) => dispose_colour(palette, i),
                    (None, 0) => convert_colour(palette, background),
                    (None, _) => dispose_colour(palette, background),
                };
                Some((rect, Dispose::Fill(colour)))
            }
            3 if index > 0 => {
                let mut saved = Vec::with_capacity(fw * fh);
                for y in 0..fh {
                    let row = (top + y) * width + left;
                    saved.extend_from_slice(&canvas[row..row + fw]);
                }
                Some((rect, Dispose::Restore(saved)))
            }
            3 => frame
                .transparent
                .map(|i| (rect, Dispose::Fill(convert_colour(palette, i)))),
            _ => None,
        };
        // Frame 0 writes every index (its transparency is kept as palette colour); later
        // frames let the canvas show through their transparent pixels.
        let skip = if index == 0 { None } else { frame.transparent };
        for y in 0..fh {
            let src = &frame.buffer[y * fw..(y + 1) * fw];
            let row = (top + y) * width + left;
            for (slot, &i) in canvas[row..row + fw].iter_mut().zip(src) {
                if Some(i) != skip {
                    *slot = convert_colour(palette, i);
                }
            }
        }
        let rgb: Vec<u8> = canvas.iter().flat_map(|p| p.iter().copied()).collect();
        let image = RgbImage::from_raw(width as u32, height as u32, rgb).ok_or(
            PreprocessError::EmptyImage {
                origin: format!("{origin}: frame {index} buffer"),
                width: width as u32,
                height: height as u32,
            },
        )?;
        frames.push(image);
    }
    let fps =
        (delay_cs_total > 0).then(|| frames.len() as f64 / (delay_cs_total as f64 * 10.0 / 1000.0));
    let video = Video { frames, fps };
    video.validate(origin)?;
    Ok(video)
}
