//! The tile grid of one image, without weights: which pinpoint, how many tiles, which rows and
//! columns survive `unpad_image`, OneVision's `anyres_max_N` downscale, and the token count all
//! of that implies; plus torch's bilinear interpolation for the downscale.

use candle_core::{DType, Tensor};

use crate::models::llava::tokens_per_tile;
use crate::models::FeatureSelect;
use crate::vision::VisionConfig;
use crate::{Error, Result};

/// Everything about the tile grid that does not depend on weights.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Geometry {
    /// `(height, width)` candidates, multiples of `image_size`.
    pub(super) pinpoints: Vec<(usize, usize)>,
    /// Side of a view (the tower's input).
    pub(super) image_size: usize,
    /// Patches along a view's side.
    pub(super) side: usize,
    /// Tokens per view after the feature selection.
    pub(super) tile_tokens: usize,
    /// OneVision's `anyres_max_N`.
    pub(super) max_num_patches: Option<usize>,
}

/// The unpadded (and possibly downscaled) feature map of one tiled image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PackPlan {
    /// Tile rows and columns.
    pub(super) grid: (usize, usize),
    /// First row and number of rows kept by `unpad_image`.
    pub(super) rows: (usize, usize),
    /// First column and number of columns kept.
    pub(super) cols: (usize, usize),
    /// Size after OneVision's downscale, if it applies.
    pub(super) downscale: Option<(usize, usize)>,
}

impl PackPlan {
    /// `(rows, cols)` of the map that reaches the decoder.
    pub(super) fn out(&self) -> (usize, usize) {
        self.downscale.unwrap_or((self.rows.1, self.cols.1))
    }
}

impl Geometry {
    pub(super) fn new(
        vision: &VisionConfig,
        select: FeatureSelect,
        pinpoints: Vec<[usize; 2]>,
        max_num_patches: Option<usize>,
    ) -> Result<Self> {
        let (image_size, patch) = vision.image_and_patch_size();
        // 384 / 14 is not whole: the patch convolution drops the remainder (27 x 27 patches).
        if image_size == 0 || patch == 0 || patch > image_size {
            return Err(Error::Config(format!(
                "vision_config: image_size {image_size} and patch_size {patch} must be positive, \
                 the patch no larger than the image"
            )));
        }
        if pinpoints.is_empty() {
            return Err(Error::Config(
                "image_grid_pinpoints is empty; it needs at least one [height, width]".into(),
            ));
        }
        for &[h, w] in &pinpoints {
            if h == 0 || w == 0 || h % image_size != 0 || w % image_size != 0 {
                return Err(Error::Config(format!(
                    "image_grid_pinpoints entry [{h}, {w}] is not a positive multiple of the \
                     vision tower's image_size {image_size}: the tiles would not fill the grid \
                     (transformers fails on it too)"
                )));
            }
        }
        Ok(Self {
            pinpoints: pinpoints.into_iter().map(|[h, w]| (h, w)).collect(),
            image_size,
            side: image_size / patch,
            tile_tokens: tokens_per_tile(vision, select),
            max_num_patches,
        })
    }

    /// Tile rows and columns for an image of `height x width`.
    pub(super) fn grid(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        if height == 0 || width == 0 {
            return Err(Error::Shape(format!(
                "an image of {height}x{width} (height x width) has no pixels"
            )));
        }
        let (h, w) = select_best_resolution(height, width, &self.pinpoints).ok_or_else(|| {
            Error::Config("image_grid_pinpoints is empty; it needs at least one entry".into())
        })?;
        Ok((h / self.image_size, w / self.image_size))
    }

    pub(super) fn plan(&self, height: usize, width: usize) -> Result<PackPlan> {
        let grid = self.grid(height, width)?;
        let (ch, cw) = (grid.0 * self.side, grid.1 * self.side);
        let (rows, cols) = unpad(height, width, ch, cw);
        let downscale = self.max_num_patches.and_then(|max| {
            let (h, w) = (rows.1, cols.1);
            let ratio = ((h * w) as f64 / (max * self.side * self.side) as f64).sqrt();
            (ratio > 1.1).then(|| {
                (
                    py_floor_div(h as f64, ratio) as usize,
                    py_floor_div(w as f64, ratio) as usize,
                )
            })
        });
        Ok(PackPlan {
            grid,
            rows,
            cols,
            downscale,
        })
    }

    pub(super) fn num_image_tokens(&self, height: usize, width: usize) -> Result<usize> {
        let (h, w) = self.plan(height, width)?.out();
        Ok(self.tile_tokens + h * (w + 1))
    }

    pub(super) fn num_image_tokens_untiled(&self) -> usize {
        self.tile_tokens + 1
    }
}

/// transformers' `select_best_resolution`: the candidate `(height, width)` keeping the most of
/// the image's pixels once scaled to fit (`int(side * min(w / W, h / H))`, in `f64`), ties
/// going to the least wasted area, then to the earlier candidate. Mirrors
/// `vlm_preprocess::anyres::select_best_resolution`, which picks the tiles.
fn select_best_resolution(
    height: usize,
    width: usize,
    candidates: &[(usize, usize)],
) -> Option<(usize, usize)> {
    let (oh, ow) = (height as f64, width as f64);
    let original = height as u128 * width as u128;
    let mut best: Option<((usize, usize), u128, i128)> = None;
    for &(h, w) in candidates {
        let scale = (w as f64 / ow).min(h as f64 / oh);
        let (dw, dh) = ((ow * scale) as u128, (oh * scale) as u128);
        let effective = (dw * dh).min(original);
        let wasted = (h as i128) * (w as i128) - effective as i128;
        let better = match best {
            None => true,
            Some((_, e, wst)) => effective > e || (effective == e && wasted < wst),
        };
        if better {
            best = Some(((h, w), effective, wasted));
        }
    }
    best.map(|(c, _, _)| c)
}

