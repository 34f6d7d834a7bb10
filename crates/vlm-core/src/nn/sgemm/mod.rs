//! f32 `x W^T` against weights packed once, at load time, for AVX-512 or AVX2.
//!
//! A GEMM kernel wants each step to read a few consecutive output features of one input feature
//! (one vector of weights) and broadcast one activation against it. PyTorch's `(out, in)` layout
//! has the opposite order, so a general GEMM (candle's, through the `gemm` crate) repacks the
//! weight on every call, and for a prefill of a few hundred rows that repacking (a strided,
//! scalar gather) cost two thirds as much as the multiplication itself. Here the weight is
//! rearranged once into panels of [`NR`] output features, each panel `(in, NR)` contiguous and
//! 64-byte aligned, and every call reads it in place:
//!
//! - the microkernel keeps an `MR x NR` block of outputs in 24 registers, and per input feature
//!   loads two weight vectors and broadcasts `MR` activations;
//! - activations are rearranged per call into tiles of `MR` rows, `(in, MR)` each, so the
//!   broadcasts read one stream at fixed offsets (cheap: activations are small next to weights);
//! - the input features run in blocks of about [`KC`]: a tile's block of activations (24 KB)
//!   stays in L1 while the kernel sweeps it across a task's panels, whose blocks (512 KB for
//!   [`PANELS_PER_TASK`] panels) stay in L2 while every row tile meets them; rayon splits the
//!   panels, and the rows too where the panel groups would not split evenly between the threads
//!   (see `Split`). (The vector operand streams from L2 and the broadcast one sits in L1, as in
//!   BLIS.)
//! - one activation row (a decode step) is the same kernel at `MR = 1`, streaming each panel
//!   once: as bandwidth-bound as a row-major GEMV.
//!
//! Each output is a sequential f32 sum over the input features, as a plain dot product would
//! be. x86-64 CPUs with AVX-512F or AVX2 (and FMA) use this (`available`; the AVX2 kernels
//! sweep each tile in smaller blocks, see `avx2`, and give the same bits); elsewhere weights
//! stay in PyTorch's layout for candle's kernels.
#![allow(unsafe_code)]

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::cpu_math;

/// Output features per panel: two AVX-512 vectors.
pub(crate) const NR: usize = 32;
/// Activation rows per microkernel call.
const MR: usize = 12;
/// Input features per block, at most: a tile's block of activations (`MR x KC`, 24 KB) fits
/// L1 beside the two weight lines in flight. Inputs are cut into equal blocks no wider.
const KC: usize = 512;
/// Panels per rayon task when there are many rows; fewer rows take fewer panels per task so
/// both cores get work.
const PANELS_PER_TASK: usize = 8;

/// One cache line of f32s: the unit of a packed weight's storage, so panels are 64-byte aligned.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A `(out, in)` f32 weight rearranged into `ceil(out / NR)` panels of `(in, NR)` (the last one
/// padded with zeros).
#[derive(Clone)]
pub(crate) struct PackedF32 {
    lines: Vec<Line>,
    out_features: usize,
    in_features: usize,
}

impl std::fmt::Debug for PackedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedF32({} x {})", self.out_features, self.in_features)
    }
}

/// `x w^T` for `x` `(m, k)` and `w` `(n, k)`, both row-major, by the `gemm` crate (candle's
/// GEMM; it repacks `w` per call), written into the columns `col..col + n` of the row-major
/// `y` (`m` rows of `y.len() / m`).
///
/// An error when the slices do not have those shapes.
pub(crate) fn matmul_t_into_columns(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    y: &mut [f32],
    col: usize,
) -> Result<()> {
    let k = x.len() / m.max(1);
    let width = y.len() / m.max(1);
    if x.len() != m * k || w.len() != n * k || y.len() != m * width || col + n > width {
        candle_core::bail!(
            "matmul_t_into_columns: x {} = {m} x {k}, w {} = {n} x {k}, y {} = {m} x {width}, \
             columns {col}..{}",
            x.len(),
            w.len(),
            y.len(),
            col + n
        );
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    // SAFETY: x is (m, k) row-major, w (n, k) row-major is read as its transpose (k, n), and
    // the columns col..col + n of the (m, width) row-major y are written: all in bounds, as
    // checked above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr().add(col),
            1,
            width as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(candle_core::utils::get_num_threads()),
        );
    }
    Ok(())
}

