//! Q8_0 weight rows decoded to f32, for the prefills that multiply in f32 (see
//! `Linear`'s prefill path): our packed GEMM asks for rows one panel group at a time
//! ([`sgemm::WeightRows`]), so no f32 copy of the whole weight is ever held.
//!
//! Each value is computed as candle's (and GGML's) dequantization computes it, so the product
//! equals the f32 product with `QTensor::dequantize`'s weight.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result};

use super::{f16_at, Q8_0_BLOCK, Q8_0_BYTES};
use crate::nn::sgemm::{self, NR, ROW_CHUNK};

/// The GGML blocks of a Q8_0 `(out, in)` weight on the CPU, read row by row.
pub(crate) struct QuantRows<'a> {
    data: Cow<'a, [u8]>,
    out_features: usize,
    in_features: usize,
    row_bytes: usize,
}

impl<'a> QuantRows<'a> {
    /// `None` when `w` is in another format or on another device.
    pub(crate) fn new(w: &'a QTensor) -> Result<Option<Self>> {
        if !matches!(w.device(), Device::Cpu) || w.dtype() != GgmlDType::Q8_0 {
            return Ok(None);
        }
        let (block, block_bytes) = (Q8_0_BLOCK, Q8_0_BYTES);
        let (out_features, in_features) = w.shape().dims2()?;
        let data = w.data()?;
        let row_bytes = in_features / block * block_bytes;
        if in_features % block != 0 || data.len() != out_features * row_bytes {
            candle_core::bail!(
                "{:?} weight {:?}: expected {} bytes of blocks of {block}, found {}",
                w.dtype(),
                w.shape(),
                out_features * row_bytes,
                data.len()
            );
        }
        Ok(Some(Self {
            data,
            out_features,
            in_features,
            row_bytes,
        }))
    }
}

impl sgemm::WeightRows for QuantRows<'_> {
    fn out_features(&self) -> usize {
        self.out_features
    }

    fn in_features(&self) -> usize {
        self.in_features
    }

    fn row_chunk(&self, o: usize, k0: usize, values: &mut [f32; ROW_CHUNK]) {
        let row = &self.data[o * self.row_bytes..(o + 1) * self.row_bytes];
        decode_block(&row[k0 / Q8_0_BLOCK * Q8_0_BYTES..][..Q8_0_BYTES], values);
    }

    fn panel_chunk(
        &self,
        o: usize,
        width: usize,
        k0: usize,
        panel: &mut [f32; ROW_CHUNK * NR],
        rows: &mut [[f32; ROW_CHUNK]; NR],
    ) {
        #[cfg(target_arch = "x86_64")]
        // `new` checked the data against the shape, so a full panel of rows is in bounds
        // whenever one exists; the bounds are checked here anyway rather than trusted.
        if width == NR
            && avx2()
            && k0 < self.in_features
            && (o + NR) * self.row_bytes <= self.data.len()
        {
            let at = k0 / Q8_0_BLOCK * Q8_0_BYTES;
            // SAFETY: AVX2 and F16C were detected; the 32 blocks read (rows `o..o + NR`, block
            // `at` < `row_bytes`) are in bounds, as just checked, and `panel` holds
            // `ROW_CHUNK * NR` values.
            unsafe {
                transposed_blocks_avx2(
                    self.data.as_ptr().add(o * self.row_bytes + at),
                    self.row_bytes,
                    panel,
                )
            };
            return;
        }
        sgemm::transpose_row_chunks(self, o, width, k0, panel, rows);
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c"))
}

/// The blocks of [`NR`] consecutive rows (`stride` bytes apart, from `blocks`) decoded and
/// stored transposed: `panel[kk * NR + j] = d_j * q_j[kk]`, the values [`decode_block`] gives.
/// Eight rows by eight values at a time: widened in registers, scaled, transposed 8 x 8 in
/// registers, and stored as eight runs of a panel row.
///
/// # Safety
/// AVX2 and F16C are present; `blocks + j * stride` holds a Q8_0 block for every `j < NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn transposed_blocks_avx2(
    blocks: *const u8,
    stride: usize,
    panel: &mut [f32; ROW_CHUNK * NR],
) {
    use std::arch::x86_64::*;
    let out = panel.as_mut_ptr();
    for j0 in (0..NR).step_by(8) {
        let blk: [*const u8; 8] = std::array::from_fn(|i| blocks.add((j0 + i) * stride));
        let d: [__m256; 8] = std::array::from_fn(|i| {
            let bits = (blk[i] as *const u16).read_unaligned();
            _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))))
        });
        for kk0 in (0..ROW_CHUNK).step_by(8) {
            let r: [__m256; 8] = std::array::from_fn(|i| {
                let q = _mm_loadl_epi64(blk[i].add(2 + kk0) as *const __m128i);
                _mm256_mul_ps(d[i], _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)))
            });
            let t = [
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
                _mm256_unpacklo_ps(r[6], r[7]),
                _mm256_unpackhi_ps(r[6], r[7]),
            ];
            let u = [
                _mm256_shuffle_ps::<0x44>(t[0], t[2]),
                _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
                _mm256_shuffle_ps::<0x44>(t[1], t[3]),
                _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
                _mm256_shuffle_ps::<0x44>(t[4], t[6]),
                _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
                _mm256_shuffle_ps::<0x44>(t[5], t[7]),
                _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
            ];
            let cols = [
                _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
                _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
                _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
                _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
                _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
                _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
                _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
                _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
            ];
            for (kk, v) in cols.iter().enumerate() {
                _mm256_storeu_ps(out.add((kk0 + kk) * NR + j0), *v);
            }
        }
    }
}

