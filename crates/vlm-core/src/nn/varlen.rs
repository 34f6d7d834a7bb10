//! Block-diagonal ("variable-length") attention over a packed sequence of independent segments.
//!
//! Mirrors what transformers' vision towers do with `cu_seqlens` (e.g. the per-chunk loop of
//! `VisionAttention` in `transformers/models/qwen2_vl/modeling_qwen2_vl.py`): every token
//! attends only to the tokens of its own segment (one image frame, or one attention window).
//!
//! No `(N, N)` mask is ever built. A [`VarlenPlan`], made once per forward pass and shared by
//! every layer, groups runs of consecutive equal-length segments (the frames of a video, the full
//! windows of a window row) so that each run is one batched `(segments, heads, len, head_dim)`
//! matmul.
//!
//! Segments are batched only where they already sit together. Gathering all segments of one
//! length from across the sequence (two row gathers per layer) was measured on CPU and was about
//! twice as slow as batching runs in place, and even batching runs gains nothing over one segment
//! at a time there: candle's batched CPU matmul is a loop of GEMMs and the smaller score tensors
//! stay in cache. Batching the runs is for GPUs, where each matmul is a kernel launch.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

/// Above this many attention scores per matmul, a group is split (by segments, then by query
/// rows) so that one large frame does not allocate gigabytes of f32 scores. Splitting rows is
/// exact: the softmax is row-wise.
const MAX_SCORES_PER_MATMUL: usize = 1 << 26;

/// `count` consecutive segments of `len` tokens each, starting at token `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegmentGroup {
    start: usize,
    count: usize,
    len: usize,
}

/// The segments of a packed sequence, grouped for batched attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarlenPlan {
    total: usize,
    groups: Vec<SegmentGroup>,
}

impl VarlenPlan {
    /// Plans attention over consecutive segments of `seq_lens` tokens (zero lengths are skipped).
    pub fn new(seq_lens: &[usize]) -> Self {
        let mut groups: Vec<SegmentGroup> = Vec::new();
        let mut offset = 0;
        for &len in seq_lens.iter().filter(|&&l| l > 0) {
            match groups.last_mut() {
                Some(g) if g.len == len => g.count += 1,
                _ => groups.push(SegmentGroup {
                    start: offset,
                    count: 1,
                    len,
                }),
            }
            offset += len;
        }
        Self {
            total: offset,
            groups,
        }
    }

    /// Total number of tokens the plan covers.
    pub fn total_len(&self) -> usize {
        self.total
    }

    /// Number of batched attention calls per layer (before any memory-driven splitting).
    pub fn num_batches(&self) -> usize {
        self.groups.len()
    }

    /// Whether every token attends to every other (one segment).
    fn single_segment(&self) -> bool {
        matches!(self.groups[..], [SegmentGroup { count: 1, .. }])
    }
}

/// [`varlen_attention`] straight from a fused projection's output: `qkv` `(tokens, 3 * heads *
/// head_dim)` holds each token's queries, keys and values (each `(heads, head_dim)`), and the
/// queries and keys are first rotated by the half-split rotary embedding with per-token `cos`
/// and `sin` of `(tokens, 1, head_dim / 2)` (each pair `(x[i], x[i + head_dim / 2])` turns by
/// its angle, as transformers' `apply_rotary_pos_emb_vision` does in f32). Returns `(tokens,
/// heads * head_dim)`, ready for the output projection.
///
/// On the CPU in f32 with one segment (one image's patches), the split, the rotation and the
/// change to head-major layout are one parallel pass over `qkv`, and the output comes back to
/// token-major in another: the general path below takes nine copies of the size of `q`.
pub fn varlen_attention_qkv(
    qkv: &Tensor,
    heads: usize,
    head_dim: usize,
    (cos, sin): (&Tensor, &Tensor),
    plan: &VarlenPlan,
    scale: f64,
) -> Result<Tensor> {
    let (n, width) = qkv.dims2()?;
    let half = head_dim / 2;
    if width != 3 * heads * head_dim
        || !head_dim.is_multiple_of(2)
        || cos.dims() != [n, 1, half]
        || sin.dims() != [n, 1, half]
    {
        candle_core::bail!(
            "varlen attention: expected qkv (tokens, 3 x {heads} x {head_dim}) and cos/sin \
             (tokens, 1, {half}), found {:?}, {:?} and {:?}",
            qkv.dims(),
            cos.dims(),
            sin.dims()
        );
    }
    if plan.single_segment() && plan.total == n {
        if let Some(out) = fused_single_segment(qkv, heads, head_dim, cos, sin, scale)? {
            return Ok(out);
        }
    }
    let qkv = qkv.reshape((n, 3, heads, head_dim))?;
    let part = |i: usize| qkv.narrow(1, i, 1)?.squeeze(1);
    let rotate = |x: &Tensor| -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x
            .to_dtype(DType::F32)?
            .contiguous()?
            .reshape((n, 1, heads, head_dim))?;
        // Each token is its own "batch" of one position.
        candle_nn::rotary_emb::rope_thd(&x, &cos.to_dtype(DType::F32)?, &sin.to_dtype(DType::F32)?)?
            .reshape((n, heads, head_dim))?
            .to_dtype(dtype)
    };
    let (q, k) = (rotate(&part(0)?)?, rotate(&part(1)?)?);
    varlen_attention(&q, &k, &part(2)?, plan, scale)?.reshape((n, heads * head_dim))
}

