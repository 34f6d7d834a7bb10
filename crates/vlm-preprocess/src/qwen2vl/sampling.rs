//! Frame sampling of `Qwen2VLVideoProcessor.sample_frames`
//! (`transformers/models/qwen2_vl/video_processing_qwen2_vl.py`).

use crate::error::{PreprocessError, Result};

/// Which frames of a video are processed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FrameSampling {
    /// Every frame: transformers' default (`do_sample_frames=False`).
    All,
    /// `do_sample_frames=True, num_frames=n`: `n` rounded (half to even) to a multiple of
    /// `temporal_patch_size`, spread evenly. `min_frames` / `max_frames` do not apply.
    NumFrames(usize),
    /// `do_sample_frames=True, fps=f`: `total / video_fps * f` frames, clamped to
    /// `min_frames..=max_frames` and the video length, floored to a multiple of
    /// `temporal_patch_size`. Needs the video's frame rate.
    Fps(f64),
}

/// The processor options sampling depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SamplingLimits {
    pub temporal_patch_size: usize,
    pub min_frames: u64,
    pub max_frames: u64,
}

/// Lanes of torch's `Vectorized<float>` in the CPU `arange` kernel (see [`torch_arange_int`]).
const LANES: usize = 8;

/// `torch.arange(0, total, total / count).int()` with torch 2.15's CPU float32 arithmetic.
///
/// The length is `ceil(total / step)` in `f64`, which can be `count + 1` (for 7,652 of the
/// even `count`s up to 768 over videos of up to 800 frames; the extra value is `total` itself).
/// Values are computed in `f64` and stored as `f32`, then truncated: the kernel's vector path
/// (blocks of 2 x 8 lanes) first rounds each lane block's base `step * i0` to `f32` and adds
/// `k * step` to it in `f64`; the remaining tail is `step * i` directly. This matched torch
/// on all 102,800 `(total, count)` pairs tried (`total` up to 200,000; torch 2.15 on an AVX512
/// x86-64 CPU, whose build of this kernel still uses 8 lanes), while `f32(step * i)` for every
/// value missed 4,179 of them and 16-lane blocks 3,272. Beyond 32,768 values torch splits the
/// work across threads, which this does not model.
pub(crate) fn torch_arange_int(total: usize, count: usize) -> Vec<i64> {
    let step = total as f64 / count as f64;
    let len = (total as f64 / step).ceil() as usize;
    let blocked = len / (2 * LANES) * (2 * LANES);
    (0..len)
        .map(|i| {
            let value = if i < blocked {
                let base_index = i / LANES * LANES;
                let base = (step * base_index as f64) as f32;
                (f64::from(base) + (i - base_index) as f64 * step) as f32
            } else {
                (step * i as f64) as f32
            };
            // `.int()`: float32 -> int32, truncating toward zero.
            i64::from(value as i32)
        })
        .collect()
}

/// Frame indices to keep; see [`FrameSampling`]. Errors where transformers raises, with the
/// same conditions: both a rule and no frames, `fps` without the video's frame rate, more
/// frames than the video has, and the `count + 1`-th index past the end that
/// `torch.arange` produces for some lengths (transformers fails with an `IndexError` there).
pub(crate) fn sample_indices(
    total: usize,
    video_fps: Option<f64>,
    sampling: FrameSampling,
    limits: SamplingLimits,
) -> Result<Vec<usize>> {
    let fail = |reason: String| PreprocessError::FrameSampling {
        total_frames: total,
        reason,
    };
    let t = limits.temporal_patch_size.max(1);
    // Counted in f64 (exact for any realistic count) so that absurd requests cannot overflow.
    let count = match sampling {
        FrameSampling::All => return Ok((0..total).collect()),
        FrameSampling::NumFrames(n) => {
            // round(num_frames / temporal_patch_size) * temporal_patch_size
            (n as f64 / t as f64).round_ties_even() * t as f64
        }
        FrameSampling::Fps(fps) => {
            if !(fps.is_finite() && fps > 0.0) {
                return Err(fail(format!(
                    "expected a positive sampling fps, found {fps}"
                )));
            }
            let video_fps = match video_fps {
                Some(v) if v.is_finite() && v > 0.0 => v,
                Some(v) => {
                    return Err(fail(format!(
                        "the video's fps is {v}, not a positive number"
                    )))
                }
                None => {
                    return Err(fail(
                        "sampling at a given fps needs the video's own fps, which is unknown \
                         (set Video::fps or sample a fixed number of frames)"
                            .to_string(),
                    ))
                }
            };
            let max_frames = (limits.max_frames.min(total as u64) / t as u64) * t as u64;
            let wanted = total as f64 / video_fps * fps;
            let clamped = wanted
                .max(limits.min_frames as f64)
                .min(max_frames as f64)
                .min(total as f64);
            (clamped / t as f64).floor() * t as f64
        }
    };
    if count > total as f64 {
        return Err(fail(format!(
            "{count} frames requested (after rounding to a multiple of temporal_patch_size \
             {t}); ask for fewer"
        )));
    }
    if count == 0.0 {
        return Err(fail(format!(
            "the request rounds to 0 frames (temporal_patch_size {t})"
        )));
    }
    let count = count as usize;
    let raw = torch_arange_int(total, count);
    let mut indices = Vec::with_capacity(raw.len());
    for value in raw {
        match usize::try_from(value) {
            Ok(i) if i < total => indices.push(i),
            _ => {
                return Err(fail(format!(
                    "torch.arange(0, {total}, {total} / {count}) yields the index {value}, past \
                     the last frame (transformers raises an IndexError); ask for another number \
                     of frames"
                )))
            }
        }
    }
    Ok(indices)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SamplingLimits = SamplingLimits {
        temporal_patch_size: 2,
        min_frames: 4,
        max_frames: 768,
    };

    #[test]
    fn known_values() {
        // Values printed by transformers 5.23 / torch 2.15.
        assert_eq!(
            sample_indices(17, None, FrameSampling::NumFrames(6), LIMITS).unwrap(),
            [0, 2, 5, 8, 11, 14]
        );
        assert_eq!(
            sample_indices(17, Some(10.0), FrameSampling::Fps(2.0), LIMITS).unwrap(),
            [0, 4, 8, 12]
        );
        assert_eq!(torch_arange_int(15, 13).len(), 14);
        assert!(matches!(
            sample_indices(17, None, FrameSampling::NumFrames(14), LIMITS),
            Err(PreprocessError::FrameSampling { .. })
        ));
        assert!(sample_indices(17, None, FrameSampling::Fps(2.0), LIMITS).is_err());
        assert!(sample_indices(3, None, FrameSampling::NumFrames(6), LIMITS).is_err());
        assert!(sample_indices(3, None, FrameSampling::NumFrames(1), LIMITS).is_err());
        assert_eq!(
            sample_indices(3, None, FrameSampling::All, LIMITS).unwrap(),
            [0, 1, 2]
        );
    }
}
