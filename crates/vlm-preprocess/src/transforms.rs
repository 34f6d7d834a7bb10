//! The small transforms a processor chains, each matching its transformers counterpart in
//! `transformers/image_transforms.py` (NumPy, channels-first there; `RgbImage` here until
//! [`to_pixel_values`]).

use image::{Rgb, RgbImage};

use crate::config::Extent;
use crate::error::{PreprocessError, Result};

/// Preprocessed pixels: `f32`, channels first, shape `[channels, height, width]`, row-major
/// (`data[(c * height + y) * width + x]`). This is one item of transformers' `pixel_values`
/// batch; stack several along a new leading axis to build a batch tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    /// The values, `shape[0] * shape[1] * shape[2]` of them.
    pub data: Vec<f32>,
    /// `[channels, height, width]`.
    pub shape: [usize; 3],
}

impl PixelValues {
    /// Number of channels (3).
    pub fn channels(&self) -> usize {
        self.shape[0]
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.shape[1]
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.shape[2]
    }

    /// The value at channel `c`, row `y`, column `x`, if in range.
    pub fn get(&self, c: usize, y: usize, x: usize) -> Option<f32> {
        let [cs, h, w] = self.shape;
        (c < cs && y < h && x < w)
            .then(|| self.data.get((c * h + y) * w + x).copied())
            .flatten()
    }
}

/// Per-channel normalisation `(x - mean) / std`, computed in `f32` like transformers'
/// `normalize` (which casts mean and std to the image's `float32` dtype).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    /// Channel means (R, G, B).
    pub mean: [f64; 3],
    /// Channel standard deviations (R, G, B).
    pub std: [f64; 3],
}

/// Output `(height, width)` of a shortest-edge resize: transformers'
/// `get_resize_output_image_size(image, size, default_to_square=False)`.
///
/// The long side is `int(size * long / short)` (truncated), computed in `f64` as Python does.
pub fn shortest_edge_size(height: u32, width: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u32;
    if width <= height {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// transformers' `center_crop`: crops to `size`, padding with zeros (black) where the crop
/// extends past the image; the padded image is centred with the larger half of the padding at
/// the top/left (`ceil`), the crop window offset by `floor((orig - crop) / 2)`.
pub fn center_crop(image: &RgbImage, size: Extent) -> Result<RgbImage> {
    let (ow, oh) = image.dimensions();
    if size.width == 0 || size.height == 0 {
        return Err(PreprocessError::EmptyImage {
            origin: "center_crop size".to_string(),
            width: size.width,
            height: size.height,
        });
    }
    let (oh_i, ow_i) = (i64::from(oh), i64::from(ow));
    let top = (oh_i - i64::from(size.height)).div_euclid(2);
    let left = (ow_i - i64::from(size.width)).div_euclid(2);
    // transformers pads to max(crop, orig) with ceil(diff / 2) zeros before the image, shifts the
    // window by the same amount and slices; the pad and the shift cancel, so output (x, y) is
    // image (left + x, top + y), or zero outside the image.
    Ok(RgbImage::from_fn(size.width, size.height, |x, y| {
        let sy = top + i64::from(y);
        let sx = left + i64::from(x);
        if (0..oh_i).contains(&sy) && (0..ow_i).contains(&sx) {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            Rgb([0, 0, 0])
        }
    }))
}

/// LLaVA's `pad_to_square`: pads the shorter side on both sides (the extra pixel of an odd
/// difference goes after the image) to a square filled with `background`.
pub fn pad_to_square(image: &RgbImage, background: [u8; 3]) -> RgbImage {
    let (w, h) = image.dimensions();
    if w == h {
        return image.clone();
    }
    let side = w.max(h);
    let mut out = RgbImage::from_pixel(side, side, Rgb(background));
    let (dx, dy) = if w > h {
        (0, (side - h) / 2)
    } else {
        ((side - w) / 2, 0)
    };
    for (x, y, p) in image.enumerate_pixels() {
        out.put_pixel(x + dx, y + dy, *p);
    }
    out
}

/// LLaVA's padding colour: `tuple(int(m * 255) for m in image_mean)`, truncated toward zero.
pub fn mean_background(mean: [f64; 3]) -> Result<[u8; 3]> {
    let mut out = [0u8; 3];
    for (slot, m) in out.iter_mut().zip(mean) {
        let v = (m * 255.0).trunc();
        if !(0.0..=255.0).contains(&v) {
            return Err(PreprocessError::InvalidConfig {
                field: "image_mean",
                expected: "values in [0, 1] (LLaVA pads with int(mean * 255) as uint8)",
                found: format!("{mean:?}"),
            });
        }
        *slot = v as u8;
    }
    Ok(out)
}

/// Converts to channels-first `f32`, then transformers' `rescale` (`f64` multiply, cast to
/// `f32`) and `normalize` (in `f32`), each only if given.
pub fn to_pixel_values(
    image: &RgbImage,
    rescale: Option<f64>,
    normalize: Option<&Normalize>,
) -> PixelValues {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut data = vec![0f32; 3 * h * w];
    let norm = normalize.map(|n| (n.mean.map(|m| m as f32), n.std.map(|s| s as f32)));
    for (x, y, p) in image.enumerate_pixels() {
        for c in 0..3 {
            let v = p.0[c];
            let mut f = match rescale {
                Some(scale) => (f64::from(v) * scale) as f32,
                None => f32::from(v),
            };
            if let Some((mean, std)) = &norm {
                f = (f - mean[c]) / std[c];
            }
            data[(c * h + y as usize) * w + x as usize] = f;
        }
    }
    PixelValues {
        data,
        shape: [3, h, w],
    }
}

/// The generic `pad` of transformers' Pillow backend: zeros appended at the bottom and right up
/// to `size`. Errors if the image is larger than `size`.
pub fn pad_bottom_right(pixels: &PixelValues, size: Extent) -> Result<PixelValues> {
    let [c, h, w] = pixels.shape;
    let (th, tw) = (size.height as usize, size.width as usize);
    if th < h || tw < w {
        return Err(PreprocessError::InvalidConfig {
            field: "pad_size",
            expected: "a size at least as large as the processed image",
            found: format!("{th}x{tw} for an image of {h}x{w}"),
        });
    }
    let mut data = vec![0f32; c * th * tw];
    for ci in 0..c {
        for y in 0..h {
            let src = &pixels.data[(ci * h + y) * w..(ci * h + y + 1) * w];
            data[(ci * th + y) * tw..(ci * th + y) * tw + w].copy_from_slice(src);
        }
    }
    Ok(PixelValues {
        data,
        shape: [c, th, tw],
    })
}
