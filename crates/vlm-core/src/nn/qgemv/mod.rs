//! Decode-step products against GGML-quantized weights (Q8_0, Q4_K) on x86 CPUs with AVX-512
//! VNNI or AVX2.
//!
//! A decode step streams every weight once, so a quantized model decodes as fast as its bytes
//! move. candle 0.11's CPU path re-packs Q4_K into tiles that carry f32 sub-block scales (a
//! third more bytes than the GGML blocks) and synchronises a spinning pool per call; these
//! kernels read candle's GGML blocks in place (no second copy of the weights) and spread the
//! weight rows over rayon's pool.
//!
//! As in GGML, the activations are quantized to 8 bits first (Q8_0: one f32 scale per 32 values;
//! Q4_K: one per 256, with the sum of every 32) so that the inner products are exact integer
//! dot products (`vpdpbusd`), scaled once per block in f32.
//!
//! Activation rows above [`MAX_ROWS`](super::gemv::MAX_ROWS), other devices, other formats and
//! CPUs without these instructions return `None`: the caller then uses candle's quantized
//! matmul.
#![allow(unsafe_code)]
// The SIMD kernels exist only on x86_64; elsewhere every call is declined and the activation
// quantization is only exercised by the tests' scalar reference.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use super::gemv::MAX_ROWS;

/// Weight rows per rayon task.
const ROWS_PER_TASK: usize = 32;

/// Q8_0: 32 weights, an f16 scale then 32 `i8`.
const Q8_0_BLOCK: usize = 32;
const Q8_0_BYTES: usize = 34;

/// Q4_K: 256 weights: f16 `d`, f16 `dmin`, 12 bytes of 6-bit sub-block scales and mins, then
/// 128 bytes of 4-bit values.
const QK_K: usize = 256;
const Q4K_BYTES: usize = 144;

/// `x W^T` for `x` `(rows, in)` (`rows <= MAX_ROWS`, any float dtype) and a quantized `W`
/// `(out, in)` on the CPU, in `x`'s dtype; `None` when these kernels do not apply.
pub(crate) fn matmul_t(x: &Tensor, w: &QTensor) -> Result<Option<Tensor>> {
    let Some(kernels) = kernels() else {
        return Ok(None);
    };
    if !matches!(x.device(), Device::Cpu) || !matches!(w.device(), Device::Cpu) {
        return Ok(None);
    }
    let (rows, in_dim) = x.dims2()?;
    let (out_dim, w_in) = w.shape().dims2()?;
    if rows == 0 || rows > MAX_ROWS || in_dim != w_in {
        return Ok(None);
    }
    let (block, block_bytes) = match w.dtype() {
        GgmlDType::Q8_0 => (Q8_0_BLOCK, Q8_0_BYTES),
        GgmlDType::Q4K => (QK_K, Q4K_BYTES),
        _ => return Ok(None),
    };
    if in_dim % block != 0 {
        return Ok(None);
    }
    let data = w.data()?;
    let row_bytes = in_dim / block * block_bytes;
    if data.len() != out_dim * row_bytes {
        candle_core::bail!(
            "quantized weight {:?}: expected {} bytes of {:?} blocks, found {}",
            w.shape(),
            out_dim * row_bytes,
            w.dtype(),
            data.len()
        );
    }
    let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let y = match w.dtype() {
        GgmlDType::Q8_0 => {
            let acts = ActsQ8_0::new(&xs, in_dim);
            run(rows, out_dim, &data, row_bytes, |ws, out| {
                (kernels.q8_0)(&acts, ws, out)
            })
        }
        _ => {
            let acts = ActsQ8K::new(&xs, in_dim);
            run(rows, out_dim, &data, row_bytes, |ws, out| {
                (kernels.q4k)(&acts, ws, out)
            })
        }
    };
    Ok(Some(
        Tensor::from_vec(y, (rows, out_dim), &Device::Cpu)?.to_dtype(x.dtype())?,
    ))
}

