//! The 3-D (temporal, height, width) positions of a Qwen2-VL prompt: `get_rope_index`.
//!
//! Mirrors `Qwen2VLModel.get_rope_index` / `get_vision_position_ids` and the Qwen2.5-VL override
//! (transformers 5.23). Text tokens advance all three axes together by one. A run of image or
//! video placeholder tokens takes the grid of the next image (or video): its merged patches get
//! `(start + t * interval, start + row, start + col)`, and the text after it continues at
//! `start + max(rows, cols)` (the temporal extent is not counted, as in the reference). The
//! `delta` (`max position + 1 - tokens`) carries the positions on into decoding: a token at
//! sequence index `i` past the prompt sits at `i + delta` on every axis.

use crate::{Error, Result};

/// What kind of media a placeholder run stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// A still image (`<|image_pad|>`).
    Image,
    /// A video (`<|video_pad|>`).
    Video,
}

/// The temporal spacing of a video's positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TemporalSpacing {
    /// Qwen2-VL: consecutive temporal patches are one position apart.
    Unit,
    /// Qwen2.5-VL: `tokens_per_second * seconds_per_grid_t` positions apart (with
    /// `seconds_per_grid_t = temporal_patch_size / fps`), truncated per temporal patch in f32
    /// arithmetic as the reference does.
    Timed {
        /// `vision_config.tokens_per_second`.
        tokens_per_second: f32,
    },
}

/// Inputs of [`rope_index`] besides the token ids.
#[derive(Debug, Clone, Copy)]
pub struct RopeIndexInputs<'a> {
    /// Id of `<|image_pad|>`.
    pub image_token_id: u32,
    /// Id of `<|video_pad|>`.
    pub video_token_id: u32,
    /// `(t, h, w)` patch grids of the images, in prompt order.
    pub image_grids: &'a [[usize; 3]],
    /// `(t, h, w)` patch grids of the videos, in prompt order.
    pub video_grids: &'a [[usize; 3]],
    /// Seconds per temporal patch of each video (Qwen2.5-VL's `second_per_grid_ts`); `None`
    /// for a video means 1, as in the reference when the processor gives none.
    pub video_seconds_per_grid: &'a [Option<f32>],
    /// `vision_config.spatial_merge_size`.
    pub spatial_merge_size: usize,
    /// How video time maps to positions.
    pub spacing: TemporalSpacing,
}

/// The M-RoPE positions of a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MropePositions {
    /// Positions per axis (temporal, height, width), one entry per token.
    pub axes: [Vec<i64>; 3],
    /// `max position + 1 - number of tokens`: the offset of every later token.
    pub delta: i64,
}

impl MropePositions {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.axes[0].len()
    }

    /// True for an empty prompt.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All three rows concatenated (`3 * len` values, temporal first), the layout of a
    /// `(3, 1, len)` tensor.
    pub fn flat(&self) -> Vec<i64> {
        self.axes.concat()
    }
}

/// Computes the 3-D positions of `ids`, taking one grid per run of placeholder tokens.
///
/// Every run of consecutive `<|image_pad|>` (or `<|video_pad|>`) tokens must hold exactly
/// `t * h * w / merge^2` tokens of the next grid of its kind, and every grid must be used; a
/// mismatch is an error that names the run, instead of the misaligned positions the reference
/// would silently produce.
pub fn rope_index(ids: &[u32], inputs: &RopeIndexInputs<'_>) -> Result<MropePositions> {
    let merge = inputs.spatial_merge_size;
    if merge == 0 {
        return Err(Error::Config("spatial_merge_size must be positive".into()));
    }
    let kind_of = |t: u32| {
        if t == inputs.image_token_id {
            Some(MediaKind::Image)
        } else if t == inputs.video_token_id {
            Some(MediaKind::Video)
        } else {
            None
        }
    };
    let mut axes: [Vec<i64>; 3] = [
        Vec::with_capacity(ids.len()),
        Vec::with_capacity(ids.len()),
        Vec::with_capacity(ids.len()),
    ];
    let (mut next_image, mut next_video) = (0usize, 0usize);
    let mut current: i64 = 0;
    let mut i = 0;
    while i < ids.len() {
        let kind = kind_of(ids[i]);
        let mut end = i + 1;
        while end < ids.len() && kind_of(ids[end]) == kind {
            end += 1;
        }
        let run = end - i;
        match kind {
            None => {
                for k in 0..run as i64 {
                    for axis in axes.iter_mut() {
                        axis.push(current + k);
                    }
                }
                current += run as i64;
            }
            Some(kind) => {
                let (grids, next, name) = match kind {
                    MediaKind::Image => (inputs.image_grids, &mut next_image, "image"),
                    MediaKind::Video => (inputs.video_grids, &mut next_video, "video"),
                };
                let index = *next;
                let Some(&[t, h, w]) = grids.get(index) else {
                    return Err(Error::Shape(format!(
                        "the prompt has more {name} placeholder runs than the {} {name} grid(s) \
                         given (run {} at token {i})",
                        grids.len(),
                        index + 1
                    )));
                };
                *next += 1;
                if h % merge != 0 || w % merge != 0 {
                    return Err(Error::Shape(format!(
                        "{name} {index}: grid {t}x{h}x{w} is not divisible by the merge size \
                         {merge}"
                    )));
                }
                let (rows, cols) = (h / merge, w / merge);
                let expected = t * rows * cols;
                if run != expected {
                    return Err(Error::Shape(format!(
                        "{name} {index}: the prompt has {run} consecutive placeholder tokens at \
                         token {i} but its grid {t}x{h}x{w} (merge {merge}) needs {expected}"
                    )));
                }
                let temporal = temporal_positions(kind, index, t, inputs)?;
                for &tp in &temporal {
                    for r in 0..rows as i64 {
                        for c in 0..cols as i64 {
                            axes[0].push(current + tp);
                            axes[1].push(current + r);
                            axes[2].push(current + c);
                        }
                    }
                }
                current += rows.max(cols) as i64;
            }
        }
        i = end;
    }
    for (kind, used, given) in [
        ("image", next_image, inputs.image_grids.len()),
        ("video", next_video, inputs.video_grids.len()),
    ] {
        if used != given {
            return Err(Error::Shape(format!(
                "{given} {kind} grid(s) were given but the prompt has {used} {kind} placeholder \
                 run(s)"
            )));
        }
    }
    let max = axes
        .iter()
        .flat_map(|a| a.iter().copied())
        .max()
        .unwrap_or(-1);
    Ok(MropePositions {
        delta: max + 1 - ids.len() as i64,
        axes,
    })
}

