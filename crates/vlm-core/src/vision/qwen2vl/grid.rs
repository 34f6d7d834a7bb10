//! Index arithmetic over `grid_thw`: rotary positions, attention segments, and Qwen2.5-VL's
//! window order.
//!
//! Mirrors `get_vision_position_ids`, `get_vision_cu_seqlens` and `get_vision_window_index` in
//! `transformers/vision_utils.py` (transformers 5.23). Pure host-side integer code, computed once
//! per forward pass.
//!
//! The processor emits the patches of each frame in merge-window order: for each
//! `merge x merge` square of patches (row-major over the squares), its patches row-major. So
//! every run of `merge^2` consecutive rows is one merged output token (a "unit").

use crate::{Error, Result};

/// Checks `grid_thw` against the pixel rows and the merge size; returns the total patch count.
pub(crate) fn check_grids(grid_thw: &[[usize; 3]], merge: usize, rows: usize) -> Result<usize> {
    if grid_thw.is_empty() {
        return Err(Error::Shape(
            "Qwen vision tower: grid_thw is empty; expected one [t, h, w] per image or video"
                .into(),
        ));
    }
    let mut total = 0usize;
    for (i, &[t, h, w]) in grid_thw.iter().enumerate() {
        if t == 0 || h == 0 || w == 0 {
            return Err(Error::Shape(format!(
                "Qwen vision tower: grid_thw[{i}] = [{t}, {h}, {w}] has a zero extent"
            )));
        }
        if h % merge != 0 || w % merge != 0 {
            return Err(Error::Shape(format!(
                "Qwen vision tower: grid_thw[{i}] = [{t}, {h}, {w}]: height and width (in patches) \
                 must be multiples of spatial_merge_size {merge}"
            )));
        }
        total = t
            .checked_mul(h)
            .and_then(|x| x.checked_mul(w))
            .and_then(|x| x.checked_add(total))
            .ok_or_else(|| Error::Shape(format!("Qwen vision tower: grid_thw[{i}] overflows")))?;
    }
    if total != rows {
        return Err(Error::Shape(format!(
            "Qwen vision tower: grid_thw {grid_thw:?} describes {total} patches (sum of t*h*w) \
             but pixel_values has {rows} rows"
        )));
    }
    Ok(total)
}

/// `(row, col)` of every patch in processor order, flattened as `[row0, col0, row1, col1, ...]`
/// in f32 (exact: positions are far below 2^24).
pub(crate) fn rotary_positions(grid_thw: &[[usize; 3]], merge: usize) -> Vec<f32> {
    let total: usize = grid_thw.iter().map(|g| g[0] * g[1] * g[2]).sum();
    let mut pos = Vec::with_capacity(2 * total);
    for &[t, h, w] in grid_thw {
        for _ in 0..t {
            for br in 0..h / merge {
                for bc in 0..w / merge {
                    for ir in 0..merge {
                        for ic in 0..merge {
                            pos.push((br * merge + ir) as f32);
                            pos.push((bc * merge + ic) as f32);
                        }
                    }
                }
            }
        }
    }
    pos
}

/// Patches per attention segment for full attention: one segment per frame (`h * w` each, `t`
/// times per entry), as `get_vision_cu_seqlens` with `merge_temporal=False`.
pub(crate) fn frame_lengths(grid_thw: &[[usize; 3]]) -> Vec<usize> {
    grid_thw
        .iter()
        .flat_map(|&[t, h, w]| std::iter::repeat_n(h * w, t))
        .collect()
}

/// Qwen2.5-VL's window order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WindowLayout {
    /// `unit_order[j]` is the processor-order unit placed at window-order position `j`
    /// (the reference's `window_index`).
    pub unit_order: Vec<usize>,
    /// Patches per window, in window order, empty windows dropped (the differences of the
    /// reference's `cu_window_seqlens` after `unique_consecutive`).
    pub window_lengths: Vec<usize>,
}

/// Splits each frame's grid of units (`h/merge x w/merge`) into `side x side` windows,
/// row-major over windows and row-major inside each; the last window of a row or column is
/// partial when the grid does not divide. (The reference pads to a whole number of windows with
/// -100 and drops the padding; when the grid divides it pads a full extra window, which is empty
/// and dropped too.)
pub(crate) fn window_layout(grid_thw: &[[usize; 3]], merge: usize, side: usize) -> WindowLayout {
    let units = merge * merge;
    let mut unit_order = Vec::new();
    let mut window_lengths = Vec::new();
    let mut base = 0;
    for &[t, h, w] in grid_thw {
        let (gh, gw) = (h / merge, w / merge);
        for frame in 0..t {
            let frame_base = base + frame * gh * gw;
            for r0 in (0..gh).step_by(side) {
                for c0 in (0..gw).step_by(side) {
                    let (r1, c1) = ((r0 + side).min(gh), (c0 + side).min(gw));
                    for r in r0..r1 {
                        unit_order.extend((c0..c1).map(|c| frame_base + r * gw + c));
                    }
                    window_lengths.push((r1 - r0) * (c1 - c0) * units);
                }
            }
        }
        base += t * gh * gw;
    }
    WindowLayout {
        unit_order,
        window_lengths,
    }
}

/// The inverse permutation: `inverse[perm[j]] = j`.
pub(crate) fn invert(perm: &[usize]) -> Vec<usize> {
    let mut inverse = vec![0; perm.len()];
    for (j, &p) in perm.iter().enumerate() {
        inverse[p] = j;
    }
    inverse
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotary_positions_follow_merge_squares() {
        // A 4x4 grid with 2x2 merging: the four patches of the top-left square come first.
        let pos = rotary_positions(&[[1, 4, 4]], 2);
        let pairs: Vec<(u32, u32)> = pos.chunks(2).map(|p| (p[0] as u32, p[1] as u32)).collect();
        #[rustfmt::skip]
        let want = [
            (0, 0), (0, 1), (1, 0), (1, 1),
            (0, 2), (0, 3), (1, 2), (1, 3),
            (2, 0), (2, 1), (3, 0), (3, 1),
            (2, 2), (2, 3), (3, 2), (3, 3),
        ];
        assert_eq!(pairs, want);
        // Frames of a video repeat the same spatial positions.
        let video = rotary_positions(&[[2, 2, 2]], 2);
        assert_eq!(video[..8], video[8..]);
    }

    #[test]
    fn frames_are_segments() {
        assert_eq!(frame_lengths(&[[1, 4, 6], [2, 8, 4]]), vec![24, 32, 32]);
    }

    #[test]
    fn window_layout_matches_reference() {
        // Units grid 3 x 5 (h=6, w=10 patches), windows of 2 units per side: windows
        // [0,1,5,6] [2,3,7,8] [4,9] [10,11] [12,13] [14], then a 1x1-unit second image.
        let l = window_layout(&[[1, 6, 10], [1, 2, 2]], 2, 2);
        assert_eq!(
            l.unit_order,
            vec![0, 1, 5, 6, 2, 3, 7, 8, 4, 9, 10, 11, 12, 13, 14, 15]
        );
        assert_eq!(l.window_lengths, vec![16, 16, 8, 8, 8, 4, 4]);
        // A grid that divides exactly gets no empty trailing windows; frames stay separate.
        let l = window_layout(&[[2, 4, 4]], 2, 2);
        assert_eq!(l.unit_order, (0..8).collect::<Vec<_>>());
        assert_eq!(l.window_lengths, vec![16, 16]);
        let inv = invert(&[2, 0, 1]);
        assert_eq!(inv, vec![1, 2, 0]);
    }
}