/// `y[r][o]`, row-major `(rows, out)`, with `band(weight_rows, out_block)` filling a
/// `(rows, band)` block for a band of weight rows.
fn run(
    rows: usize,
    out_dim: usize,
    w: &[u8],
    row_bytes: usize,
    band: impl Fn(&[u8], &mut [f32]) + Sync,
) -> Vec<f32> {
    if rows == 1 {
        let mut y = vec![0f32; out_dim];
        y.par_chunks_mut(ROWS_PER_TASK)
            .zip(w.par_chunks(ROWS_PER_TASK * row_bytes))
            .for_each(|(ys, ws)| band(ws, ys));
        return y;
    }
    let blocks: Vec<Vec<f32>> = w
        .par_chunks(ROWS_PER_TASK * row_bytes)
        .map(|ws| {
            let mut block = vec![0f32; rows * (ws.len() / row_bytes)];
            band(ws, &mut block);
            block
        })
        .collect();
    let mut y = vec![0f32; out_dim * rows];
    for (b, block) in blocks.iter().enumerate() {
        let n = block.len() / rows;
        for (r, vals) in block.chunks(n).enumerate() {
            let at = r * out_dim + b * ROWS_PER_TASK;
            y[at..at + n].copy_from_slice(vals);
        }
    }
    y
}

/// Symmetric 8-bit quantization of `xs` with the scale `max|x| / 127` (so no value is -128):
/// writes the values to `q` and returns the scale.
fn quantize_block(xs: &[f32], q: &mut [i8]) -> f32 {
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    // |v * id| <= 127: adding and subtracting 1.5 * 2^23 rounds to nearest (ties to even, as
    // GGML's SIMD quantizers do) in plain arithmetic that vectorizes, where `round` is a libm
    // call per value.
    const ROUND: f32 = 12_582_912.0;
    for (o, v) in q.iter_mut().zip(xs) {
        *o = ((v * id + ROUND) - ROUND) as i8;
    }
    d
}

/// Activation rows quantized in blocks of 32 (GGML's Q8_0).
struct ActsQ8_0 {
    /// `(rows, in)` values.
    q: Vec<i8>,
    /// `(rows, in / 32)` scales.
    d: Vec<f32>,
    /// `(rows, in / 32)`: `-128` times the sum of each block's values, which takes back what
    /// reading the weights as unsigned (`w + 128`) adds to a block's dot product.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    offset: Vec<i32>,
    in_dim: usize,
}

impl ActsQ8_0 {
    fn new(xs: &[f32], in_dim: usize) -> Self {
        let mut q = vec![0i8; xs.len()];
        let d = xs
            .chunks_exact(Q8_0_BLOCK)
            .zip(q.chunks_exact_mut(Q8_0_BLOCK))
            .map(|(x, q)| quantize_block(x, q))
            .collect();
        let offset = q
            .chunks_exact(Q8_0_BLOCK)
            .map(|b| -128 * b.iter().map(|&v| v as i32).sum::<i32>())
            .collect();
        Self {
            q,
            d,
            offset,
            in_dim,
        }
    }

    fn rows(&self) -> usize {
        self.q.len() / self.in_dim
    }
}

/// Activation rows quantized in blocks of 256 (GGML's Q8_K), the values of each block stored in
/// the order the Q4_K kernel consumes them (see [`ActsQ8K::new`]), with the sum of every 32.
struct ActsQ8K {
    /// `(rows, in)` values, permuted within each 256-block.
    q: Vec<i8>,
    /// `(rows, in / 256)` scales.
    d: Vec<f32>,
    /// `(rows, in / 32)` sums of the values of each sub-block (in weight order).
    sums: Vec<i16>,
    in_dim: usize,
}

impl ActsQ8K {
    /// A Q4_K block holds sub-blocks `2j` and `2j + 1` in the low and high nibbles of the same 32
    /// bytes. The kernel splits each 64 bytes into a low-nibble vector (sub-blocks `4p`,
    /// `4p + 2`) and a high-nibble one (`4p + 1`, `4p + 3`), so the activations are laid out as
    /// sub-blocks `[0, 2, 1, 3, 4, 6, 5, 7]`.
    fn new(xs: &[f32], in_dim: usize) -> Self {
        const ORDER: [usize; 8] = [0, 2, 1, 3, 4, 6, 5, 7];
        let blocks = xs.len() / QK_K;
        let mut q = vec![0i8; xs.len()];
        let mut d = Vec::with_capacity(blocks);
        let mut sums = Vec::with_capacity(blocks * 8);
        let mut plain = [0i8; QK_K];
        for (x, out) in xs.chunks_exact(QK_K).zip(q.chunks_exact_mut(QK_K)) {
            d.push(quantize_block(x, &mut plain));
            for sub in plain.chunks_exact(32) {
                sums.push(sub.iter().map(|&v| v as i16).sum());
            }
            for (slot, &sub) in out.chunks_exact_mut(32).zip(&ORDER) {
                slot.copy_from_slice(&plain[sub * 32..sub * 32 + 32]);
            }
        }
        Self { q, d, sums, in_dim }
    }