/// Temporal offsets (before adding the start position) of each temporal patch.
fn temporal_positions(
    kind: MediaKind,
    index: usize,
    t: usize,
    inputs: &RopeIndexInputs<'_>,
) -> Result<Vec<i64>> {
    let spacing = match (kind, inputs.spacing) {
        (MediaKind::Image, _) | (_, TemporalSpacing::Unit) => None,
        (MediaKind::Video, TemporalSpacing::Timed { tokens_per_second }) => {
            match inputs.video_seconds_per_grid.get(index).copied().flatten() {
                // The reference multiplies a Python float by a float32 tensor element: f32.
                Some(seconds) => Some(tokens_per_second * seconds),
                // No `second_per_grid_ts`: an integer interval of `tokens_per_second`.
                None => Some(tokens_per_second),
            }
        }
    };
    Ok(match spacing {
        None => (0..t as i64).collect(),
        Some(interval) => {
            if !interval.is_finite() || interval < 0.0 {
                return Err(Error::Config(format!(
                    "video {index}: temporal position interval {interval} is not a finite, \
                     non-negative number"
                )));
            }
            // `(arange(t) * interval).long()`: f32 product, truncated toward zero.
            (0..t).map(|k| (k as f32 * interval) as i64).collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(images: &'a [[usize; 3]], videos: &'a [[usize; 3]]) -> RopeIndexInputs<'a> {
        RopeIndexInputs {
            image_token_id: 9,
            video_token_id: 8,
            image_grids: images,
            video_grids: videos,
            video_seconds_per_grid: &[],
            spatial_merge_size: 2,
            spacing: TemporalSpacing::Unit,
        }
    }

    #[test]
    fn image_positions_follow_rows_and_columns() -> Result<()> {
        // text(2) + image 1x4x6 (2x3 merged = 6 tokens) + text(2)
        let ids = [1, 2, 9, 9, 9, 9, 9, 9, 3, 4];
        let p = rope_index(&ids, &inputs(&[[1, 4, 6]], &[]))?;
        assert_eq!(p.axes[0], vec![0, 1, 2, 2, 2, 2, 2, 2, 5, 6]);
        assert_eq!(p.axes[1], vec![0, 1, 2, 2, 2, 3, 3, 3, 5, 6]);
        assert_eq!(p.axes[2], vec![0, 1, 2, 3, 4, 2, 3, 4, 5, 6]);
        assert_eq!(p.delta, 7 - 10);
        Ok(())
    }

    #[test]
    fn placeholder_count_must_match_grid() {
        let ids = [1, 9, 9, 9, 2];
        let err = rope_index(&ids, &inputs(&[[1, 4, 4]], &[])).map(|_| ());
        let msg = format!("{err:?}");
        assert!(
            msg.contains("3 consecutive") && msg.contains("needs 4"),
            "{msg}"
        );
        let err = rope_index(&[1, 2], &inputs(&[[1, 4, 4]], &[])).map(|_| ());
        assert!(format!("{err:?}").contains("1 image grid(s) were given"));
    }

    #[test]
    fn timed_video_positions_truncate() -> Result<()> {
        // video t=3, 2x2 grid -> 1 merged token per frame; 2 tokens/s, 0.75 s per grid -> 1.5
        let ids = [1, 8, 8, 8, 2];
        let mut inp = inputs(&[], &[[3, 2, 2]]);
        let secs = [Some(0.75f32)];
        inp.video_seconds_per_grid = &secs;
        inp.spacing = TemporalSpacing::Timed {
            tokens_per_second: 2.0,
        };
        let p = rope_index(&ids, &inp)?;
        assert_eq!(p.axes[0], vec![0, 1, 2, 4, 2]);
        assert_eq!(p.axes[1], vec![0, 1, 1, 1, 2]);
        Ok(())
    }
}