impl PackedF32 {
    /// Packs a row-major `(out, in)` weight.
    pub(crate) fn pack(w: &[f32], out_features: usize, in_features: usize) -> Result<Self> {
        if w.len() != out_features * in_features || in_features == 0 {
            candle_core::bail!(
                "packing a linear weight: expected {out_features} x {in_features} values \
                 (in_features > 0), found {}",
                w.len()
            );
        }
        let panels = out_features.div_ceil(NR);
        let panel_lines = in_features * NR / 16;
        let mut lines = vec![Line::default(); panels * panel_lines];
        lines
            .par_chunks_mut(panel_lines)
            .enumerate()
            .for_each(|(p, panel)| {
                let first = p * NR;
                let width = NR.min(out_features - first);
                for j in 0..width {
                    let row = &w[(first + j) * in_features..][..in_features];
                    for (k, &v) in row.iter().enumerate() {
                        panel[k * 2 + j / 16].0[j % 16] = v;
                    }
                }
            });
        Ok(Self {
            lines,
            out_features,
            in_features,
        })
    }

    /// Several packed weights reading the same input, their outputs concatenated. Panels are
    /// independent, so when every part but the last fills whole panels this is a copy.
    pub(crate) fn stack(parts: &[&PackedF32]) -> Result<Self> {
        let Some(first) = parts.first() else {
            candle_core::bail!("stacking packed weights: no weights given");
        };
        let in_features = first.in_features;
        if let Some(p) = parts.iter().find(|p| p.in_features != in_features) {
            candle_core::bail!(
                "stacking packed weights: input widths {in_features} and {} differ",
                p.in_features
            );
        }
        let whole = parts[..parts.len() - 1]
            .iter()
            .all(|p| p.out_features % NR == 0);
        let out_features = parts.iter().map(|p| p.out_features).sum();
        if whole {
            let lines = parts.iter().flat_map(|p| p.lines.iter().copied()).collect();
            return Ok(Self {
                lines,
                out_features,
                in_features,
            });
        }
        let mut dense = Vec::with_capacity(out_features * in_features);
        for p in parts {
            dense.extend(p.unpack());
        }
        Self::pack(&dense, out_features, in_features)
    }

    /// The weight back in row-major `(out, in)` order.
    pub(crate) fn unpack(&self) -> Vec<f32> {
        let (n, k) = (self.out_features, self.in_features);
        let mut w = vec![0f32; n * k];
        let panel_lines = k * NR / 16;
        for (o, row) in w.chunks_exact_mut(k).enumerate() {
            let panel = &self.lines[o / NR * panel_lines..][..panel_lines];
            let j = o % NR;
            for (kk, v) in row.iter_mut().enumerate() {
                *v = panel[kk * 2 + j / 16].0[j % 16];
            }
        }
        w
    }

    /// [`unpack`](Self::unpack) as a tensor.
    pub(crate) fn to_tensor(&self) -> Result<Tensor> {
        Tensor::from_vec(
            self.unpack(),
            (self.out_features, self.in_features),
            &candle_core::Device::Cpu,
        )
    }

    pub(crate) fn out_features(&self) -> usize {
        self.out_features
    }

    pub(crate) fn in_features(&self) -> usize {
        self.in_features
    }

    /// `then(x W^T (+ bias))` for `x` row-major `(rows, in)`: `(rows, out)` row-major. The bias
    /// is added as each output is first stored, and `then` applied to each block of outputs as
    /// soon as its last input block is added (while the block is still in L1), not in passes
    /// over the whole output. The values are those of the unfused activation (`cpu_math`'s
    /// functions, the same ones, on the same stored sums).
    pub(crate) fn matmul_t(
        &self,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        then: Epilogue,
    ) -> Result<Vec<f32>> {
        Weights::Packed(self).matmul_t(x, rows, bias, then)
    }
}

