//! `smart_resize` of `transformers/models/qwen2_vl/image_processing_pil_qwen2_vl.py` (the video
//! processor carries an identical copy): the output size of Qwen2-VL's dynamic-resolution resize.

use crate::error::{PreprocessError, Result};

/// Largest `max(height, width) / min(height, width)` that `smart_resize` accepts.
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// Which rule of `smart_resize` produced the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResizeBranch {
    /// Each side rounded to the nearest multiple of the factor; the pixel count fits the bounds.
    Rounded,
    /// The rounded size had more than `max_pixels` pixels: both sides were scaled down by the
    /// same factor, then floored to multiples of the factor (never below one factor).
    ShrunkToMaxPixels,
    /// The rounded size had fewer than `min_pixels` pixels: both sides were scaled **up** by the
    /// same factor, then rounded up to multiples of the factor. The reference upsizes small
    /// images silently; this variant lets a caller notice it (and, say, refuse thumbnails).
    GrownToMinPixels,
}

/// The result of [`smart_resize_detailed`]: the size and the rule that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SmartResize {
    /// Output height, a multiple of the factor.
    pub height: u32,
    /// Output width, a multiple of the factor.
    pub width: u32,
    /// The rule applied.
    pub branch: ResizeBranch,
}

/// Qwen2-VL's `smart_resize`: the `(height, width)` an image of `height` x `width` is resized
/// to, both multiples of `factor` (`patch_size * merge_size`, 28 for Qwen2-VL and Qwen2.5-VL),
/// with about `min_pixels..=max_pixels` pixels and the aspect ratio nearly kept.
///
/// Exactly the reference's arithmetic: Python's `round` (half to even) on `f64` quotients,
/// `math.floor` / `math.ceil`, and `sqrt` in `f64`. The bounds are not checked against each
/// other, as in the reference; note that the result can leave them: a very elongated image is
/// kept at least one factor wide (`max(factor, ...)`) even if that exceeds `max_pixels`, and the
/// grow branch rounds up. The reference's integer-by-integer divisions are correctly rounded;
/// here the operands are converted to `f64` first, which is the same as long as `height *
/// width` and the bounds stay below 2^53 (every image a decoder accepts).
///
/// Errors: a zero side, a zero factor, an aspect ratio above [`MAX_ASPECT_RATIO`], or an
/// output side that does not fit in `u32`. Images below `min_pixels` are upsized like the
/// reference does; use [`smart_resize_detailed`] to detect it.
///
/// ```
/// use vlm_preprocess::qwen2vl::smart_resize;
/// # fn main() -> Result<(), vlm_preprocess::PreprocessError> {
/// // 77 / 28 = 2.75 rounds to 3; 123 / 28 = 4.39 rounds to 4.
/// assert_eq!(smart_resize(77, 123, 28, 56 * 56, 28 * 28 * 1280)?, (84, 112));
/// // 14 / 28 = 0.5 rounds to 0 (half to even); 0 pixels < min_pixels, so it grows.
/// assert_eq!(smart_resize(14, 20, 28, 56 * 56, 28 * 28 * 1280)?, (56, 84));
/// assert!(smart_resize(1, 201, 28, 56 * 56, 28 * 28 * 1280).is_err()); // aspect ratio > 200
/// # Ok(())
/// # }
/// ```
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32)> {
    smart_resize_detailed(height, width, factor, min_pixels, max_pixels)
        .map(|s| (s.height, s.width))
}