impl QuantRows<'_> {
    /// Writes the `in_features` values of output row `o` to `dst`.
    pub(crate) fn decode_row(&self, o: usize, dst: &mut [f32]) {
        let row = &self.data[o * self.row_bytes..(o + 1) * self.row_bytes];
        for (blk, dst) in row
            .chunks_exact(Q8_0_BYTES)
            .zip(dst.chunks_exact_mut(Q8_0_BLOCK))
        {
            decode_block(blk, dst);
        }
    }
}

/// Each value is its block's f16 scale times its `i8` (a loop the compiler vectorizes).
#[inline(always)]
fn decode_block(blk: &[u8], dst: &mut [f32]) {
    let d = f16_at(blk, 0);
    for (y, &q) in dst.iter_mut().zip(&blk[2..]) {
        *y = d * q as i8 as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;
    use sgemm::WeightRows;

    #[test]
    fn rows_are_candles_dequantized_values() -> Result<()> {
        let dev = Device::Cpu;
        // Values spread over many magnitudes, so every scale and min bit is exercised.
        let spread = Tensor::arange(0f32, 512.0, &dev)?
            .affine(0.02, -4.0)?
            .exp()?;
        let w = Tensor::randn(0f32, 1.0, (5, 512), &dev)?.broadcast_mul(&spread.unsqueeze(0)?)?;
        let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
        let want: Vec<Vec<f32>> = q.dequantize(&dev)?.to_vec2()?;
        let rows = QuantRows::new(&q)?.expect("a CPU Q8_0 weight");
        assert_eq!((rows.out_features(), rows.in_features()), (5, 512));
        let mut got = [0f32; ROW_CHUNK];
        for (o, want) in want.iter().enumerate() {
            for (c, want) in want.chunks_exact(ROW_CHUNK).enumerate() {
                rows.row_chunk(o, c * ROW_CHUNK, &mut got);
                assert_eq!(&got, want, "row {o} chunk {c}");
            }
            let mut whole = vec![0f32; 512];
            rows.decode_row(o, &mut whole);
            assert_eq!(&whole, want, "row {o}");
        }
        // Panel chunks, full (the transposing decode) and ragged (the default).
        let narrow = Tensor::randn(0f32, 1.0, (NR + 7, 64), &dev)?
            .broadcast_mul(&spread.narrow(0, 0, 64)?.unsqueeze(0)?)?;
        let narrow = QTensor::quantize(&narrow, GgmlDType::Q8_0)?;
        let rows = QuantRows::new(&narrow)?.expect("a CPU Q8_0 weight");
        let mut scratch = [[0f32; ROW_CHUNK]; NR];
        for (o, width) in [(0, NR), (NR, 7), (3, NR)] {
            for k0 in [0, ROW_CHUNK] {
                let mut panel = [f32::NAN; ROW_CHUNK * NR];
                rows.panel_chunk(o, width, k0, &mut panel, &mut scratch);
                let mut want = [0f32; ROW_CHUNK];
                for j in 0..width {
                    rows.row_chunk(o + j, k0, &mut want);
                    for (kk, w) in want.iter().enumerate() {
                        assert_eq!(
                            panel[kk * NR + j].to_bits(),
                            w.to_bits(),
                            "row {} value {}",
                            o + j,
                            k0 + kk
                        );
                    }
                }
                assert!(panel
                    .iter()
                    .enumerate()
                    .all(|(i, v)| (i % NR < width) != v.is_nan()));
            }
        }
        for other in [GgmlDType::Q4_0, GgmlDType::Q4K] {
            let q = QTensor::quantize(&w, other)?;
            assert!(QuantRows::new(&q)?.is_none(), "{other:?}");
        }
        Ok(())
    }
}