/// The CPU f32 path of [`varlen_attention_qkv`] for one segment; `None` for other devices,
/// dtypes or layouts.
fn fused_single_segment(
    qkv: &Tensor,
    heads: usize,
    head_dim: usize,
    cos: &Tensor,
    sin: &Tensor,
    scale: f64,
) -> Result<Option<Tensor>> {
    if !matches!(qkv.device(), Device::Cpu)
        || [qkv.dtype(), cos.dtype(), sin.dtype()] != [DType::F32; 3]
    {
        return Ok(None);
    }
    let (n, d, half) = (qkv.dim(0)?, head_dim, head_dim / 2);
    let (qkv, cos, sin) = (qkv.contiguous()?, cos.contiguous()?, sin.contiguous()?);
    let [q, k, v] = {
        let (Some(x), Some(c), Some(s)) = (
            super::cpu_math::cpu_f32(&qkv),
            super::cpu_math::cpu_f32(&cos),
            super::cpu_math::cpu_f32(&sin),
        ) else {
            return Ok(None);
        };
        let (x, c, s) = (&*x, &*c, &*s);
        // Part p in {q, k, v}, head j: out[p][j][t] from x[t][p][j], rotated unless p is v.
        let mut parts = [
            vec![0f32; n * heads * d],
            vec![0f32; n * heads * d],
            vec![0f32; n * heads * d],
        ];
        let [q, k, v] = &mut parts;
        q.par_chunks_mut(n * d)
            .map(|o| (0, o))
            .chain(k.par_chunks_mut(n * d).map(|o| (1, o)))
            .chain(v.par_chunks_mut(n * d).map(|o| (2, o)))
            .enumerate()
            .for_each(|(task, (p, out))| {
                let j = task % heads;
                for (t, o) in out.chunks_exact_mut(d).enumerate() {
                    let src = &x[(t * 3 + p) * heads * d + j * d..][..d];
                    if p == 2 {
                        o.copy_from_slice(src);
                        continue;
                    }
                    let (c, s) = (&c[t * half..][..half], &s[t * half..][..half]);
                    let (o1, o2) = o.split_at_mut(half);
                    let (x1, x2) = src.split_at(half);
                    for i in 0..half {
                        o1[i] = x1[i] * c[i] - x2[i] * s[i];
                        o2[i] = x1[i] * s[i] + x2[i] * c[i];
                    }
                }
            });
        parts
    };
    let shape = (1, heads, n, d);
    let (q, k, v) = (
        Tensor::from_vec(q, shape, &Device::Cpu)?,
        Tensor::from_vec(k, shape, &Device::Cpu)?,
        Tensor::from_vec(v, shape, &Device::Cpu)?,
    );
    let Some(out) = super::cpu_attention::attention(&q, &k, &v, scale)? else {
        return Ok(None);
    };
    // (1, heads, n, d) -> (n, heads * d), token rows in parallel.
    let Some(o) = super::cpu_math::cpu_f32(&out) else {
        return Ok(None);
    };
    let o = &*o;
    let mut rows = vec![0f32; n * heads * d];
    rows.par_chunks_mut(heads * d)
        .enumerate()
        .for_each(|(t, row)| {
            for (j, dst) in row.chunks_exact_mut(d).enumerate() {
                dst.copy_from_slice(&o[(j * n + t) * d..][..d]);
            }
        });
    Ok(Some(Tensor::from_vec(rows, (n, heads * d), &Device::Cpu)?))
}

