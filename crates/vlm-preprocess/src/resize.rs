//! Pillow's `Image.resize` for 8-bit RGB images, bit-exact.
//!
//! Specification: Pillow's `src/libImaging/Resample.c` (convolution filters) and
//! `src/libImaging/Geometry.c::ImagingScaleAffine` (NEAREST, reached through `_imaging.c`'s
//! `resize` as an affine transform). The convolution is separable: a horizontal pass over only
//! the source rows the vertical pass needs, then a vertical pass. Coefficients are computed in
//! `f64`, normalised to sum 1, then quantised to fixed point with 22 fractional bits; sums run
//! in 32-bit integers starting from one half, and are clipped to 0..=255 after the shift.
//! Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
//! pixels as the width (`ImagingResampleInner`); that order is reproduced because it changes
//! the rounding of the intermediate image.

use image::RgbImage;

use crate::config::Resample;
use crate::error::{PreprocessError, Result};

/// Fractional bits of the fixed-point coefficients (`32 - 8 - 2` in Pillow).
const PRECISION_BITS: u32 = 22;

fn filter_support(filter: Resample) -> f64 {
    match filter {
        Resample::Box => 0.5,
        Resample::Bilinear | Resample::Hamming => 1.0,
        Resample::Bicubic => 2.0,
        Resample::Lanczos => 3.0,
        // Not a convolution; never asked for.
        Resample::Nearest => 0.0,
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

fn filter_weight(filter: Resample, x: f64) -> f64 {
    match filter {
        Resample::Box => {
            if x > -0.5 && x <= 0.5 {
                1.0
            } else {
                0.0
            }
        }
        Resample::Bilinear => {
            let x = x.abs();
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        }
        Resample::Hamming => {
            let x = x.abs();
            if x == 0.0 {
                1.0
            } else if x >= 1.0 {
                0.0
            } else {
                let x = x * std::f64::consts::PI;
                // Pillow writes these constants as C `float` literals (0.54f, 0.46f).
                x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
            }
        }
        Resample::Bicubic => {
            const A: f64 = -0.5;
            let x = x.abs();
            if x < 1.0 {
                ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * A
            } else {
                0.0
            }
        }
        Resample::Lanczos => {
            if (-3.0..3.0).contains(&x) {
                sinc(x) * sinc(x / 3.0)
            } else {
                0.0
            }
        }
        Resample::Nearest => 0.0,
    }
}

/// Fixed-point filter taps for one axis: for output index `i`, the source window starts at
/// `bounds[i].0`, has `bounds[i].1` taps, stored at `coeffs[i * ksize..]`.
struct Taps {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    coeffs: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the full box `0..in_size`.
fn precompute_taps(in_size: u32, out_size: u32, filter: Resample) -> Taps {
    // Pillow's box is `float[4]`; `(double)(in1 - in0)` is the float difference widened.
    let scale = f64::from(in_size as f32 - 0.0f32) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = filter_support(filter) * filterscale;
    let ksize = (support.ceil() as usize) * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut coeffs = vec![0i32; out_size as usize * ksize];
    let mut weights = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size as usize {
        let center = 0.0 + (xx as f64 + 0.5) * scale;
        // C `(int)` casts truncate toward zero, as Rust's `as` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
        let count = (xmax - xmin).max(0) as usize;
        let count = count.min(ksize);
        let mut ww = 0.0;
        for (x, w) in weights.iter_mut().enumerate().take(count) {
            let v = filter_weight(filter, ((x as i64 + xmin) as f64 - center + 0.5) * ss);
            *w = v;
            ww += v;
        }
        let row = &mut coeffs[xx * ksize..xx * ksize + ksize];
        for (slot, w) in row.iter_mut().zip(weights.iter()).take(count) {
            let k = if ww != 0.0 { w / ww } else { *w };
            let scaled = k * f64::from(1u32 << PRECISION_BITS);
            *slot = if k < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin as usize, count));
    }
    Taps {
        ksize,
        bounds,
        coeffs,
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over rows `row0..row0 + rows` of `src` (RGB, `width` pixels wide).
fn resample_horizontal(src: &[u8], width: usize, row0: usize, rows: usize, taps: &Taps) -> Vec<u8> {
    let out_w = taps.bounds.len();
    let mut out = vec![0u8; out_w * rows * 3];
    for y in 0..rows {
        let line = &src[(row0 + y) * width * 3..(row0 + y + 1) * width * 3];
        let out_line = &mut out[y * out_w * 3..(y + 1) * out_w * 3];
        for (xx, &(xmin, count)) in taps.bounds.iter().enumerate() {
            let k = &taps.coeffs[xx * taps.ksize..xx * taps.ksize + count];
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = &line[(xmin + x) * 3..(xmin + x) * 3 + 3];
                for c in 0..3 {
                    acc[c] = acc[c].wrapping_add(i32::from(p[c]).wrapping_mul(kx));
                }
            }
            for c in 0..3 {
                out_line[xx * 3 + c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// Vertical pass; `row_offset` is subtracted from the tap bounds (rows skipped by the
/// horizontal pass).
fn resample_vertical(src: &[u8], width: usize, row_offset: usize, taps: &Taps) -> Vec<u8> {
    let out_h = taps.bounds.len();
    let stride = width * 3;
    let mut out = vec![0u8; out_h * stride];
    for (yy, &(ymin, count)) in taps.bounds.iter().enumerate() {
        let k = &taps.coeffs[yy * taps.ksize..yy * taps.ksize + count];
        let ymin = ymin - row_offset;
        let out_line = &mut out[yy * stride..(yy + 1) * stride];
        for (i, slot) in out_line.iter_mut().enumerate() {
            let mut acc = 1i32 << (PRECISION_BITS - 1);
            for (y, &ky) in k.iter().enumerate() {
                acc = acc.wrapping_add(i32::from(src[(ymin + y) * stride + i]).wrapping_mul(ky));
            }
            *slot = clip8(acc);
        }
    }
    out
}

/// Pillow's NEAREST resize (`ImagingScaleAffine` with `a = [w_in/w_out, 0, 0, 0, h_in/h_out, 0]`).
fn resize_nearest(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = image.dimensions();
    let a0 = f64::from(in_w as f32 - 0.0f32) / f64::from(width);
    let a4 = f64::from(in_h as f32 - 0.0f32) / f64::from(height);
    // COORD(v) = v < 0 ? -1 : (int)v, and the position is accumulated by repeated addition.
    let coord = |v: f64| if v < 0.0 { -1 } else { v as i64 };
    let mut xintab = Vec::with_capacity(width as usize);
    let mut xo = 0.0 + a0 * 0.5;
    for _ in 0..width {
        let xin = coord(xo);
        xintab.push((xin >= 0 && xin < i64::from(in_w)).then_some(xin as u32));
        xo += a0;
    }
    let mut out = RgbImage::new(width, height);
    let mut yo = 0.0 + a4 * 0.5;
    for y in 0..height {
        let yi = coord(yo);
        if yi >= 0 && yi < i64::from(in_h) {
            for (x, xin) in xintab.iter().enumerate() {
                if let Some(xin) = xin {
                    out.put_pixel(x as u32, y, *image.get_pixel(*xin, yi as u32));
                }
            }
        }
        yo += a4;
    }
    out
}

/// Resizes an RGB image to `width` x `height` exactly as Pillow's `Image.resize(size, filter)`
/// does for a mode-`"RGB"` image (no `box`, no `reducing_gap`).
///
/// A same-size resize returns a copy, as Pillow does. Errors on a zero target size.
pub fn resize(image: &RgbImage, width: u32, height: u32, filter: Resample) -> Result<RgbImage> {
    let (in_w, in_h) = image.dimensions();
    if width == 0 || height == 0 {
        return Err(PreprocessError::EmptyImage {
            origin: "resize target".to_string(),
            width,
            height,
        });
    }
    if in_w == 0 || in_h == 0 {
        return Err(PreprocessError::EmptyImage {
            origin: "resize input".to_string(),
            width: in_w,
            height: in_h,
        });
    }
    if (in_w, in_h) == (width, height) {
        return Ok(image.clone());
    }
    if filter == Resample::Nearest {
        return Ok(resize_nearest(image, width, height));
    }
    let need_horizontal = width != in_w;
    let need_vertical = height != in_h;
    // Pillow 13: "if height is being scaled down more than twice the amount the width is, run
    // the vertical pass first". The pass order changes the rounding of the intermediate image.
    let (dy, dx) = (
        i64::from(in_h) - i64::from(height),
        i64::from(in_w) - i64::from(width),
    );
    let horizontal_first = !(dy > 0 && dy > dx * 2);
    let src = image.as_raw();
    let out = if horizontal_first {
        let vert = precompute_taps(in_h, height, filter);
        // Only the source rows the vertical pass reads are resampled horizontally.
        let first_row = vert.bounds.first().map_or(0, |b| b.0);
        let last_row = vert.bounds.last().map_or(in_h as usize, |b| b.0 + b.1);
        let (tmp, row_offset) = if need_horizontal {
            let horiz = precompute_taps(in_w, width, filter);
            let rows = last_row - first_row;
            (
                resample_horizontal(src, in_w as usize, first_row, rows, &horiz),
                first_row,
            )
        } else {
            (src.clone(), 0)
        };
        if need_vertical {
            resample_vertical(&tmp, width as usize, row_offset, &vert)
        } else {
            tmp
        }
    } else {
        let vert = precompute_taps(in_h, height, filter);
        let tmp = resample_vertical(src, in_w as usize, 0, &vert);
        if need_horizontal {
            let horiz = precompute_taps(in_w, width, filter);
            resample_horizontal(&tmp, in_w as usize, 0, height as usize, &horiz)
        } else {
            tmp
        }
    };
    RgbImage::from_raw(width, height, out).ok_or(PreprocessError::EmptyImage {
        origin: "resize output buffer".to_string(),
        width,
        height,
    })
}
