//! Products against weights given by rows (quantized blocks decoded on demand) rather than
//! packed once: the rows are packed into panels per task as the product runs.

use candle_core::Result;

use super::{Epilogue, Weights, NR};

/// A weight whose rows are produced on demand (quantized blocks decoded to f32), for a product
/// that must not hold an f32 copy of the whole weight: see [`matmul_t_rows`].
pub(crate) trait WeightRows: Sync {
    fn out_features(&self) -> usize;
    fn in_features(&self) -> usize;
    /// Values `k0..k0 + ROW_CHUNK` of weight row `o` (`k0` a multiple of [`ROW_CHUNK`], which
    /// divides `in_features`).
    fn row_chunk(&self, o: usize, k0: usize, values: &mut [f32; ROW_CHUNK]);

    /// `panel[kk * NR + j]` = value `k0 + kk` of weight row `o + j`, for `kk < ROW_CHUNK` and
    /// `j < width <= NR` (the rest of `panel` untouched): a chunk of a packed panel. The default
    /// decodes `width` row chunks side by side into `rows` (in L1) and stores them transposed;
    /// formats with a faster transposing decode override it.
    fn panel_chunk(
        &self,
        o: usize,
        width: usize,
        k0: usize,
        panel: &mut [f32; ROW_CHUNK * NR],
        rows: &mut [[f32; ROW_CHUNK]; NR],
    ) {
        transpose_row_chunks(self, o, width, k0, panel, rows);
    }
}

/// [`WeightRows::panel_chunk`]'s default, for any weight (overrides fall back to it too).
pub(crate) fn transpose_row_chunks<W: WeightRows + ?Sized>(
    w: &W,
    o: usize,
    width: usize,
    k0: usize,
    panel: &mut [f32; ROW_CHUNK * NR],
    rows: &mut [[f32; ROW_CHUNK]; NR],
) {
    for (j, vals) in rows.iter_mut().take(width).enumerate() {
        w.row_chunk(o + j, k0, vals);
    }
    for (kk, line) in panel.chunks_exact_mut(NR).enumerate() {
        for (j, v) in line.iter_mut().take(width).enumerate() {
            *v = rows[j][kk];
        }
    }
}

/// Input features per [`WeightRows::row_chunk`]: one GGML Q8_0 block, or one Q4_K sub-block.
pub(crate) const ROW_CHUNK: usize = 32;

/// [`PackedF32::matmul_t`] against a weight given by rows. Each task packs the rows of its own
/// group of panels into a per-thread buffer (a few hundred KB that stay in L2 while every row
/// tile meets them), so the weight is decoded about once per product, and each output is the
/// same sum as the packed product of the decoded weight.
pub(crate) fn matmul_t_rows(
    w: &dyn WeightRows,
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    then: Epilogue,
) -> Result<Vec<f32>> {
    if !w.in_features().is_multiple_of(ROW_CHUNK) {
        candle_core::bail!(
            "packed matmul: weight rows come in chunks of {ROW_CHUNK}, found {} input features",
            w.in_features()
        );
    }
    Weights::Rows(w).matmul_t(x, rows, bias, then)
}