/// Where [`Weights::product`] reads the panels of a weight.
#[derive(Clone, Copy)]
enum Weights<'a> {
    /// Packed once, read in place.
    Packed(&'a PackedF32),
    /// Packed per task from rows.
    Rows(&'a dyn WeightRows),
}

impl Weights<'_> {
    fn dims(self) -> (usize, usize) {
        match self {
            Self::Packed(p) => (p.out_features, p.in_features),
            Self::Rows(w) => (w.out_features(), w.in_features()),
        }
    }

    fn matmul_t(
        self,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        then: Epilogue,
    ) -> Result<Vec<f32>> {
        match then {
            Epilogue::None => self.product(x, rows, bias, None::<fn(f32) -> f32>),
            Epilogue::QuickGelu => self.product(x, rows, bias, Some(cpu_math::quick_gelu)),
            Epilogue::GeluTanh => self.product(x, rows, bias, Some(cpu_math::gelu_tanh)),
        }
    }

    /// Calls `f` with panels `range` in [`PackedF32`]'s layout, starting at the first.
    fn with_panels<R>(self, range: std::ops::Range<usize>, f: impl FnOnce(*const f32) -> R) -> R {
        match self {
            Self::Packed(p) => {
                let panel_lines = p.in_features * NR / 16;
                f(p.lines[range.start * panel_lines..].as_ptr() as *const f32)
            }
            Self::Rows(w) => ROW_PANELS.with_borrow_mut(|(lines, chunk)| {
                let (n, k) = (w.out_features(), w.in_features());
                let panel_lines = k * NR / 16;
                let first = range.start * NR;
                let count = (range.end * NR).min(n) - first;
                let len = range.len() * panel_lines;
                if lines.len() < len {
                    lines.resize(len, Line::default());
                }
                let lines = &mut lines[..len];
                if !count.is_multiple_of(NR) {
                    // The padding columns of a ragged last panel: zeros, as `pack` leaves them.
                    lines[(range.len() - 1) * panel_lines..].fill(Line::default());
                }
                // Per panel and per 32 input features: 32 rows' values decoded side by side
                // (in L1), then stored transposed as 32 whole panel rows, in order. (Decoding
                // a whole weight row and scattering it down a panel, as `pack` does once at
                // load, touches a cache line per value and cost more than the product.)
                for (p, panel) in lines.chunks_exact_mut(panel_lines).enumerate() {
                    let o = first + p * NR;
                    let width = NR.min(n - o);
                    for (c, pairs) in panel.chunks_exact_mut(ROW_CHUNK * NR / 16).enumerate() {
                        // SAFETY: `Line` is `repr(C)` over 16 f32s, so these `ROW_CHUNK * NR / 16`
                        // lines are `ROW_CHUNK * NR` contiguous, aligned f32s.
                        let values =
                            unsafe { &mut *(pairs.as_mut_ptr() as *mut [f32; ROW_CHUNK * NR]) };
                        w.panel_chunk(o, width, c * ROW_CHUNK, values, chunk);
                    }
                }
                f(lines.as_ptr() as *const f32)
            }),
        }
    }

    /// [`PackedF32::matmul_t`] with the epilogue as a function the compiler inlines (and
    /// vectorizes) into the block loop.
    fn product<F: Fn(f32) -> f32 + Sync + Copy>(
        self,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        then: Option<F>,
    ) -> Result<Vec<f32>> {
        let (n, k) = self.dims();
        if x.len() != rows * k {
            candle_core::bail!(
                "packed matmul: expected {rows} x {k} activations, found {} values",
                x.len()
            );
        }
        if let Some(b) = bias.filter(|b| b.len() != n) {
            candle_core::bail!(
                "packed matmul: expected a bias of {n} values, found {}",
                b.len()
            );
        }
        let Some(isa) = ISA_OVERRIDE.with(|o| o.get()).or_else(isa) else {
            candle_core::bail!("packed matmul: this CPU lacks AVX2/AVX-512F with FMA");
        };
        if rows == 0 || n == 0 {
            return Ok(vec![0f32; rows * n]);
        }
        // Not zeroed: the first input block stores every output (see below).
        let mut y: Vec<f32> = Vec::with_capacity(rows * n);
        let panels = n.div_ceil(NR);
        // Few rows are bandwidth bound: small tasks so both cores stream. Many rows: enough
        // panels per task to reuse each activation block across them.
        let per_task = if rows <= MR { 4 } else { PANELS_PER_TASK };
        // Activations in tiles of MR rows, each `(k, tile rows)`: the microkernel's broadcasts
        // then read one stream at fixed offsets. One row is already in that layout.
        let mut scratch = Vec::new();
        let xp: &[f32] = if rows == 1 {
            x
        } else {
            scratch = PACKED_X.with_borrow_mut(std::mem::take);
            pack_rows(x, rows, k, &mut scratch);
            &scratch[..rows * k]
        };
        let y_ptr = SharedOut(y.as_mut_ptr());
        let plan = Split::new(rows, panels, per_task, rayon::current_num_threads());
        (0..plan.groups * plan.chunks)
            .into_par_iter()
            .for_each(|t| {
                let (g, c) = (t % plan.groups, t / plan.groups);
                let (p0, p1) = (g * plan.per_group, ((g + 1) * plan.per_group).min(panels));
                let (r0, r1) = (c * plan.chunk_rows, ((c + 1) * plan.chunk_rows).min(rows));
                // SAFETY: `isa` names kernels this CPU runs; `xp` holds `rows x k` packed values
                // and `r0` is a multiple of MR (a tile boundary, see `Split`), so the chunk's tiles
                // start at `r0 * k`; `y` has room for `rows x n`; task `(g, c)` owns rows
                // `r0..r1` of output columns `[p0 * NR, min(p1 * NR, n))`, disjoint across tasks.
                self.with_panels(p0..p1, |w| unsafe {
                    panel_product(
                        isa,
                        (n, k),
                        w,
                        &xp[r0 * k..r1 * k],
                        r1 - r0,
                        p0..p1,
                        y_ptr.get().add(r0 * n),
                        n,
                        bias,
                        then,
                    )
                });
            });
        // SAFETY: `panels` stored every column of every row of each panel, and the tasks
        // covered all panels: all `rows x n` values.
        unsafe { y.set_len(rows * n) };
        // Keep the larger buffer for the next call on this thread.
        PACKED_X.with_borrow_mut(|kept| {
            if kept.len() < scratch.len() {
                *kept = scratch;
            }
        });
        Ok(y)
    }
}

