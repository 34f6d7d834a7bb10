//! Unmasked attention on the CPU in f32, one block of query rows at a time.
//!
//! Vision towers attend over ~1000 patches with 12-16 heads: through candle ops that is a
//! batched matmul into a `(heads, n, n)` score tensor (64 MB for Qwen2-VL at 448 x 448), a
//! single-threaded pass to scale it, a softmax, and a second matmul, with every intermediate
//! freshly allocated and page-faulted in. Here each rayon task takes one head and 64 query rows:
//! scores for that block (256 KB, in L2) come from one GEMM with the scale folded in, the
//! softmax runs in place, and a second GEMM writes the output rows. Keys are transposed once
//! per head (the GEMM would otherwise gather them column by column for every block), and each
//! worker reuses its score buffer. The arithmetic is the
//! reference's: f32 scores, max-subtracted softmax in f32, f32 accumulation.
#![allow(unsafe_code)]

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

use super::cpu_math::softmax;

/// Query rows per task.
const QUERY_BLOCK: usize = 64;

/// `softmax(q k^T * scale) v` for f32 `q` `(b, h, s, d)` and `k`, `v` `(b, h, t, d)` on the CPU;
/// `None` for anything else (the caller then uses candle ops).
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    attention_gqa(q, k, v, 1, None, scale)
}

/// [`attention`] with grouped key/value heads (`k`, `v` `(b, h / n_rep, t, d)`; query head `j`
/// reads key/value head `j / n_rep`) and an optional additive f32 `mask` `(b, 1, s, t)` added to
/// the scaled scores before the softmax, as transformers' eager attention does.
pub(crate) fn attention_gqa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_rep: usize,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Option<Tensor>> {
    if !matches!(q.device(), Device::Cpu) || q.dtype() != DType::F32 || n_rep == 0 {
        return Ok(None);
    }
    let (b, h, s, d) = q.dims4()?;
    let (kb, kv, t, kd) = k.dims4()?;
    if (kb, kv * n_rep, kd) != (b, h, d) || v.dims4()? != (b, kv, t, d) || t == 0 || d == 0 {
        return Ok(None);
    }
    let mask = match mask {
        None => None,
        Some(m) if m.dims() == [b, 1, s, t] && m.dtype() == DType::F32 => Some(m.contiguous()?),
        Some(_) => return Ok(None),
    };
    // Keys and values may be views of a KV cache with room to grow (each head's rows contiguous,
    // heads further apart): those are read in place, anything else is copied once.
    let rows_in_place = |x: &Tensor| -> Result<Tensor> {
        let stride = x.stride();
        if stride[3] == 1 && stride[2] == d {
            Ok(x.clone())
        } else {
            x.contiguous()
        }
    };
    let (q, k, v) = (q.contiguous()?, rows_in_place(k)?, rows_in_place(v)?);
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (
        Storage::Cpu(CpuStorage::F32(qd)),
        Storage::Cpu(CpuStorage::F32(kd_)),
        Storage::Cpu(CpuStorage::F32(vd)),
    ) = (&*qs, &*ks, &*vs)
    else {
        return Ok(None);
    };
    let ms = mask.as_ref().map(|m| m.storage_and_layout());
    let md: Option<&[f32]> = match &ms {
        None => None,
        Some((storage, layout)) => match &**storage {
            Storage::Cpu(CpuStorage::F32(m)) => {
                Some(&m[layout.start_offset()..layout.start_offset() + b * s * t])
            }
            _ => return Ok(None),
        },
    };
    let qd = &qd[ql.start_offset()..ql.start_offset() + b * h * s * d];
    let head_rows = |data, layout, bi, hi| head_rows(data, layout, bi, hi, t * d);
    for bi in 0..b {
        for hi in 0..kv {
            if head_rows(kd_, kl, bi, hi).is_none() || head_rows(vd, vl, bi, hi).is_none() {
                candle_core::bail!("attention: key/value head ({bi}, {hi}) is out of its storage");
            }
        }
    }
    let mut out = vec![0f32; b * h * s * d];
    let scale = scale as f32;
    out.par_chunks_mut(s * d)
        .enumerate()
        .for_each(|(head, out_head)| {
            let (batch, kv_head) = (head / h, head % h / n_rep);
            let q = &qd[head * s * d..(head + 1) * s * d];
            let (Some(k), Some(v)) = (
                head_rows(kd_, kl, batch, kv_head),
                head_rows(vd, vl, batch, kv_head),
            ) else {
                return; // checked above
            };
            let kt = (s > 1).then(|| transpose(k, t, d));
            let keys = match &kt {
                Some(kt) => Keys::Columns(kt),
                None => Keys::Rows(k),
            };
            out_head
                .par_chunks_mut(QUERY_BLOCK * d)
                .enumerate()
                .for_each(|(blk, o)| {
                    let rows = o.len() / d;
                    let q = &q[blk * QUERY_BLOCK * d..][..rows * d];
                    let mask = md.map(|m| &m[(batch * s + blk * QUERY_BLOCK) * t..][..rows * t]);
                    SCORES.with_borrow_mut(|scores| {
                        // Grown, never shrunk: a fresh block of this size would be mmapped
                        // and page-faulted in on every call.
                        if scores.len() < rows * t {
                            scores.resize(rows * t, 0.0);
                        }
                        let scores = &mut scores[..rows * t];
                        attend_block(q, keys, v, mask, o, rows, t, d, scale, scores);
                    });
                });
        });
    Ok(Some(Tensor::from_vec(out, (b, h, s, d), &Device::Cpu)?))
}

