//! The flattened patch layout of Qwen2-VL's `patchify` (image and video processors).

use crate::error::{PreprocessError, Result};
use crate::transforms::PixelValues;

/// Pixels cut into flattened vision-tower patches, transformers' `pixel_values` (images) or
/// `pixel_values_videos` (videos) for one input, plus its `*_grid_thw` row.
///
/// `data` is row-major `[num_patches, patch_dim]`:
/// - rows, slowest first: temporal group `t` (`0..grid_t`), merge-window row (`0..grid_h /
///   merge`), merge-window column (`0..grid_w / merge`), patch row inside the window
///   (`0..merge`), patch column inside the window (`0..merge`). Consecutive runs of
///   `merge * merge` rows are the patches one LLM token is merged from;
/// - columns, slowest first: channel (3), frame inside the temporal group
///   (`temporal_patch_size`), pixel row (`patch_size`), pixel column (`patch_size`).
///
/// Several inputs are batched by concatenating their rows, as transformers does.
#[derive(Debug, Clone, PartialEq)]
pub struct Patches {
    /// `num_patches * patch_dim` values.
    pub data: Vec<f32>,
    /// Rows: `grid_thw[0] * grid_thw[1] * grid_thw[2]`.
    pub num_patches: usize,
    /// Columns: `channels * temporal_patch_size * patch_size * patch_size` (1176 for Qwen2-VL).
    pub patch_dim: usize,
    /// `[grid_t, grid_h, grid_w]`: temporal groups, patch rows, patch columns.
    pub grid_thw: [usize; 3],
}

impl Patches {
    /// One patch (a row), if in range.
    pub fn row(&self, index: usize) -> Option<&[f32]> {
        let start = index.checked_mul(self.patch_dim)?;
        self.data.get(start..start.checked_add(self.patch_dim)?)
    }

    /// LLM tokens these patches become: `grid_t * grid_h * grid_w / merge_size^2` (the
    /// number of `<|image_pad|>` / `<|video_pad|>` placeholders).
    pub fn num_tokens(&self, merge_size: usize) -> usize {
        self.num_patches / merge_size.saturating_mul(merge_size).max(1)
    }
}

/// Cuts `frames` (each `[3, H, W]`, all the same shape, `frames.len()` a multiple of
/// `temporal_patch_size`) into [`Patches`]. An image is `temporal_patch_size` references to the
/// same frame.
pub(crate) fn patchify(
    frames: &[&PixelValues],
    patch_size: usize,
    merge_size: usize,
    temporal_patch_size: usize,
) -> Result<Patches> {
    let Some(first) = frames.first() else {
        return Err(PreprocessError::InvalidArgument {
            name: "frames",
            expected: "at least one frame to cut into patches",
            found: "0 frames".to_string(),
        });
    };
    let [channels, height, width] = first.shape;
    let factor = patch_size * merge_size;
    if factor == 0 || height % factor != 0 || width % factor != 0 || height == 0 || width == 0 {
        return Err(PreprocessError::NotPatchAligned {
            height: height as u32,
            width: width as u32,
            factor: factor as u32,
        });
    }
    if temporal_patch_size == 0 || !frames.len().is_multiple_of(temporal_patch_size) {
        return Err(PreprocessError::InvalidArgument {
            name: "frames",
            expected: "a multiple of temporal_patch_size frames",
            found: format!(
                "{} frames, temporal_patch_size {temporal_patch_size}",
                frames.len()
            ),
        });
    }
    if let Some((index, bad)) = frames
        .iter()
        .enumerate()
        .find(|(_, f)| f.shape != first.shape || f.data.len() != channels * height * width)
    {
        return Err(PreprocessError::InvalidArgument {
            name: "frames",
            expected: "frames of one shape",
            found: format!(
                "frame {index} of shape {:?} (data length {}), frame 0 of shape {:?}",
                bad.shape,
                bad.data.len(),
                first.shape
            ),
        });
    }
    let (grid_t, grid_h, grid_w) = (
        frames.len() / temporal_patch_size,
        height / patch_size,
        width / patch_size,
    );
    let num_patches = grid_t * grid_h * grid_w;
    let patch_dim = channels * temporal_patch_size * patch_size * patch_size;
    let mut data = Vec::with_capacity(num_patches * patch_dim);
    for group in frames.chunks_exact(temporal_patch_size) {
        for wy in 0..grid_h / merge_size {
            for wx in 0..grid_w / merge_size {
                for my in 0..merge_size {
                    for mx in 0..merge_size {
                        let y0 = (wy * merge_size + my) * patch_size;
                        let x0 = (wx * merge_size + mx) * patch_size;
                        for c in 0..channels {
                            for frame in group {
                                for py in 0..patch_size {
                                    let start = (c * height + y0 + py) * width + x0;
                                    data.extend_from_slice(&frame.data[start..start + patch_size]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(Patches {
        data,
        num_patches,
        patch_dim,
        grid_thw: [grid_t, grid_h, grid_w],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame whose value encodes (frame, channel, y, x).
    fn frame(id: usize, h: usize, w: usize) -> PixelValues {
        let data = (0..3 * h * w)
            .map(|i| (id * 100_000 + i) as f32)
            .collect::<Vec<_>>();
        PixelValues {
            data,
            shape: [3, h, w],
        }
    }

    #[test]
    fn layout_matches_the_reference_permutation() {
        // Reference: view(t, T, C, gh/m, m, p, gw/m, m, p).permute(t, gh/m, gw/m, mh, mw, C, T, ph, pw).
        let (p, m, tp, h, w) = (2usize, 2usize, 2usize, 8usize, 12usize);
        let frames: Vec<PixelValues> = (0..4).map(|i| frame(i, h, w)).collect();
        let refs: Vec<&PixelValues> = frames.iter().collect();
        let out = patchify(&refs, p, m, tp).unwrap();
        let (gh, gw) = (h / p, w / p);
        assert_eq!(out.grid_thw, [2, gh, gw]);
        assert_eq!(out.patch_dim, 3 * tp * p * p);
        let mut expected = Vec::new();
        for t in 0..2 {
            for bh in 0..gh / m {
                for bw in 0..gw / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            for c in 0..3 {
                                for tt in 0..tp {
                                    for ph in 0..p {
                                        for pw in 0..p {
                                            let y = (bh * m + mh) * p + ph;
                                            let x = (bw * m + mw) * p + pw;
                                            let f = t * tp + tt;
                                            expected.push(frames[f].data[(c * h + y) * w + x]);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(out.data, expected);
        assert_eq!(out.row(1).map(<[f32]>::len), Some(out.patch_dim));
        assert_eq!(out.row(out.num_patches), None);
        assert_eq!(out.num_tokens(m), 2 * gh * gw / 4);
    }

    #[test]
    fn misaligned_sizes_are_errors() {
        let f = frame(0, 6, 8);
        assert!(matches!(
            patchify(&[&f, &f], 2, 2, 2),
            Err(PreprocessError::NotPatchAligned { .. })
        ));
        let g = frame(0, 8, 8);
        assert!(patchify(&[&g], 2, 2, 2).is_err());
        assert!(patchify(&[], 2, 2, 2).is_err());
    }
}