/// [`smart_resize`], also saying which rule applied (see [`ResizeBranch`]).
pub fn smart_resize_detailed(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<SmartResize> {
    if height == 0 || width == 0 {
        return Err(PreprocessError::EmptyImage {
            origin: "smart_resize input".to_string(),
            width,
            height,
        });
    }
    if factor == 0 {
        return Err(PreprocessError::InvalidArgument {
            name: "factor (patch_size * merge_size)",
            expected: "a positive integer",
            found: "0".to_string(),
        });
    }
    let ratio = f64::from(height.max(width)) / f64::from(height.min(width));
    if ratio > MAX_ASPECT_RATIO {
        return Err(PreprocessError::AspectRatio {
            height,
            width,
            ratio,
            limit: MAX_ASPECT_RATIO,
        });
    }
    let (h, w, f) = (f64::from(height), f64::from(width), f64::from(factor));
    let factor64 = u64::from(factor);
    // round(height / factor) * factor, with Python's round-half-to-even.
    let mut h_bar = (h / f).round_ties_even() as u64 * factor64;
    let mut w_bar = (w / f).round_ties_even() as u64 * factor64;
    let pixels = u64::from(height) * u64::from(width);
    // The products can pass 2^64 with absurd factors; Python's integers do not overflow.
    let rounded = u128::from(h_bar) * u128::from(w_bar);
    let branch = if rounded > u128::from(max_pixels) {
        let beta = (pixels as f64 / max_pixels as f64).sqrt();
        h_bar = factor64.max((h / beta / f).floor() as u64 * factor64);
        w_bar = factor64.max((w / beta / f).floor() as u64 * factor64);
        ResizeBranch::ShrunkToMaxPixels
    } else if rounded < u128::from(min_pixels) {
        let beta = (min_pixels as f64 / pixels as f64).sqrt();
        h_bar = ((h * beta / f).ceil() as u64).saturating_mul(factor64);
        w_bar = ((w * beta / f).ceil() as u64).saturating_mul(factor64);
        ResizeBranch::GrownToMinPixels
    } else {
        ResizeBranch::Rounded
    };
    let side = |v: u64| {
        u32::try_from(v).map_err(|_| PreprocessError::InvalidArgument {
            name: "min_pixels",
            expected: "bounds whose resized image sides fit in 32 bits",
            found: format!("a side of {v} pixels for a {width}x{height} image"),
        })
    };
    Ok(SmartResize {
        height: side(h_bar)?,
        width: side(w_bar)?,
        branch,
    })
}

/// Checks a pixel budget the way every Qwen2-VL entry point does: `0 < min_pixels <=
/// max_pixels <= 2^53` (the last keeps the `f64` arithmetic of [`smart_resize`] exact).
pub(crate) fn check_pixel_bounds(min_pixels: u64, max_pixels: u64) -> Result<()> {
    const LIMIT: u64 = 1 << 53;
    if min_pixels == 0 || min_pixels > max_pixels || max_pixels > LIMIT {
        return Err(PreprocessError::InvalidArgument {
            name: "min_pixels / max_pixels",
            expected: "0 < min_pixels <= max_pixels <= 2^53",
            found: format!("min_pixels = {min_pixels}, max_pixels = {max_pixels}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_to_even() {
        // 42 / 28 = 1.5 -> 2; 70 / 28 = 2.5 -> 2; 98 / 28 = 3.5 -> 4.
        assert_eq!(smart_resize(42, 70, 28, 1, 1 << 40).ok(), Some((56, 56)));
        assert_eq!(smart_resize(98, 98, 28, 1, 1 << 40).ok(), Some((112, 112)));
    }

    #[test]
    fn branches() {
        let b = |h, w, min, max| smart_resize_detailed(h, w, 28, min, max).map(|s| s.branch);
        assert_eq!(
            b(56, 56, 56 * 56, 56 * 56).ok(),
            Some(ResizeBranch::Rounded)
        );
        assert_eq!(
            b(560, 560, 56 * 56, 56 * 56).ok(),
            Some(ResizeBranch::ShrunkToMaxPixels)
        );
        assert_eq!(
            b(10, 10, 56 * 56, 56 * 56).ok(),
            Some(ResizeBranch::GrownToMinPixels)
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(
            smart_resize(0, 5, 28, 1, 2),
            Err(PreprocessError::EmptyImage { .. })
        ));
        assert!(matches!(
            smart_resize(5, 5, 0, 1, 2),
            Err(PreprocessError::InvalidArgument { .. })
        ));
        // Exactly 200 is accepted, just above is not.
        assert!(smart_resize(1, 200, 28, 1, 1 << 20).is_ok());
        let err = smart_resize(2, 401, 28, 1, 1 << 20).err();
        assert!(matches!(err, Some(PreprocessError::AspectRatio { ratio, .. }) if ratio == 200.5));
        assert!(check_pixel_bounds(0, 1).is_err());
        assert!(check_pixel_bounds(2, 1).is_err());
        assert!(check_pixel_bounds(1, 1).is_ok());
    }
}