/// Rows `0..rows` of `y` (row stride `ldy`), columns of panels `range`: `xp W^T (+ bias)`,
/// then `then` if given. Every one of those outputs is stored once by the first input block
/// (plus the bias), accumulated by the later ones, and mapped by `then` after the last.
///
/// # Safety
/// AVX-512F and FMA are present (see [`available`]); `w` holds panels `range` of an
/// `(out, in)` weight in [`PackedF32`]'s layout, 64-byte aligned, from the first; `xp` holds
/// `rows x in` values packed by [`pack_rows`] (or one plain row); `y` has room for those rows
/// and columns; `bias`, if any, holds `out` values; `in > 0`.
#[allow(clippy::too_many_arguments)]
unsafe fn panel_product<F: Fn(f32) -> f32 + Copy>(
    isa: Isa,
    (n, k): (usize, usize),
    w: *const f32,
    xp: &[f32],
    rows: usize,
    range: std::ops::Range<usize>,
    y: *mut f32,
    ldy: usize,
    bias: Option<&[f32]>,
    then: Option<F>,
) {
    let panel_len = k * NR;
    // Equal input blocks of at most KC.
    let step = k.div_ceil(k.div_ceil(KC));
    for k0 in (0..k).step_by(step) {
        let kc = step.min(k - k0);
        let mut r = 0;
        while r < rows {
            let mr = MR.min(rows - r);
            let xs = xp.as_ptr().add(r * k + k0 * mr);
            for p in range.clone() {
                let w = w.add((p - range.start) * panel_len + k0 * NR);
                let out = Out {
                    y: y.add(r * ldy + p * NR),
                    ldy,
                    cols: NR.min(n - p * NR),
                    first: k0 == 0,
                    bias: bias.map_or(std::ptr::null(), |b| b.as_ptr().add(p * NR)),
                };
                block(isa, mr, xs, mr, w, kc, &out);
                if let (Some(f), true) = (then, k0 + kc == k) {
                    finish(isa, &out, mr, f);
                }
            }
            r += mr;
        }
    }
}

/// How the work of one product is cut into rayon tasks: `groups` runs of `per_group` panels
/// times `chunks` runs of `chunk_rows` rows (a multiple of [`MR`], so chunks start on tile
/// boundaries of the packed activations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Split {
    groups: usize,
    per_group: usize,
    chunks: usize,
    chunk_rows: usize,
}