/// `softmax(q k^T * scale) v` within each segment of `plan`, the softmax in f32 as transformers'
/// eager path does.
///
/// `q`, `k`, `v`: `(tokens, heads, head_dim)` in sequence order; returns the same shape.
pub fn varlen_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    plan: &VarlenPlan,
    scale: f64,
) -> Result<Tensor> {
    attention_in_segments(q, k, v, plan, scale, MAX_SCORES_PER_MATMUL)
}

/// [`varlen_attention`] with at most `budget` scores per matmul.
fn attention_in_segments(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    plan: &VarlenPlan,
    scale: f64,
    budget: usize,
) -> Result<Tensor> {
    let (n, heads, head_dim) = q.dims3()?;
    if n != plan.total || k.dims3()? != (n, heads, head_dim) || v.dims3()? != (n, heads, head_dim) {
        candle_core::bail!(
            "varlen attention: the plan covers {} tokens but q/k/v have shapes {:?}/{:?}/{:?}",
            plan.total,
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    // Row slices of a contiguous tensor stay contiguous, so each split below is one copy.
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let mut pieces = Vec::with_capacity(plan.groups.len());
    for g in &plan.groups {
        // Segments per matmul such that their scores stay within the budget (at least one).
        let per_segment = heads * g.len * g.len;
        let batch = (budget / per_segment.max(1)).clamp(1, g.count);
        let mut done = 0;
        while done < g.count {
            let count = batch.min(g.count - done);
            let start = g.start + done * g.len;
            // (count * len, heads, d) -> (count, heads, len, d)
            let split = |t: &Tensor| -> Result<Tensor> {
                t.narrow(0, start, count * g.len)?
                    .reshape((count, g.len, heads, head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let out = attend_chunked(&split(&q)?, &split(&k)?, &split(&v)?, scale, budget)?;
            pieces.push(
                out.transpose(1, 2)?
                    .reshape((count * g.len, heads, head_dim))?,
            );
            done += count;
        }
    }
    match pieces.len() {
        0 => Tensor::zeros((0, heads, head_dim), q.dtype(), q.device()),
        1 => Ok(pieces.remove(0)),
        _ => Tensor::cat(&pieces, 0),
    }
}

/// Dense attention over `(b, h, s, d)`, splitting the query rows when the scores would exceed
/// the budget.
fn attend_chunked(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, budget: usize) -> Result<Tensor> {
    let (b, h, s, _) = q.dims4()?;
    let rows = (budget / (b * h * s).max(1)).max(1);
    if rows >= s {
        return attend(q, k, v, scale);
    }
    let mut chunks = Vec::with_capacity(s.div_ceil(rows));
    let mut done = 0;
    while done < s {
        let r = rows.min(s - done);
        chunks.push(attend(&q.narrow(2, done, r)?, k, v, scale)?);
        done += r;
    }
    Tensor::cat(&chunks, 2)
}

fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let dtype = q.dtype();
    if super::gemv::widen_on_cpu(q.device(), dtype) {
        let wide = |t: &Tensor| t.to_dtype(DType::F32);
        return attend(&wide(q)?, &wide(k)?, &wide(v)?, scale)?.to_dtype(dtype);
    }
    if let Some(out) = super::cpu_attention::attention(q, k, v, scale)? {
        return Ok(out);
    }
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
    probs.matmul(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Reference: full attention with an additive block-diagonal mask.
    fn masked_reference(q: &Tensor, k: &Tensor, v: &Tensor, lens: &[usize]) -> Result<Tensor> {
        let n: usize = lens.iter().sum();
        let mut seg = Vec::with_capacity(n);
        for (i, &l) in lens.iter().enumerate() {
            seg.extend(std::iter::repeat_n(i, l));
        }
        let mask: Vec<f32> = (0..n * n)
            .map(|ij| {
                if seg[ij / n] == seg[ij % n] {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (1, n, n), q.device())?;
        let (q, k, v) = (
            q.transpose(0, 1)?.contiguous()?,
            k.transpose(0, 1)?.contiguous()?,
            v.transpose(0, 1)?.contiguous()?,
        );
        let scores = (q.matmul(&k.t()?)? * 0.5)?.broadcast_add(&mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        probs.matmul(&v)?.transpose(0, 1)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn matches_block_diagonal_mask() -> Result<()> {
        let dev = Device::Cpu;
        // Runs that batch in place (3, 3), a zero length, and lengths that recur apart (5 ... 5).
        for lens in [
            vec![3usize, 3, 5, 0, 2, 5, 5, 1],
            vec![4, 4, 4],
            vec![7],
            vec![2, 6, 2, 6],
        ] {
            let n: usize = lens.iter().sum();
            let q = Tensor::randn(0f32, 1.0, (n, 2, 4), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (n, 2, 4), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (n, 2, 4), &dev)?;
            let plan = VarlenPlan::new(&lens);
            let want = masked_reference(&q, &k, &v, &lens)?;
            let got = varlen_attention(&q, &k, &v, &plan, 0.5)?;
            assert!(max_diff(&got, &want)? < 1e-5, "lens {lens:?}");
            // A tiny score budget splits every run into single segments and query chunks.
            let split = attention_in_segments(&q, &k, &v, &plan, 0.5, 2 * 9)?;
            assert!(max_diff(&split, &want)? < 1e-5, "lens {lens:?}, split");
        }
        Ok(())
    }

    #[test]
    fn attention_from_qkv_matches_rotating_then_attending() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, d) = (3, 8);
        // One segment (the fused CPU path) and several (the general path).
        for lens in [vec![37usize], vec![5, 5, 9]] {
            let n: usize = lens.iter().sum();
            let qkv = Tensor::randn(0f32, 1.0, (n, 3 * heads * d), &dev)?;
            let angles = Tensor::randn(0f32, 2.0, (n, 1, d / 2), &dev)?;
            let (cos, sin) = (angles.cos()?, angles.sin()?);
            let plan = VarlenPlan::new(&lens);
            let got = varlen_attention_qkv(&qkv, heads, d, (&cos, &sin), &plan, 0.3)?;
            // Reference: rotate-half with the full-width table, then masked attention.
            let parts = qkv.reshape((n, 3, heads, d))?;
            let (cos2, sin2) = (
                Tensor::cat(&[&cos, &cos], 2)?,
                Tensor::cat(&[&sin, &sin], 2)?,
            );
            let rotate = |x: Tensor| -> Result<Tensor> {
                let (x1, x2) = (x.narrow(2, 0, d / 2)?, x.narrow(2, d / 2, d / 2)?);
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], 2)?;
                x.broadcast_mul(&cos2)? + rotated.broadcast_mul(&sin2)?
            };
            let part = |i: usize| parts.narrow(1, i, 1)?.squeeze(1)?.contiguous();
            let (q, k, v) = (rotate(part(0)?)?, rotate(part(1)?)?, part(2)?);
            let scale_q = (q * (0.3 / 0.5))?;
            let want = masked_reference(&scale_q, &k, &v, &lens)?.reshape((n, heads * d))?;
            assert_eq!(got.dims(), [n, heads * d]);
            assert!(max_diff(&got, &want)? < 1e-5, "lens {lens:?}");
        }
        let qkv = Tensor::zeros((4, 10), DType::F32, &dev)?;
        let cs = Tensor::zeros((4, 1, 1), DType::F32, &dev)?;
        let plan = VarlenPlan::new(&[4]);
        assert!(varlen_attention_qkv(&qkv, 2, 2, (&cs, &cs), &plan, 1.0).is_err());
        Ok(())
    }

    #[test]
    fn batches_runs_of_equal_lengths() {
        assert_eq!(VarlenPlan::new(&[4, 4, 4]).num_batches(), 1);
        assert_eq!(VarlenPlan::new(&[4, 4, 2]).num_batches(), 2);
        let plan = VarlenPlan::new(&[4, 4, 0, 4, 2, 4]);
        assert_eq!((plan.num_batches(), plan.total_len()), (3, 18));
    }

    #[test]
    fn rejects_mismatched_lengths() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::zeros((5, 1, 2), DType::F32, &dev)?;
        let plan = VarlenPlan::new(&[2, 2]);
        assert!(varlen_attention(&q, &q, &q, &plan, 1.0).is_err());
        Ok(())
    }
}
