//! Unmasked attention on the CPU in f32, one block of query rows at a time.
//!
//! Vision towers attend over ~1000 patches with 12-16 heads: through candle ops that is a
//! batched matmul into a `(heads, n, n)` score tensor (64 MB for Qwen2-VL at 448 x 448), a
//! single-threaded pass to scale it, a softmax, and a second matmul, with every intermediate
//! freshly allocated and page-faulted in. Here each rayon task takes one head and 64 query rows:
//! scores for that block (256 KB, in L2) come from one GEMM with the scale folded in, the
//! softmax runs in place, and a second GEMM writes the output rows. The arithmetic is the
//! reference's: f32 scores, max-subtracted softmax in f32, f32 accumulation.
#![allow(unsafe_code)]

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

use super::cpu_math::softmax;

/// Query rows per task.
const QUERY_BLOCK: usize = 64;

/// `softmax(q k^T * scale) v` for contiguous f32 `q` `(b, h, s, d)` and `k`, `v` `(b, h, t, d)`
/// on the CPU; `None` for anything else (the caller then uses candle ops).
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    if !matches!(q.device(), Device::Cpu) || q.dtype() != DType::F32 {
        return Ok(None);
    }
    let (b, h, s, d) = q.dims4()?;
    let (kb, kh, t, kd) = k.dims4()?;
    if (kb, kh, kd) != (b, h, d) || v.dims4()? != (b, h, t, d) || t == 0 || d == 0 {
        return Ok(None);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
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
    let qd = &qd[ql.start_offset()..ql.start_offset() + b * h * s * d];
    let kd_ = &kd_[kl.start_offset()..kl.start_offset() + b * h * t * d];
    let vd = &vd[vl.start_offset()..vl.start_offset() + b * h * t * d];
    let mut out = vec![0f32; b * h * s * d];
    let scale = scale as f32;
    out.par_chunks_mut(s * d)
        .enumerate()
        .for_each(|(head, out_head)| {
            let q = &qd[head * s * d..(head + 1) * s * d];
            let k = &kd_[head * t * d..(head + 1) * t * d];
            let v = &vd[head * t * d..(head + 1) * t * d];
            out_head
                .par_chunks_mut(QUERY_BLOCK * d)
                .enumerate()
                .for_each(|(blk, o)| {
                    let rows = o.len() / d;
                    let q = &q[blk * QUERY_BLOCK * d..][..rows * d];
                    attend_block(q, k, v, o, rows, t, d, scale);
                });
        });
    Ok(Some(Tensor::from_vec(out, (b, h, s, d), &Device::Cpu)?))
}

/// One head, `rows` query rows: `o = softmax(q k^T * scale) v`.
#[allow(clippy::too_many_arguments)]
fn attend_block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &mut [f32],
    rows: usize,
    t: usize,
    d: usize,
    scale: f32,
) {
    let mut scores = vec![0f32; rows * t];
    // SAFETY: every pointer/stride pair below describes a buffer of exactly the stated shape:
    // q (rows, d), k (t, d) read as k^T (d, t), scores (rows, t), v (t, d), o (rows, d), all
    // row-major and in bounds.
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
            k.as_ptr(),
            d as isize,
            1,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
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
            let diff = (got - want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "({b}, {h}, {s}, {t}, {d}): {diff}");
        }
        Ok(())
    }

    #[test]
    fn declines_other_dtypes() -> Result<()> {
        let x = Tensor::zeros((1, 1, 2, 4), DType::F16, &Device::Cpu)?;
        assert!(attention(&x, &x, &x, 1.0)?.is_none());
        Ok(())
    }
}
