//! The products behind [`Linear`](super::Linear)'s forward pass, one per weight storage and
//! row count: packed f32, quantized blocks decoded to f32 for prefills candle has no int8 GEMM
//! for, and reduced-precision weights widened to f32 a block of rows at a time.

use rayon::prelude::*;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Result, Tensor};

use super::Quantization;
use crate::nn::sgemm::{self, Epilogue, PackedF32};

/// `x W^T + b` on packed f32 weights; `x` is widened to f32 if needed and the result rounded
/// back.
pub(super) fn packed_matmul(
    x: &Tensor,
    w: &PackedF32,
    bias: Option<&Tensor>,
    then: Epilogue,
) -> Result<Tensor> {
    let (rows, in_dim) = x.dims2()?;
    if in_dim != w.in_features() {
        candle_core::bail!(
            "linear layer: expected inputs of width {}, found {in_dim}",
            w.in_features()
        );
    }
    let xf = x.to_dtype(DType::F32)?.contiguous()?;
    let bias = bias
        .map(|b| b.to_dtype(DType::F32)?.contiguous())
        .transpose()?;
    let y = with_cpu_f32(&xf, "inputs", |x| match &bias {
        Some(b) => with_cpu_f32(b, "bias", |b| w.matmul_t(x, rows, Some(b), then)),
        None => w.matmul_t(x, rows, None, then),
    })?;
    Tensor::from_vec(y, (rows, w.out_features()), &Device::Cpu)?.to_dtype(x.dtype())
}

/// Calls `f` on the values of a contiguous f32 CPU tensor.
pub(super) fn with_cpu_f32<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let Some(values) = crate::nn::cpu_math::cpu_f32(t) else {
        candle_core::bail!(
            "linear layer: packed weights take contiguous f32 CPU {what}, found {:?} on {:?}",
            t.dtype(),
            t.device()
        );
    };
    f(&values)
}

/// Whether `rows` activation rows (a prefill: more than the decode kernels take) against these
/// quantized weights run as an f32 GEMM on weights decoded panel by panel, because candle has
/// no int8 GEMM for them. candle's fast x86 Q8_0 GEMM (weights repacked in tiles of 16 output
/// rows) needs widths that are multiples of 256 and a VNNI dot-product instruction
/// (AVX512-VNNI or AVX-VNNI); anywhere else it falls back to one dot product per row pair,
/// 5x slower than the f32 GEMM. Measured with `benches/benches/ops.rs` (ms, 2 threads),
/// f32 / candle Q8_0 / decoded Q8_0:
/// - AVX-512 + VNNI: 1262x576x960 5.7 / 54.9 / 6.1, 1262x576x3072 14.8-16.3 / 156 / 15.8
///   (off the grid); 412x1536x8960 38.8 / 24.5 / 50.7 and 1262x1536x576 9.5-11.6 both ways
///   (on the grid, where candle's int8 kernels win or tie);
/// - AVX2 without VNNI (AMD Zen 3): 412x1536x8960 100.6 / 550.1 / -, 1262x1536x576
///   19.7 / 97.5 / - (on the grid, no int8 kernel).
///
/// Q4_K needs no such rule: candle's repacked Q4_K GEMM runs on plain AVX2 too (412x1536x8960
/// 70.5 ms there) and its widths are on the grid by construction. The decoded product is also
/// the more exact one (no 8-bit activations).
pub(super) fn prefill_dequantized(kind: Quantization, w: &QTensor, rows: usize) -> bool {
    let Ok((n, k)) = w.shape().dims2() else {
        return false;
    };
    rows > crate::nn::gemv::MAX_ROWS
        && kind == Quantization::Q8_0
        && matches!(w.device(), candle_core::Device::Cpu)
        && !candle_has_q8_0_gemm(n, k)
}

/// Whether candle's CPU matmul multiplies a Q8_0 `(n, k)` weight with an int8 GEMM (rather
/// than a dot product per row pair). On x86 this follows `candle-core`'s `repack_x86::select`.
pub(super) fn candle_has_q8_0_gemm(n: usize, k: usize) -> bool {
    let on_grid = k > 0 && k.is_multiple_of(256);
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let vnni = *VNNI.get_or_init(|| {
            (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
                || (is_x86_feature_detected!("avxvnni") && is_x86_feature_detected!("avx2"))
        });
        on_grid && n.is_multiple_of(16) && vnni
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = n;
        on_grid
    }
}