impl Split {
    /// Panels go in equal groups of at most `max_per_group`. With many rows and a group count
    /// that the threads do not divide (five groups on two threads leave one thread a third of
    /// the work more), the rows are cut into equal chunks too, so that the task count is a
    /// multiple of the thread count and every task costs about the same.
    fn new(rows: usize, panels: usize, max_per_group: usize, threads: usize) -> Self {
        let groups = panels.div_ceil(max_per_group.max(1));
        let per_group = panels.div_ceil(groups.max(1));
        let groups = panels.div_ceil(per_group.max(1));
        let tiles = rows.div_ceil(MR);
        let threads = threads.max(1);
        let mut chunks = 1;
        if !groups.is_multiple_of(threads) && tiles > 1 {
            let gcd = (1..=threads)
                .rev()
                .find(|&d| groups.is_multiple_of(d) && threads.is_multiple_of(d));
            chunks = (threads / gcd.unwrap_or(1)).min(tiles);
        }
        let chunk_rows = tiles.div_ceil(chunks) * MR;
        Self {
            groups,
            per_group,
            chunks: rows.div_ceil(chunk_rows.max(1)).max(1),
            chunk_rows,
        }
    }
}

thread_local! {
    /// The calling thread's buffer of packed activations, reused across calls: a fresh one of
    /// tens of megabytes (a vision tower's MLP input) would be zeroed and page-faulted in on
    /// every call. Grown, never shrunk.
    static PACKED_X: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The calling thread's panels packed from a [`WeightRows`] and the row being packed.
    static ROW_PANELS: std::cell::RefCell<(Vec<Line>, [[f32; ROW_CHUNK]; NR])> =
        const { std::cell::RefCell::new((Vec::new(), [[0.0; ROW_CHUNK]; NR])) };
}

/// `x` `(rows, k)` row-major into `out[..rows * k]` (grown if needed) as consecutive tiles of
/// [`MR`] rows (the last may be shorter), each tile `(k, its rows)` row-major.
///
/// Each tile is written in order, reading its rows side by side: the `MR` input streams stay in
/// L1. (Row by row instead, every output line is revisited `MR` times, a row's width apart.)
fn pack_rows(x: &[f32], rows: usize, k: usize, out: &mut Vec<f32>) {
    if out.len() < rows * k {
        out.resize(rows * k, 0.0);
    }
    out[..rows * k]
        .par_chunks_mut(MR * k)
        .zip(x.par_chunks(MR * k))
        .for_each(|(o, xs)| {
            if xs.len() == MR * k {
                pack_tile::<MR>(xs, o, k);
            } else {
                let mr = xs.len() / k;
                for (kk, dst) in o.chunks_exact_mut(mr).enumerate() {
                    for (i, d) in dst.iter_mut().enumerate() {
                        *d = xs[i * k + kk];
                    }
                }
            }
        });
}

/// One full tile of [`pack_rows`], its row count known to the compiler.
fn pack_tile<const R: usize>(xs: &[f32], o: &mut [f32], k: usize) {
    let rows: [&[f32]; R] = std::array::from_fn(|i| &xs[i * k..(i + 1) * k]);
    for (kk, dst) in o.chunks_exact_mut(R).enumerate() {
        for (d, row) in dst.iter_mut().zip(&rows) {
            *d = row[kk];
        }
    }
}

/// The output buffer, written by rayon tasks at disjoint columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (see `matmul_t`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}
impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Where a microkernel call puts its `mr x cols` block of outputs.
struct Out {
    /// The block's first output; rows `ldy` apart.
    y: *mut f32,
    ldy: usize,
    /// Valid columns, at most [`NR`].
    cols: usize,
    /// Store `sums (+ bias)` when set (the first input block); otherwise add to what is there.
    first: bool,
    /// The block's `cols` bias values, or null.
    bias: *const f32,
}

/// An elementwise function applied to a product's outputs by the kernel (see
/// [`PackedF32::matmul_t`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Epilogue {
    None,
    /// [`cpu_math::quick_gelu`].
    QuickGelu,
    /// [`cpu_math::gelu_tanh`].
    GeluTanh,
}

#[cfg(target_arch = "x86_64")]
mod avx2;
mod dispatch;
mod rows;
#[cfg(target_arch = "x86_64")]
mod x86;

pub(crate) use dispatch::available;
use dispatch::{block, finish, isa, Isa, ISA_OVERRIDE};
pub(crate) use rows::{matmul_t_rows, transpose_row_chunks, WeightRows, ROW_CHUNK};

#[cfg(test)]
mod tests;
