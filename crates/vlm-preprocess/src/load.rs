//! Decoding an image file into RGB the way the Python reference gets it:
//! `PIL.Image.open(path)`, `PIL.ImageOps.exif_transpose`, then transformers'
//! `convert_to_rgb` (`transformers/image_transforms.py`).
//!
//! `convert_to_rgb` alpha-composites anything with an alpha band or a `transparency` entry over
//! opaque white (`Image.alpha_composite`, integer arithmetic with 7 extra bits) and then drops
//! alpha; other modes go through `Image.convert("RGB")`. Pillow's decoders also shape the result:
//! - 16-bit RGB/RGBA PNGs are opened as 8-bit `RGB`/`RGBA` keeping the **high byte** of each
//!   sample;
//! - 16-bit grayscale PNGs are opened as `I;16`, and `I;16 -> RGB` **clips** at 255 instead of
//!   scaling, so most of a 16-bit grayscale photograph turns white. This is reproduced.
//!
//! Palette and transparent-colour (`tRNS`) images are expanded by the decoder to RGBA, which
//! yields the same pixels as Pillow's `P -> RGBA` / `RGB -> RGBA` conversions.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

use crate::error::{PreprocessError, Result};

/// Limits applied before and while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`, checked against the header before any pixel data is
    /// decoded. The default, 178 956 970, is twice Pillow's `MAX_IMAGE_PIXELS`: the point where
    /// Pillow raises `DecompressionBombError`.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 178_956_970,
        }
    }
}

/// Reads and decodes an image file with the default [`DecodeLimits`].
///
/// The EXIF orientation is applied and the pixels converted to RGB like Pillow +
/// transformers' `convert_to_rgb`. Errors name the path.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    load_image_with_limits(path, DecodeLimits::default())
}

/// [`load_image`] with explicit limits.
pub fn load_image_with_limits(path: &Path, limits: DecodeLimits) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|source| PreprocessError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes, &path.display().to_string(), limits)
}

/// Decodes an in-memory image file (PNG, JPEG, GIF, WebP, BMP, TIFF) with the default limits.
pub fn load_image_from_bytes(bytes: &[u8]) -> Result<RgbImage> {
    decode(bytes, "<bytes>", DecodeLimits::default())
}

/// [`load_image_from_bytes`] with explicit limits.
pub fn load_image_from_bytes_with_limits(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage> {
    decode(bytes, "<bytes>", limits)
}

fn decode(bytes: &[u8], origin: &str, limits: DecodeLimits) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(PreprocessError::EmptyInput {
            origin: origin.to_string(),
        });
    }
    let decode_err = |source| PreprocessError::Decode {
        origin: origin.to_string(),
        source,
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(image::ImageError::IoError(e)))?;
    if reader.format().is_none() {
        return Err(PreprocessError::UnknownFormat {
            origin: origin.to_string(),
            head: bytes.iter().take(8).copied().collect(),
        });
    }
    let mut decoder_limits = Limits::default();
    // Up to 8 bytes per pixel (RGBA16) plus decoder scratch; never below the crate default.
    let wanted = limits.max_pixels.saturating_mul(10);
    decoder_limits.max_alloc = Some(wanted.max(512 * 1024 * 1024));
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(PreprocessError::TooManyPixels {
            origin: origin.to_string(),
            width,
            height,
            pixels,
            max_pixels: limits.max_pixels,
        });
    }
    if pixels == 0 {
        return Err(PreprocessError::EmptyImage {
            origin: origin.to_string(),
            width,
            height,
        });
    }
    let orientation = decoder.orientation().map_err(decode_err)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    image.apply_orientation(orientation);
    to_rgb(image, origin)
}

/// `Image.alpha_composite(white, src)` followed by `.convert("RGB")`, one channel.
///
/// Pillow's integer formula with an opaque white destination: `coef1 = a * 128`,
/// `coef2 = (255 - a) * 128`, then a rounded division by 255 done with shifts.
#[inline]
fn over_white(value: u8, alpha: u8) -> u8 {
    if alpha == 0 {
        return 255;
    }
    let (v, a) = (u32::from(value), u32::from(alpha));
    let tmp = (v * a + 255 * (255 - a)) * 128 + (0x80 << 7);
    let div255 = ((tmp >> 8) + tmp) >> 8;
    (div255 >> 7) as u8
}

/// Converts a decoded image to 8-bit RGB with Pillow's (and transformers') rules; see the
/// module docs. `origin` names the image in errors.
pub fn to_rgb(image: DynamicImage, origin: &str) -> Result<RgbImage> {
    let image = match image {
        DynamicImage::ImageRgb8(rgb) => return Ok(rgb),
        other => other,
    };
    let (w, h) = (image.width(), image.height());
    let from_fn =
        |f: &dyn Fn(u32, u32) -> [u8; 3]| RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    Ok(match &image {
        DynamicImage::ImageRgba8(im) => from_fn(&|x, y| {
            let [r, g, b, a] = im.get_pixel(x, y).0;
            [over_white(r, a), over_white(g, a), over_white(b, a)]
        }),
        DynamicImage::ImageLuma8(im) => from_fn(&|x, y| [im.get_pixel(x, y).0[0]; 3]),
        DynamicImage::ImageLumaA8(im) => from_fn(&|x, y| {
            let [l, a] = im.get_pixel(x, y).0;
            [over_white(l, a); 3]
        }),
        // Pillow opens these as I;16 and clips to 255 when converting to RGB.
        DynamicImage::ImageLuma16(im) => {
            from_fn(&|x, y| [im.get_pixel(x, y).0[0].min(255) as u8; 3])
        }
        // Pillow's 16-bit unpackers (RGB;16B, RGBA;16B, LA;16B) keep the high byte.
        DynamicImage::ImageLumaA16(im) => from_fn(&|x, y| {
            let [l, a] = im.get_pixel(x, y).0;
            [over_white((l >> 8) as u8, (a >> 8) as u8); 3]
        }),
        DynamicImage::ImageRgb16(im) => from_fn(&|x, y| {
            let [r, g, b] = im.get_pixel(x, y).0;
            [(r >> 8) as u8, (g >> 8) as u8, (b >> 8) as u8]
        }),
        DynamicImage::ImageRgba16(im) => from_fn(&|x, y| {
            let [r, g, b, a] = im.get_pixel(x, y).0;
            let a = (a >> 8) as u8;
            [
                over_white((r >> 8) as u8, a),
                over_white((g >> 8) as u8, a),
                over_white((b >> 8) as u8, a),
            ]
        }),
        other => {
            return Err(PreprocessError::UnsupportedColor {
                origin: origin.to_string(),
                color: format!("{:?}", other.color()),
            })
        }
    })
}