    fn rows(&self) -> usize {
        self.q.len() / self.in_dim
    }
}

/// Unpacks a Q4_K block's twelve scale bytes into eight 6-bit scales and eight 6-bit mins (one
/// byte each, little-endian in the returned words).
///
/// Sub-blocks 0-3 keep their scale and min in the low six bits of bytes 0-3 and 4-7. Sub-blocks
/// 4-7 keep the low four bits of both in bytes 8-11 (scale low nibble, min high nibble) and the
/// top two bits in the spare top bits of bytes 0-3 (scales) and 4-7 (mins).
#[cfg(any(test, target_arch = "x86_64"))]
#[inline(always)]
fn unpack_scales(s: &[u8]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (w0, w1, w2) = (word(0), word(4), word(8));
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let sc_lo = w0 & LOW6;
    let mn_lo = w1 & LOW6;
    let sc_hi = (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4);
    let mn_hi = ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4);
    (
        sc_lo as u64 | (sc_hi as u64) << 32,
        mn_lo as u64 | (mn_hi as u64) << 32,
    )
}

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `out[r * band + o] = dot(x[r], w[o])` for the weight rows `ws` of one band.
type BandQ8_0 = fn(&ActsQ8_0, &[u8], &mut [f32]);
type BandQ8K = fn(&ActsQ8K, &[u8], &mut [f32]);

#[derive(Clone, Copy)]
struct Kernels {
    q8_0: BandQ8_0,
    q4k: BandQ8K,
}

/// The SIMD kernels, when this CPU has what they need.
fn kernels() -> Option<Kernels> {
    static KERNELS: std::sync::OnceLock<Option<Kernels>> = std::sync::OnceLock::new();
    *KERNELS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            x86::best().or_else(avx2::kernels)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    })
}

