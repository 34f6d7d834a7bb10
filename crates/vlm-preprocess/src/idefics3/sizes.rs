//! The size arithmetic of `Idefics3ImageProcessorPil`, in Python's float64 with `int()`
//! truncation and `math.ceil`, as the reference computes it.
//!
//! Mirrors `_resize_output_size_rescale_to_max_len`, `_resize_output_size_scale_below_upper_bound`,
//! `get_resize_output_image_size` and the size part of `resize_for_vision_encoder` in
//! `transformers/models/idefics3/image_processing_pil_idefics3.py`.

use super::config::MAX_IMAGE_SIZE;
use crate::error::{PreprocessError, Result};

/// Python's `int(x)` for a non-negative float (truncation; saturates far beyond any image).
fn trunc(x: f64) -> u64 {
    x as u64
}

fn check_nonempty(height: u32, width: u32, origin: &str) -> Result<()> {
    if height == 0 || width == 0 {
        return Err(PreprocessError::EmptyImage {
            origin: origin.to_string(),
            width,
            height,
        });
    }
    Ok(())
}

fn to_u32(v: u64, what: &'static str, height: u32, width: u32) -> Result<u32> {
    u32::try_from(v).map_err(|_| PreprocessError::InvalidArgument {
        name: what,
        expected: "a size that fits in 32 bits",
        found: format!("{v} for a {width}x{height} image"),
    })
}

/// `(height, width)` after the first resize with `size = {"longest_edge": longest_edge}`:
/// the longest edge becomes exactly `longest_edge` (also for smaller images, which are
/// enlarged), the other edge `int(longest_edge / aspect)` rounded up to an even number (at least
/// 1), then both capped so that no side exceeds 4096 ([`MAX_IMAGE_SIZE`]).
pub fn resize_output_size(height: u32, width: u32, longest_edge: u32) -> Result<(u32, u32)> {
    check_nonempty(height, width, "Idefics3 resize input")?;
    // _resize_output_size_rescale_to_max_len(height, width, min_len=1, max_len=longest_edge)
    let aspect = f64::from(width) / f64::from(height);
    let (mut h, mut w) = (u64::from(height), u64::from(width));
    if width >= height {
        w = u64::from(longest_edge);
        h = trunc(w as f64 / aspect);
        if h % 2 != 0 {
            h += 1;
        }
    } else if height > width {
        h = u64::from(longest_edge);
        w = trunc(h as f64 * aspect);
        if w % 2 != 0 {
            w += 1;
        }
    }
    let (h, w) = (h.max(1), w.max(1));
    // _resize_output_size_scale_below_upper_bound(height, width, max_len=MAX_IMAGE_SIZE)
    let max_len = u64::from(MAX_IMAGE_SIZE);
    let aspect = w as f64 / h as f64;
    let (h, w) = if w >= h && w > max_len {
        (trunc(max_len as f64 / aspect), max_len)
    } else if h > w && h > max_len {
        (max_len, trunc(max_len as f64 * aspect))
    } else {
        (h, w)
    };
    Ok((
        to_u32(h.max(1), "resized height", height, width)?,
        to_u32(w.max(1), "resized width", height, width)?,
    ))
}

/// `(height, width)` of `resize_for_vision_encoder`: the longest edge rounded up to a multiple
/// of `max_image_size`, the other edge recomputed from the aspect ratio and rounded up to a
/// multiple too. Errors on an empty input, and when a side would come out as 0 (Pillow refuses
/// such a resize; the arithmetic keeps both sides at least 1 except through float rounding).
pub fn vision_encoder_size(height: u32, width: u32, max_image_size: u32) -> Result<(u32, u32)> {
    check_nonempty(height, width, "Idefics3 vision-encoder resize input")?;
    if max_image_size == 0 {
        return Err(PreprocessError::InvalidArgument {
            name: "max_image_size",
            expected: "a positive tile size",
            found: "0".to_string(),
        });
    }
    let m = f64::from(max_image_size);
    let ceil_to = |v: f64| (v / m).ceil() as u64 * u64::from(max_image_size);
    let aspect = f64::from(width) / f64::from(height);
    let (h, w) = if width >= height {
        let w = ceil_to(f64::from(width));
        let h = trunc(w as f64 / aspect);
        (ceil_to(h as f64), w)
    } else {
        let h = ceil_to(f64::from(height));
        let w = trunc(h as f64 * aspect);
        (h, ceil_to(w as f64))
    };
    let (h, w) = (
        to_u32(h, "vision-encoder height", height, width)?,
        to_u32(w, "vision-encoder width", height, width)?,
    );
    check_nonempty(h, w, "Idefics3 vision-encoder resize target")?;
    Ok((h, w))
}

/// `(rows, cols)` of `split_images` for an image of this (vision-encoder) size: `(0, 0)` when it
/// fits in one tile (then it is used as is, without a global view).
pub fn split_grid(height: u32, width: u32, max_image_size: u32) -> (usize, usize) {
    if max_image_size == 0 || (height <= max_image_size && width <= max_image_size) {
        return (0, 0);
    }
    // (height - max) // max + 1, which equals ceil(height / max) only for multiples of max.
    let split = |side: u32| (side.saturating_sub(max_image_size) / max_image_size + 1) as usize;
    (split(height), split(width))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_resize_matches_hand_computed_values() -> Result<()> {
        // 64x44 (w x h): width 72, height int(72 / (64 / 44)) = 49 -> even 50.
        assert_eq!(resize_output_size(44, 64, 72)?, (50, 72));
        // 36x56: height 72, width int(72 * 36 / 56) = 46.
        assert_eq!(resize_output_size(56, 36, 72)?, (72, 46));
        // Enlarges small images.
        assert_eq!(resize_output_size(9, 13, 56)?, (38, 56));
        // An extremely wide image keeps a height of at least 1 ... rounded to 2 when odd.
        assert_eq!(resize_output_size(1, 1000, 64)?, (1, 64));
        // Capped at 4096.
        assert_eq!(resize_output_size(100, 200, 10000)?.1, 4096);
        assert!(resize_output_size(0, 10, 64).is_err());
        Ok(())
    }

    #[test]
    fn vision_encoder_rounds_up_to_tiles() -> Result<()> {
        assert_eq!(vision_encoder_size(50, 72, 24)?, (72, 72));
        assert_eq!(vision_encoder_size(72, 46, 24)?, (72, 48));
        assert_eq!(split_grid(72, 48, 24), (3, 2));
        assert_eq!(split_grid(24, 24, 24), (0, 0));
        // 1x64 -> width 64, height int(64 / 64) = 1 -> 16: one row of four tiles.
        assert_eq!(vision_encoder_size(1, 64, 16)?, (16, 64));
        // A 1-pixel-wide, 2000-pixel-tall image: width int(2000 * (1 / 2000)) = 1 -> 16.
        assert_eq!(vision_encoder_size(2000, 1, 16)?, (2000, 16));
        assert_eq!(vision_encoder_size(1, 5000, 16)?, (16, 5008));
        assert!(vision_encoder_size(0, 5000, 16).is_err());
        Ok(())
    }
}