/// `x W^T (+ bias)` for a Q8_0 `W`, decoded to f32 a panel group at a time by our packed
/// GEMM where it runs (no f32 copy of the whole weight is held), else [`WIDEN_BLOCK_ROWS`] rows
/// at a time for candle's f32 GEMM. Either way the values are the f32 product with the
/// dequantized weight, rounded back to `x`'s dtype.
pub(super) fn dequantized_matmul(x: &Tensor, w: &QTensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let Some(rows) = crate::nn::qgemv::QuantRows::new(w)? else {
        candle_core::bail!(
            "expected a Q8_0 weight on the CPU, found {:?} on {:?}",
            w.dtype(),
            w.device()
        );
    };
    let (n, k) = (
        sgemm::WeightRows::out_features(&rows),
        sgemm::WeightRows::in_features(&rows),
    );
    let xf = x.to_dtype(DType::F32)?.contiguous()?;
    let y = if sgemm::available() {
        let bias = bias
            .map(|b| b.to_dtype(DType::F32)?.contiguous())
            .transpose()?;
        let m = xf.dim(0)?;
        let y = with_cpu_f32(&xf, "inputs", |x| match &bias {
            Some(b) => with_cpu_f32(b, "bias", |b| {
                sgemm::matmul_t_rows(&rows, x, m, Some(b), Epilogue::None)
            }),
            None => sgemm::matmul_t_rows(&rows, x, m, None, Epilogue::None),
        })?;
        Tensor::from_vec(y, (m, n), &Device::Cpu)?
    } else {
        let y = widened_matmul(&xf, n, |start, block| {
            block
                .par_chunks_exact_mut(k)
                .enumerate()
                .for_each(|(i, row)| rows.decode_row(start + i, row));
            Ok(())
        })?;
        match bias {
            Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?)?,
            None => y,
        }
    };
    y.to_dtype(x.dtype())
}

/// `x W^T` in f32 with `W` `(out, in)` widened [`WIDEN_BLOCK_ROWS`] rows at a time by
/// `widen(start, block)` (which fills `block` with the rows from `start` on, row-major) into
/// one reused buffer, each block's product written in place into the output's columns by the
/// `gemm` crate (candle's own GEMM), rounded back to `x`'s dtype at the end.
pub(super) fn widened_matmul(
    x: &Tensor,
    out: usize,
    widen: impl Fn(usize, &mut [f32]) -> Result<()>,
) -> Result<Tensor> {
    let xf = x.to_dtype(DType::F32)?.contiguous()?;
    let (m, k) = xf.dims2()?;
    let mut y = vec![0f32; m * out];
    let mut block = vec![0f32; WIDEN_BLOCK_ROWS.min(out) * k];
    with_cpu_f32(&xf, "inputs", |xs| {
        let mut start = 0;
        while start < out {
            let n = WIDEN_BLOCK_ROWS.min(out - start);
            let block = &mut block[..n * k];
            widen(start, block)?;
            sgemm::matmul_t_into_columns(xs, m, block, n, &mut y, start)?;
            start += n;
        }
        Ok(())
    })?;
    Tensor::from_vec(y, (m, out), &Device::Cpu)?.to_dtype(x.dtype())
}

/// Output rows of a reduced-precision weight widened to f32 at a time: small enough that the
/// widened block stays in cache and no full f32 copy of the weight is ever allocated.
pub(super) const WIDEN_BLOCK_ROWS: usize = 2048;

/// `x W^T` on the fastest path for the device, dtype and row count. On CPU: our streaming kernels
/// for decode steps (f32, bf16, f16); for more rows in bf16/f16, candle's f32 GEMM on blocks of
/// weight rows widened to f32 (its own bf16/f16 CPU GEMM is many times slower, and widening is
/// exact; the products are rounded back once, as PyTorch's reduced-precision matmul does).
/// Candle's matmul everywhere else.
pub(super) fn dense_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if let Some(y) = crate::nn::gemv::matmul_t(x, w)? {
        return Ok(y);
    }
    if crate::nn::gemv::widen_on_cpu(x.device(), x.dtype()) {
        let k = w.dim(1)?;
        return widened_matmul(x, w.dim(0)?, |start, block| {
            let rows = w.narrow(0, start, block.len() / k)?.to_dtype(DType::F32)?;
            with_cpu_f32(&rows.contiguous()?, "weights", |values| {
                block.copy_from_slice(values);
                Ok(())
            })
        });
    }
    x.matmul(&w.t()?)
}
