//! The anyres geometry: picking the grid resolution, fitting the image into it and cutting it
//! into tiles (`select_best_resolution`, `get_patch_output_size`, `_resize_for_patching`,
//! `_pad_for_patching`, `divide_to_patches`).

use image::RgbImage;

use crate::config::{Extent, Resample};
use crate::error::{PreprocessError, Result};
use crate::resize::resize;

/// transformers' `select_best_resolution(original_size, possible_resolutions)`: the candidate
/// `(height, width)` that keeps the most of the image's pixels once the image is scaled to fit
/// it (never counting more than the original's pixels), ties broken by the least wasted area,
/// then by list order.
///
/// The scaled sides are `int(side * min(w / W, h / H))`, computed in `f64` as Python does.
/// Returns `None` only for an empty candidate list.
pub fn select_best_resolution(height: u32, width: u32, candidates: &[Extent]) -> Option<Extent> {
    let (oh, ow) = (f64::from(height), f64::from(width));
    let original = u64::from(height) * u64::from(width);
    let mut best: Option<(Extent, u64, i128)> = None;
    for &c in candidates {
        let scale = (f64::from(c.width) / ow).min(f64::from(c.height) / oh);
        // Python's int() truncates toward zero; `as` does too (and saturates NaN to 0).
        let (dw, dh) = ((ow * scale) as u64, (oh * scale) as u64);
        let effective = dw.saturating_mul(dh).min(original);
        let wasted = i128::from(c.width) * i128::from(c.height) - i128::from(effective);
        let better = match best {
            None => true,
            Some((_, e, w)) => effective > e || (effective == e && wasted < w),
        };
        if better {
            best = Some((c, effective, wasted));
        }
    }
    best.map(|(c, _, _)| c)
}

/// transformers' `get_patch_output_size`: the `(height, width)` an image of `height x width` is
/// resized to so that it fits `target` with its aspect ratio kept. The side that does not fill
/// the target is `min(ceil(side * scale), target side)`, in `f64` as Python does.
pub fn patch_output_size(height: u32, width: u32, target: Extent) -> (u32, u32) {
    let scale_w = f64::from(target.width) / f64::from(width);
    let scale_h = f64::from(target.height) / f64::from(height);
    if scale_w < scale_h {
        let h = (f64::from(height) * scale_w).ceil() as u32;
        (h.min(target.height), target.width)
    } else {
        let w = (f64::from(width) * scale_h).ceil() as u32;
        (target.height, w.min(target.width))
    }
}

/// `_resize_for_patching` then `_pad_for_patching`: a Pillow resize to [`patch_output_size`],
/// then zero (black) padding to exactly `target`, `floor(diff / 2)` before the image and the
/// rest after it on each axis.
pub fn resize_and_pad_for_patching(
    image: &RgbImage,
    target: Extent,
    filter: Resample,
) -> Result<RgbImage> {
    let (h, w) = patch_output_size(image.height(), image.width(), target);
    let resized = resize(image, w, h, filter)?;
    let top = (target.height - resized.height()) / 2;
    let left = (target.width - resized.width()) / 2;
    let mut out = RgbImage::new(target.width, target.height);
    image::imageops::replace(&mut out, &resized, i64::from(left), i64::from(top));
    Ok(out)
}

/// transformers' `divide_to_patches`: `tile x tile` crops in row-major order; tiles on the
/// bottom/right edge are smaller when the sides are not multiples of `tile`.
pub fn divide_into_tiles(image: &RgbImage, tile: u32) -> Result<Vec<RgbImage>> {
    if tile == 0 {
        return Err(PreprocessError::InvalidArgument {
            name: "tile",
            expected: "a positive tile side",
            found: "0".to_string(),
        });
    }
    let (w, h) = image.dimensions();
    let mut tiles = Vec::new();
    for y in (0..h).step_by(tile as usize) {
        for x in (0..w).step_by(tile as usize) {
            let view = image::imageops::crop_imm(image, x, y, tile.min(w - x), tile.min(h - y));
            tiles.push(view.to_image());
        }
    }
    Ok(tiles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anyres::LLAVA_NEXT_PINPOINTS;

    fn e(height: u32, width: u32) -> Extent {
        Extent { height, width }
    }

    #[test]
    fn best_resolution_prefers_effective_then_least_waste_then_order() {
        let next: Vec<Extent> = LLAVA_NEXT_PINPOINTS.iter().map(|p| e(p[0], p[1])).collect();
        // A 2:1 landscape photo fills 336x672 exactly.
        assert_eq!(select_best_resolution(500, 1000, &next), Some(e(336, 672)));
        // Large square: 672x672 keeps the most pixels.
        assert_eq!(select_best_resolution(2000, 2000, &next), Some(e(672, 672)));
        // Small image: every candidate keeps all of its pixels; least waste wins (the first
        // of the 336x672-area ones in list order).
        assert_eq!(select_best_resolution(100, 100, &next), Some(e(336, 672)));
        // Equal effective and equal waste: the earlier candidate stays.
        assert_eq!(
            select_best_resolution(10, 10, &[e(20, 40), e(40, 20)]),
            Some(e(20, 40))
        );
        assert_eq!(select_best_resolution(10, 10, &[]), None);
    }

    #[test]
    fn patch_output_size_rounds_the_short_side_up() {
        // 44x64 into 56x56: width fills, height = ceil(44 * 0.875) = ceil(38.5) = 39.
        assert_eq!(patch_output_size(44, 64, e(56, 56)), (39, 56));
        assert_eq!(patch_output_size(64, 44, e(56, 56)), (56, 39));
        assert_eq!(patch_output_size(10, 20, e(28, 56)), (28, 56));
    }

    #[test]
    fn padding_is_centred_with_the_odd_pixel_after() -> Result<()> {
        let image = RgbImage::from_pixel(4, 2, image::Rgb([200, 100, 50]));
        let out = resize_and_pad_for_patching(&image, e(5, 4), Resample::Bicubic)?;
        // 2x4 fits 5x4 unscaled: 3 rows of padding, 1 above and 2 below.
        let rows: Vec<u8> = (0..5).map(|y| out.get_pixel(0, y).0[0]).collect();
        assert_eq!(rows, [0, 200, 200, 0, 0]);
        Ok(())
    }

    #[test]
    fn tiles_are_row_major_and_partial_at_the_edges() -> Result<()> {
        let image = RgbImage::from_fn(5, 3, |x, y| image::Rgb([(10 * y + x) as u8, 0, 0]));
        let tiles = divide_into_tiles(&image, 2)?;
        let sizes: Vec<(u32, u32)> = tiles.iter().map(|t| t.dimensions()).collect();
        assert_eq!(sizes, [(2, 2), (2, 2), (1, 2), (2, 1), (2, 1), (1, 1)]);
        assert_eq!(tiles[1].get_pixel(0, 0).0[0], 2);
        assert_eq!(tiles[3].get_pixel(1, 0).0[0], 21);
        assert!(divide_into_tiles(&image, 0).is_err());
        Ok(())
    }
}
