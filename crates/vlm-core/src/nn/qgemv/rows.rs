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
use crate::nn::sgemm::{self, ROW_CHUNK};

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
        for other in [GgmlDType::Q4_0, GgmlDType::Q4K] {
            let q = QTensor::quantize(&w, other)?;
            assert!(QuantRows::new(&q)?.is_none(), "{other:?}");
        }
        Ok(())
    }
}