/// Plain integer reference of the Q8_0 kernel (same arithmetic, scalar).
#[cfg(test)]
fn band_q8_0_scalar(acts: &ActsQ8_0, ws: &[u8], out: &mut [f32]) {
    let blocks = acts.in_dim / Q8_0_BLOCK;
    let row_bytes = blocks * Q8_0_BYTES;
    let n = ws.len() / row_bytes;
    for r in 0..acts.rows() {
        for (o, w) in ws.chunks_exact(row_bytes).enumerate() {
            let mut acc = 0f32;
            for b in 0..blocks {
                let blk = &w[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
                let xq = &acts.q[r * acts.in_dim + b * 32..][..32];
                let dot: i32 = blk[2..]
                    .iter()
                    .zip(xq)
                    .map(|(&wv, &xv)| wv as i8 as i32 * xv as i32)
                    .sum();
                acc += dot as f32 * f16_at(blk, 0) * acts.d[r * blocks + b];
            }
            out[r * n + o] = acc;
        }
    }
}

/// Plain integer reference of the Q4_K kernel (same arithmetic, scalar).
#[cfg(test)]
fn band_q4k_scalar(acts: &ActsQ8K, ws: &[u8], out: &mut [f32]) {
    const ORDER: [usize; 8] = [0, 2, 1, 3, 4, 6, 5, 7];
    let blocks = acts.in_dim / QK_K;
    let row_bytes = blocks * Q4K_BYTES;
    let n = ws.len() / row_bytes;
    for r in 0..acts.rows() {
        for (o, w) in ws.chunks_exact(row_bytes).enumerate() {
            let mut acc = 0f32;
            for b in 0..blocks {
                let blk = &w[b * Q4K_BYTES..(b + 1) * Q4K_BYTES];
                let (sc, mn) = unpack_scales(&blk[4..16]);
                let xq = &acts.q[r * acts.in_dim + b * QK_K..][..QK_K];
                let sums = &acts.sums[(r * blocks + b) * 8..][..8];
                let (mut isum, mut imin) = (0i32, 0i32);
                for sub in 0..8 {
                    // Sub-block `sub` is in the low (even) or high (odd) nibbles of 32 bytes.
                    let bytes = &blk[16 + (sub / 2) * 32..][..32];
                    let slot = ORDER.iter().position(|&s| s == sub).unwrap_or(0);
                    let x = &xq[slot * 32..slot * 32 + 32];
                    let dot: i32 = bytes
                        .iter()
                        .zip(x)
                        .map(|(&q, &xv)| {
                            let v = if sub % 2 == 0 { q & 0x0f } else { q >> 4 };
                            v as i32 * xv as i32
                        })
                        .sum();
                    isum += ((sc >> (8 * sub)) & 0xff) as i32 * dot;
                    imin += ((mn >> (8 * sub)) & 0xff) as i32 * sums[sub] as i32;
                }
                let dx = acts.d[r * blocks + b];
                acc += f16_at(blk, 0) * dx * isum as f32 - f16_at(blk, 2) * dx * imin as f32;
            }
            out[r * n + o] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
mod rows;
#[cfg(target_arch = "x86_64")]
mod x86;

pub(crate) use rows::QuantRows;

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    fn relative_error(a: &[f32], b: &[f32]) -> f32 {
        let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        let den: f32 = b.iter().map(|y| y * y).sum();
        (num / den).sqrt()
    }

    #[test]
    fn scale_unpacking_matches_the_dequantized_blocks() -> Result<()> {
        // One Q4_K row of 256 with widely varying sub-block ranges: dequantizing it by hand
        // with our unpacking must equal candle's dequantization.
        let mut seed = 7u64;
        let xs: Vec<f32> = random(QK_K, &mut seed)
            .iter()
            .enumerate()
            .map(|(i, v)| v * (1 + i / 32 * 9) as f32 + (i / 32) as f32 * 0.3)
            .collect();
        let t = Tensor::from_vec(xs, (1, QK_K), &Device::Cpu)?;
        let q = QTensor::quantize(&t, GgmlDType::Q4K)?;
        let want: Vec<f32> = q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        let data = q.data()?;
        let (sc, mn) = unpack_scales(&data[4..16]);
        let (d, dmin) = (f16_at(&data, 0), f16_at(&data, 2));
        for (i, w) in want.iter().enumerate() {
            let sub = i / 32;
            let byte = data[16 + (sub / 2) * 32 + i % 32];
            let v = if sub % 2 == 0 { byte & 0x0f } else { byte >> 4 };
            let s = ((sc >> (8 * sub)) & 0xff) as f32;
            let m = ((mn >> (8 * sub)) & 0xff) as f32;
            let got = d * s * v as f32 - dmin * m;
            assert!(
                (got - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{i}: {got} vs {w}"
            );
        }
        Ok(())
    }

    /// The SIMD kernels against the scalar integer reference (same quantized activations) and
    /// against the f32 product with the dequantized weights, for 1-4 activation rows, widths of
    /// one and several blocks, and row counts that leave partial rayon bands.
    #[test]
    fn kernels_match_the_reference_and_the_dequantized_product() -> Result<()> {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for (dtype, in_dim, bound) in [
            (GgmlDType::Q8_0, 32, 0.02),
            (GgmlDType::Q8_0, 1536, 0.02),
            (GgmlDType::Q4K, 256, 0.08),
            (GgmlDType::Q4K, 1536, 0.08),
        ] {
            for (rows, out_dim) in [(1usize, 37usize), (3, 70), (4, 33), (2, 39)] {
                let w = Tensor::from_vec(
                    random(out_dim * in_dim, &mut seed),
                    (out_dim, in_dim),
                    &Device::Cpu,
                )?;
                let q = QTensor::quantize(&w, dtype)?;
                let x = Tensor::from_vec(
                    random(rows * in_dim, &mut seed),
                    (rows, in_dim),
                    &Device::Cpu,
                )?;
                let dense = x.matmul(&q.dequantize(&Device::Cpu)?.t()?)?;
                let want: Vec<f32> = dense.flatten_all()?.to_vec1()?;
                // Scalar integer reference.
                let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
                let data = q.data()?;
                let row_bytes = data.len() / out_dim;
                let scalar = match dtype {
                    GgmlDType::Q8_0 => {
                        let acts = ActsQ8_0::new(&xs, in_dim);
                        run(rows, out_dim, &data, row_bytes, |ws, o| {
                            band_q8_0_scalar(&acts, ws, o)
                        })
                    }
                    _ => {
                        let acts = ActsQ8K::new(&xs, in_dim);
                        run(rows, out_dim, &data, row_bytes, |ws, o| {
                            band_q4k_scalar(&acts, ws, o)
                        })
                    }
                };
                let err = relative_error(&scalar, &want);
                assert!(
                    err < bound,
                    "{dtype:?} {rows}x{in_dim}x{out_dim}: scalar error {err}"
                );
                let Some(got) = matmul_t(&x, &q)? else {
                    assert!(
                        kernels().is_none(),
                        "{dtype:?}: kernels present but not used"
                    );
                    continue;
                };
                assert_eq!(got.dims(), &[rows, out_dim]);
                let got: Vec<f32> = got.flatten_all()?.to_vec1()?;
                for (i, (g, s)) in got.iter().zip(&scalar).enumerate() {
                    let tol = 1e-4 * s.abs().max(1.0);
                    assert!(
                        (g - s).abs() <= tol,
                        "{dtype:?} {rows}x{in_dim}x{out_dim} [{i}]: {g} vs {s}"
                    );
                }
            }
        }
        Ok(())
    }

    /// The AVX2 kernels, wherever AVX2 exists (on AVX-512 CPUs too, where `matmul_t` takes
    /// the AVX-512 ones), against the scalar integer references; Q8_0 weights holding -128 too.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernels_match_the_reference() -> Result<()> {
        let Some(kernels) = avx2::kernels() else {
            return Ok(());
        };
        let q4k = kernels.q4k;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for (dtype, rows, out_dim, in_dim) in [
            (GgmlDType::Q8_0, 1usize, 37usize, 32usize),
            (GgmlDType::Q8_0, 2, 39, 1536),
            (GgmlDType::Q8_0, 3, 70, 576),
            (GgmlDType::Q8_0, 4, 33, 96),
            (GgmlDType::Q4K, 1, 37, 256),
            (GgmlDType::Q4K, 2, 39, 1536),
            (GgmlDType::Q4K, 3, 70, 512),
            (GgmlDType::Q4K, 4, 33, 256),
        ] {
            let w = Tensor::from_vec(
                random(out_dim * in_dim, &mut seed),
                (out_dim, in_dim),
                &Device::Cpu,
            )?;
            let q = QTensor::quantize(&w, dtype)?;
            let mut data = q.data()?.to_vec();
            let xs = random(rows * in_dim, &mut seed);
            let row_bytes = data.len() / out_dim;
            let (want, got) = if dtype == GgmlDType::Q8_0 {
                // GGML files may hold -128, which quantizing never writes.
                data[2] = 0x80;
                let acts = ActsQ8_0::new(&xs, in_dim);
                (
                    run(rows, out_dim, &data, row_bytes, |ws, o| {
                        band_q8_0_scalar(&acts, ws, o)
                    }),
                    run(rows, out_dim, &data, row_bytes, |ws, o| {
                        (kernels.q8_0)(&acts, ws, o)
                    }),
                )
            } else {
                let acts = ActsQ8K::new(&xs, in_dim);
                (
                    run(rows, out_dim, &data, row_bytes, |ws, o| {
                        band_q4k_scalar(&acts, ws, o)
                    }),
                    run(rows, out_dim, &data, row_bytes, |ws, o| q4k(&acts, ws, o)),
                )
            };
            for (i, (g, s)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - s).abs() <= 1e-4 * s.abs().max(1.0),
                    "{dtype:?} {rows}x{in_dim}x{out_dim} [{i}]: {g} vs {s}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn declines_what_it_does_not_cover() -> Result<()> {
        let w = Tensor::zeros((8, 64), DType::F32, &Device::Cpu)?;
        let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
        let many = Tensor::zeros((MAX_ROWS + 1, 64), DType::F32, &Device::Cpu)?;
        assert!(matmul_t(&many, &q)?.is_none());
        let q4 = QTensor::quantize(&w, GgmlDType::Q4_0)?;
        assert!(matmul_t(&Tensor::zeros((1, 64), DType::F32, &Device::Cpu)?, &q4)?.is_none());
        Ok(())
    }
}