/// The `len` values of head `(bi, hi)` of a `(b, heads, t, d)` tensor whose rows are contiguous.
fn head_rows<'a>(
    data: &'a [f32],
    layout: &candle_core::Layout,
    bi: usize,
    hi: usize,
    len: usize,
) -> Option<&'a [f32]> {
    let stride = layout.stride();
    let at = layout.start_offset() + bi * stride[0] + hi * stride[1];
    data.get(at..at + len)
}

/// One head's keys: `(t, d)` rows as stored, or transposed to `(d, t)`.
#[derive(Clone, Copy)]
enum Keys<'a> {
    Rows(&'a [f32]),
    Columns(&'a [f32]),
}

/// `(rows, cols)` row-major to `(cols, rows)` row-major.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 16;
    let mut out = vec![0f32; rows * cols];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = x[r * cols + c];
                }
            }
        }
    }
    out
}

thread_local! {
    /// Each worker's score block, reused across calls.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How many leading keys any of the `rows` mask rows (of `t` values each) leaves visible: one
/// past the last finite value, or all `t` if none is (a fully masked row is then the
/// reference's NaN).
fn visible_keys(mask: &[f32], rows: usize, t: usize) -> usize {
    let last = mask
        .chunks_exact(t)
        .take(rows)
        .filter_map(|row| row.iter().rposition(|m| *m > f32::NEG_INFINITY))
        .max();
    last.map_or(t, |j| j + 1)
}

/// One head, `rows` query rows: `o = softmax(q k^T * scale + mask) v`, with the `(rows, t)`
/// score block in `scores`.
#[allow(clippy::too_many_arguments)]
fn attend_block(
    q: &[f32],
    k: Keys<'_>,
    v: &[f32],
    mask: Option<&[f32]>,
    o: &mut [f32],
    rows: usize,
    t: usize,
    d: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let _flush = super::cpu_math::FlushSubnormals::new();
    // Keys past the last one any of these rows can see (a causal block's future) get
    // probability exactly 0: leave them out of both products and the softmax.
    let (t_all, t) = (t, mask.map_or(t, |m| visible_keys(m, rows, t)));
    // k^T as a (d, t) matrix: its column and row strides.
    let (k_ptr, k_cs, k_rs) = match k {
        Keys::Rows(k) => (k.as_ptr(), d as isize, 1),
        Keys::Columns(kt) => (kt.as_ptr(), 1, t_all as isize),
    };
    // SAFETY: every pointer/stride pair below describes a buffer of exactly the stated shape
    // (`t <= t_all` keys): q (rows, d), k (t, d) read as k^T (d, t), scores (rows, t), v (t, d),
    // o (rows, d), all row-major and in bounds.
    unsafe {
        gemm::gemm(
            rows,
            t,
            d,
            scores.as_mut_ptr(),
            1,
            t as isize,
            false,
            q.as_ptr(),
            1,
            d as isize,
            k_ptr,
            k_cs,
            k_rs,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    let scores = &mut scores[..rows * t];
    if let Some(mask) = mask {
        for (row, m) in scores.chunks_exact_mut(t).zip(mask.chunks_exact(t_all)) {
            for (x, m) in row.iter_mut().zip(m) {
                *x += m;
            }
        }
    }
    for row in scores.chunks_exact_mut(t) {
        softmax(row);
    }
    // SAFETY: as above.
    unsafe {
        gemm::gemm(
            rows,
            d,
            t,
            o.as_mut_ptr(),
            1,
            d as isize,
            false,
            scores.as_ptr(),
            1,
            t as isize,
            v.as_ptr(),
            1,
            d as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        // Query rows that leave a partial block, keys of another length, two batches.
        for (b, h, s, t, d) in [
            (2usize, 3usize, 70usize, 50usize, 16usize),
            (1, 2, 64, 64, 80),
            (1, 1, 1, 5, 8),
        ] {
            let q = Tensor::randn(0f32, 1.0, (b, h, s, d), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev)?;
            let want =
                candle_nn::ops::softmax_last_dim(&(q.matmul(&k.t()?)? * 0.3)?)?.matmul(&v)?;
            let got = attention(&q, &k, &v, 0.3)?.expect("f32 on CPU is covered");
            let diff = max_abs_diff(&got, &want)?;
            assert!(diff < 1e-5, "({b}, {h}, {s}, {t}, {d}): {diff}");
        }
        Ok(())
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn grouped_heads_and_causal_mask_match_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let (b, kv, n_rep, s, t, d) = (2usize, 2usize, 3usize, 70usize, 75usize, 20usize);
        let q = Tensor::randn(0f32, 1.0, (b, kv * n_rep, s, d), &dev)?;
        // Keys and values as views of a cache with spare room, read in place.
        let k = Tensor::randn(0f32, 1.0, (b, kv, t + 9, d), &dev)?.narrow(2, 0, t)?;
        let v = Tensor::randn(0f32, 1.0, (b, kv, t + 9, d), &dev)?.narrow(2, 0, t)?;
        assert!(!k.is_contiguous());
        // Causal over the last s of t keys; the second batch also hides its first key.
        let mask: Vec<f32> = (0..b * s * t)
            .map(|i| {
                let (bi, qi, ki) = (i / (s * t), i / t % s, i % t);
                if ki > qi + (t - s) || (bi == 1 && ki == 0) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (b, 1, s, t), &dev)?;
        let rep = |x: &Tensor| -> Result<Tensor> {
            x.unsqueeze(2)?
                .expand((b, kv, n_rep, t, d))?
                .reshape((b, kv * n_rep, t, d))
        };
        let scores = (q.matmul(&rep(&k)?.t()?)? * 0.3)?.broadcast_add(&mask)?;
        let want = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&rep(&v)?)?;
        let got = attention_gqa(&q, &k, &v, n_rep, Some(&mask), 0.3)?.expect("f32 on CPU");
        let contiguous = attention_gqa(&q, &k.contiguous()?, &v.contiguous()?, n_rep, None, 0.3)?
            .expect("f32 on CPU");
        let unmasked = candle_nn::ops::softmax_last_dim(&(q.matmul(&rep(&k)?.t()?)? * 0.3)?)?
            .matmul(&rep(&v)?)?;
        let diff_unmasked = max_abs_diff(&contiguous, &unmasked)?;
        assert!(diff_unmasked < 1e-5, "{diff_unmasked}");
        let diff = max_abs_diff(&got, &want)?;
        assert!(diff < 1e-5, "{diff}");
        // One query row (a decode step), masked, keys read in place.
        let (q1, m1) = (q.narrow(2, s - 1, 1)?, mask.narrow(2, s - 1, 1)?);
        let got = attention_gqa(&q1, &k, &v, n_rep, Some(&m1), 0.3)?.expect("f32 on CPU");
        let diff = max_abs_diff(&got, &want.narrow(2, s - 1, 1)?)?;
        assert!(diff < 1e-5, "decode row: {diff}");
        Ok(())
    }

    #[test]
    fn declines_other_dtypes() -> Result<()> {
        let x = Tensor::zeros((1, 1, 2, 4), DType::F16, &Device::Cpu)?;
        assert!(attention(&x, &x, &x, 1.0)?.is_none());
        Ok(())
    }
}