/// `int(round(x, 7))` for `x >= 0`: Python rounds to 7 decimals first, so a product that lands
/// within 5e-8 below an integer through float error counts as that integer; otherwise `int`
/// truncates. (For integer image sizes below 2e7 pixels, no true fraction is that close.)
fn py_int_round7(x: f64) -> usize {
    let r = x.round();
    if (x - r).abs() < 5e-8 {
        r as usize
    } else {
        x.trunc() as usize
    }
}

/// Python's float floor division `a // b` for positive operands (computed through `fmod`, as
/// CPython does, so it can differ from `floor(a / b)` by one at the edges).
fn py_floor_div(a: f64, b: f64) -> f64 {
    let m = a % b;
    let div = (a - m) / b;
    let f = div.floor();
    if div - f > 0.5 {
        f + 1.0
    } else {
        f
    }
}

/// `unpad_image`: which `(first, count)` rows and columns of a `cur_h x cur_w` feature map of
/// an image of `height x width` (resized to fit and centred by the processor) hold the image.
fn unpad(
    height: usize,
    width: usize,
    cur_h: usize,
    cur_w: usize,
) -> ((usize, usize), (usize, usize)) {
    let (oh, ow, ch, cw) = (height as f64, width as f64, cur_h as f64, cur_w as f64);
    if ow / oh > cw / ch {
        let new_h = py_int_round7(oh * (cw / ow));
        let pad = cur_h.saturating_sub(new_h) / 2;
        ((pad, cur_h.saturating_sub(2 * pad)), (0, cur_w))
    } else {
        let new_w = py_int_round7(ow * (ch / oh));
        let pad = cur_w.saturating_sub(new_w) / 2;
        ((0, cur_h), (pad, cur_w.saturating_sub(2 * pad)))
    }
}

/// torch's `upsample_bilinear2d` along one axis (`align_corners=False`, sizes given, no
/// antialias) as a dense `(output, input)` matrix: each row holds the two weights of one output
/// position, its source index and weight computed in `f32` as the CPU kernel does.
fn bilinear_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; output * input];
    if input == output {
        for i in 0..output {
            m[i * input + i] = 1.0;
        }
        return m;
    }
    let scale = input as f32 / output as f32;
    for i in 0..output {
        let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(input - 1);
        let lambda = (src - i0 as f32).clamp(0.0, 1.0);
        let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
        m[i * input + i0] += 1.0 - lambda;
        m[i * input + i1] += lambda;
    }
    m
}

/// Bilinear resize of a `(h, w, d)` map to `(oh, ow, d)`, in `f32`: along the width first, then
/// the height, the order in which torch's kernel accumulates.
pub(super) fn bilinear_resize(map: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (h, w, d) = map.dims3()?;
    let device = map.device();
    let x = map.to_dtype(DType::F32)?;
    let along_w = Tensor::from_vec(bilinear_matrix(w, ow), (ow, w), device)?;
    let along_h = Tensor::from_vec(bilinear_matrix(h, oh), (oh, h), device)?;
    let y = along_w.broadcast_matmul(&x)?; // (h, ow, d)
    let z = along_h.matmul(&y.reshape((h, ow * d))?)?;
    Ok(z.reshape((oh, ow, d))?.to_dtype(map.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding_helpers() {
        assert_eq!(py_int_round7(38.5), 38);
        assert_eq!(py_int_round7(38.999_999_99), 39);
        assert_eq!(py_int_round7(39.000_000_01), 39);
        assert_eq!(py_int_round7(38.999_9), 38);
        assert_eq!(py_floor_div(14.0, 1.247), 11.0);
        assert_eq!(py_floor_div(1.0, 0.1), 9.0); // Python: 1.0 // 0.1 == 9.0
    }

    #[test]
    fn unpad_matches_the_reference_rounding() {
        // 44x64 image on a 2x2 grid of 4x4 patch maps: 8 * 44 / 64 = 5.5 -> 5 rows of image,
        // padding (8 - 5) // 2 = 1 removed at both ends.
        assert_eq!(unpad(44, 64, 8, 8), ((1, 6), (0, 8)));
        // 56x36 (tall) on a 3x1 grid of 4x4 maps is still relatively wider: 4 * 56 / 36 = 6.2
        // -> 6 rows of image, padding 3 at both ends.
        assert_eq!(unpad(56, 36, 12, 4), ((3, 6), (0, 4)));
        // The same image on a 1x1 grid: 4 * 36 / 56 = 2.57 -> 2 columns, padding 1 each side.
        assert_eq!(unpad(56, 36, 4, 4), ((0, 4), (1, 2)));
        // Exactly the grid's aspect ratio: nothing removed.
        assert_eq!(unpad(100, 200, 4, 8), ((0, 4), (0, 8)));
    }

    #[test]
    fn bilinear_rows_follow_torch() {
        // Downscale 4 -> 3: scale 4/3, sources 0.1667, 1.5, 2.8333.
        let m = bilinear_matrix(4, 3);
        let row = |i: usize| &m[i * 4..(i + 1) * 4];
        assert!((row(0)[0] - 0.833_333_3).abs() < 1e-6 && (row(0)[1] - 0.166_666_7).abs() < 1e-6);
        assert_eq!(row(1), [0.0, 0.5, 0.5, 0.0]);
        assert!((row(2)[2] - 0.166_666_7).abs() < 1e-5 && (row(2)[3] - 0.833_333_3).abs() < 1e-5);
        assert_eq!(bilinear_matrix(2, 2), [1.0, 0.0, 0.0, 1.0]);
    }
}
