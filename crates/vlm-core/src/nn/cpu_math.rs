//! Vectorized f32 math for CPU hot paths: `exp`, row softmax, and elementwise activations
//! spread over rayon (libm's scalar `expf`/`tanhf` calls were a fifth of the SigLIP tower's
//! time under `gelu_pytorch_tanh`).
#![allow(unsafe_code)]

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

/// The values of a contiguous f32 CPU tensor, borrowed (`G` holds its storage's read lock).
pub(crate) struct CpuF32<G> {
    storage: G,
    start: usize,
    len: usize,
}

impl<G: std::ops::Deref<Target = Storage>> std::ops::Deref for CpuF32<G> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(data)) => &data[self.start..self.start + self.len],
            _ => &[],
        }
    }
}

/// `t`'s values if it is a contiguous f32 CPU tensor (the storage stays read-locked while the
/// view lives).
pub(crate) fn cpu_f32(t: &Tensor) -> Option<CpuF32<impl std::ops::Deref<Target = Storage> + '_>> {
    let (storage, layout) = t.storage_and_layout();
    let start = layout.contiguous_offsets()?.0;
    matches!(&*storage, Storage::Cpu(CpuStorage::F32(_))).then(|| CpuF32 {
        storage,
        start,
        len: t.elem_count(),
    })
}

/// Lanes of the accumulators below: wide enough for one AVX-512 register, and what lets LLVM
/// vectorize reductions it may not reassociate.
const LANES: usize = 16;

/// `exp(x)` for finite `x`, to within 2 ulp of the correctly rounded value (checked in the tests):
/// `2^n * p(r)` with `n = round(x / ln 2)`, `r = x - n ln 2` (in two parts, so `r` is exact),
/// `p` the degree-7 Taylor polynomial (|r| <= ln 2 / 2: truncation below 6e-9). Inputs below
/// -87.3 (where `exp` leaves f32's normal range) return ~1e-38 rather than a subnormal or 0.
/// Written with plain arithmetic so it vectorizes.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_54, 88.376_26);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Horner's rule in fused multiply-adds: one instruction per degree where the caller is
    // compiled with FMA (the x86 entry points below select such a build at run time).
    let mut p: f32 = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p.mul_add(r, c);
    }
    // `shifted` is 1.5 * 2^23 + n exactly, so its low mantissa bits hold n in two's complement:
    // integer arithmetic on the bits gives 2^n without a float-to-int conversion (whose
    // saturating semantics LLVM does not vectorize).
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// While alive, the current thread's SSE/AVX arithmetic treats subnormal operands and results as
/// zero (MXCSR's DAZ and FTZ bits); the previous mode comes back on drop. Every x86 FP operation
/// that reads or produces a subnormal otherwise takes a microcode assist of ~100 cycles: the
/// products of near-zero attention probabilities with values made a causal prefill's attention
/// GEMMs ten times slower. Values that small (below 1.2e-38) are far below any tolerance. A no-op
/// elsewhere.
pub(crate) struct FlushSubnormals {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

impl FlushSubnormals {
    /// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6).
    #[cfg(target_arch = "x86_64")]
    const FTZ_DAZ: u32 = 0x8040;

    pub(crate) fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let mut saved = 0u32;
            // SAFETY: stmxcsr stores the 4-byte control register to a valid local; ldmxcsr loads
            // a value that differs from the current one only in the two flush mode bits.
            unsafe {
                std::arch::asm!("stmxcsr [{}]", in(reg) &mut saved, options(nostack));
                let flushed = saved | Self::FTZ_DAZ;
                std::arch::asm!("ldmxcsr [{}]", in(reg) &flushed, options(nostack));
            }
            Self { saved }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Self {}
        }
    }
}

impl Drop for FlushSubnormals {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: restores the value read in `new`.
        unsafe {
            std::arch::asm!("ldmxcsr [{}]", in(reg) &self.saved, options(nostack));
        }
    }
}

/// Row-wise softmax in place, max-subtracted, in f32, with no subnormal results.
#[inline(always)]
fn softmax_body(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            lanes[l] = lanes[l].max(c[l]);
        }
    }
    let max = chunks.remainder().iter().fold(
        lanes.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)),
        |m, &x| m.max(x),
    );
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let e = exp(c[l] - max);
            c[l] = e;
            sums[l] += e;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        let p = *x * inv;
        // Probabilities below f32's normal range (masked keys among them) become 0: subnormal
        // operands make every FMA of the GEMM that reads them take a microcode assist, which
        // slowed a causal prefill's attention tenfold. The difference is below 1.2e-38 each.
        *x = if p < f32::MIN_POSITIVE { 0.0 } else { p };
    }
}

pub(crate) fn softmax(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match x86_level() {
        // SAFETY: the CPU has the features each function is compiled for.
        X86Level::Avx512 => return unsafe { softmax_avx512(row) },
        X86Level::Avx2Fma => return unsafe { softmax_avx2(row) },
        X86Level::Baseline => {}
    }
    softmax_body(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn softmax_avx512(row: &mut [f32]) {
    softmax_body(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(row: &mut [f32]) {
    softmax_body(row)
}

/// The x86 builds of the vectorized loops here, best first. The baseline build's `mul_add` calls
/// libm's `fmaf`: slow, but only CPUs older than Haswell take it.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum X86Level {
    Avx512,
    Avx2Fma,
    Baseline,
}

#[cfg(target_arch = "x86_64")]
fn x86_level() -> X86Level {
    static LEVEL: std::sync::OnceLock<X86Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            X86Level::Avx512
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            X86Level::Avx2Fma
        } else {
            X86Level::Baseline
        }
    })
}

/// `tanh(y) = 1 - 2 / (exp(2y) + 1)`: absolute error a few 1e-8 (relative error grows only
/// for |y| below that, where `gelu` multiplies it by ~0).
#[inline(always)]
fn tanh(y: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * y) + 1.0)
}

/// `gelu_pytorch_tanh`: `0.5 x (1 + tanh(sqrt(2 / pi) x (1 + 0.044715 x^2)))`.
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)))
}

/// `quick_gelu`: `x * sigmoid(1.702 x)`.
#[inline(always)]
pub(crate) fn quick_gelu(x: f32) -> f32 {
    x * (1.0 / (1.0 + exp(-1.702 * x)))
}

/// `silu`: `x * sigmoid(x)`, as `x / (1 + exp(-x))` (candle's and PyTorch's form).
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `act(gate) * up` for an f32 CPU tensor whose rows are `[gate | up]`, `(.., 2 i)` to
/// `(.., i)`, in one parallel pass (a gated MLP's activation, after its stacked gate and up
/// projections); `None` for other devices and dtypes or an odd width.
pub(crate) fn gated(xs: &Tensor, act: impl Fn(f32) -> f32 + Sync + Copy) -> Result<Option<Tensor>> {
    let width = match xs.dims().last() {
        Some(&w) if w > 0 && w.is_multiple_of(2) => w,
        _ => return Ok(None),
    };
    let half = width / 2;
    let chunk = ROW_CHUNK_ELEMS.div_ceil(width) * width;
    par_chunks_to(xs, chunk, half, |i, o| gated_rows(i, o, half, act))
}

fn gated_rows(src: &[f32], dst: &mut [f32], half: usize, f: impl Fn(f32) -> f32 + Copy) {
    #[cfg(target_arch = "x86_64")]
    match x86_level() {
        // SAFETY: the CPU has the features each function is compiled for.
        X86Level::Avx512 => return unsafe { gated_rows_avx512(src, dst, half, f) },
        X86Level::Avx2Fma => return unsafe { gated_rows_avx2(src, dst, half, f) },
        X86Level::Baseline => {}
    }
    gated_rows_body(src, dst, half, f)
}

#[inline(always)]
fn gated_rows_body(src: &[f32], dst: &mut [f32], half: usize, f: impl Fn(f32) -> f32) {
    for (o, row) in dst.chunks_exact_mut(half).zip(src.chunks_exact(2 * half)) {
        let (gate, up) = row.split_at(half);
        for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
            *o = f(g) * u;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn gated_rows_avx512(src: &[f32], dst: &mut [f32], half: usize, f: impl Fn(f32) -> f32) {
    gated_rows_body(src, dst, half, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gated_rows_avx2(src: &[f32], dst: &mut [f32], half: usize, f: impl Fn(f32) -> f32) {
    gated_rows_body(src, dst, half, f)
}

/// Elements per rayon task of [`unary`].
const UNARY_CHUNK: usize = 1 << 14;

/// `f` over every element of an f32 tensor on the CPU (contiguous or not), or `None` for other
/// devices and dtypes.
pub(crate) fn unary(xs: &Tensor, f: impl Fn(f32) -> f32 + Sync + Copy) -> Result<Option<Tensor>> {
    par_chunks(xs, UNARY_CHUNK, |i, o| map(i, o, f))
}

/// Rows per rayon task of [`rows`] (at least; more when rows are short).
const ROW_CHUNK_ELEMS: usize = 1 << 14;

/// `f(row, out_row)` over every row of width `xs.dim(-1)` of an f32 tensor on the CPU, in
/// parallel, or `None` for other devices and dtypes. `f` is compiled for AVX-512 / AVX2 where
/// the CPU has them, so plain loops over lanes in it vectorize.
pub(crate) fn rows(
    xs: &Tensor,
    f: impl Fn(&[f32], &mut [f32]) + Sync + Copy,
) -> Result<Option<Tensor>> {
    let width = match xs.dims().last() {
        Some(&w) if w > 0 => w,
        _ => return Ok(None),
    };
    let chunk = ROW_CHUNK_ELEMS.div_ceil(width) * width;
    par_chunks(xs, chunk, |i, o| map_rows(i, o, width, f))
}

/// A new tensor of `xs`'s shape whose values `f(input, output)` writes, `chunk` elements at a
/// time in parallel, for an f32 tensor on the CPU (made contiguous); `None` otherwise.
fn par_chunks(
    xs: &Tensor,
    chunk: usize,
    f: impl Fn(&[f32], &mut [f32]) + Sync,
) -> Result<Option<Tensor>> {
    let width = xs.dims().last().copied().unwrap_or(1);
    par_chunks_to(xs, chunk, width, f)
}

/// [`par_chunks`] into rows of `out_width` values instead of the input's width; `chunk` is then
/// a multiple of the input's width, and `f` maps its rows to as many output rows.
fn par_chunks_to(
    xs: &Tensor,
    chunk: usize,
    out_width: usize,
    f: impl Fn(&[f32], &mut [f32]) + Sync,
) -> Result<Option<Tensor>> {
    if !matches!(xs.device(), Device::Cpu) || xs.dtype() != DType::F32 {
        return Ok(None);
    }
    let width = xs.dims().last().copied().unwrap_or(1);
    if width == 0 || (out_width != width && !chunk.is_multiple_of(width)) {
        return Ok(None);
    }
    let out_chunk = if out_width == width {
        chunk
    } else {
        chunk / width * out_width
    };
    let mut dims = xs.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out_width;
    }
    let xs = xs.contiguous()?;
    let Some(src) = cpu_f32(&xs) else {
        return Ok(None);
    };
    let mut out = vec![0f32; src.len() / width * out_width];
    out.par_chunks_mut(out_chunk.max(1))
        .zip(src.par_chunks(chunk.max(1)))
        .for_each(|(o, i)| f(i, o));
    Ok(Some(Tensor::from_vec(out, dims, &Device::Cpu)?))
}

fn map_rows(src: &[f32], dst: &mut [f32], width: usize, f: impl Fn(&[f32], &mut [f32]) + Copy) {
    #[cfg(target_arch = "x86_64")]
    match x86_level() {
        // SAFETY: the CPU has the features each function is compiled for.
        X86Level::Avx512 => return unsafe { map_rows_avx512(src, dst, width, f) },
        X86Level::Avx2Fma => return unsafe { map_rows_avx2(src, dst, width, f) },
        X86Level::Baseline => {}
    }
    map_rows_body(src, dst, width, f)
}

#[inline(always)]
fn map_rows_body(src: &[f32], dst: &mut [f32], width: usize, f: impl Fn(&[f32], &mut [f32])) {
    for (o, i) in dst.chunks_exact_mut(width).zip(src.chunks_exact(width)) {
        f(i, o);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn map_rows_avx512(
    src: &[f32],
    dst: &mut [f32],
    width: usize,
    f: impl Fn(&[f32], &mut [f32]),
) {
    map_rows_body(src, dst, width, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_rows_avx2(
    src: &[f32],
    dst: &mut [f32],
    width: usize,
    f: impl Fn(&[f32], &mut [f32]),
) {
    map_rows_body(src, dst, width, f)
}

/// The sum of `xs` in 16 interleaved f32 lanes (a shape that vectorizes), lanes then added
/// pairwise.
#[inline(always)]
pub(crate) fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(x);
    }
    let mut n = 16;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            acc[i] += acc[i + n];
        }
    }
    acc[0]
}

fn map(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32 + Copy) {
    #[cfg(target_arch = "x86_64")]
    match x86_level() {
        // SAFETY: the CPU has the features each function is compiled for.
        X86Level::Avx512 => return unsafe { map_avx512(src, dst, f) },
        X86Level::Avx2Fma => return unsafe { map_avx2(src, dst, f) },
        X86Level::Baseline => {}
    }
    map_body(src, dst, f)
}

#[inline(always)]
fn map_body(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
    for (o, &x) in dst.iter_mut().zip(src) {
        *o = f(x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn map_avx512(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
    map_body(src, dst, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_avx2(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
    map_body(src, dst, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let ulp = (want as f32).abs() * f32::EPSILON;
            assert!(
                (got - want).abs() <= 2.0 * ulp as f64,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.013;
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn flushing_is_scoped() {
        let product = || std::hint::black_box(1e-30f32) * std::hint::black_box(1e-10f32);
        assert!(product().is_subnormal());
        {
            let _flush = FlushSubnormals::new();
            #[cfg(target_arch = "x86_64")]
            assert_eq!(product(), 0.0);
        }
        assert!(product().is_subnormal());
    }

    fn softmax_f64(row: &[f32]) -> Vec<f64> {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        row.iter().map(|&x| (x as f64 - max).exp() / sum).collect()
    }

    #[test]
    fn softmax_has_no_subnormal_results() {
        // Masked keys and scores far below the maximum, across the vector body and the tail.
        let row: Vec<f32> = (0..37)
            .map(|i| match i % 4 {
                0 => f32::NEG_INFINITY,
                1 => -(i as f32) * 4.0,
                _ => i as f32 * 0.1,
            })
            .collect();
        let mut got = row.clone();
        softmax(&mut got);
        for ((g, &x), want) in got.iter().zip(&row).zip(softmax_f64(&row)) {
            if want < f32::MIN_POSITIVE as f64 {
                assert_eq!(*g, 0.0, "{x}: {g} vs {want}");
            } else {
                assert!(g.is_normal(), "{x}: {g}");
                assert!(
                    (*g as f64 - want).abs() <= 1e-6 * want,
                    "{x}: {g} vs {want}"
                );
            }
        }
        assert!(got.iter().filter(|&&g| g == 0.0).count() > 9, "{got:?}");
    }

    #[test]
    fn softmax_matches_f64() {
        for n in [1usize, 5, 16, 17, 100, 1024] {
            let row: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
                .collect();
            let mut got = row.clone();
            softmax(&mut got);
            for (g, want) in got.iter().zip(softmax_f64(&row)) {
                assert!(*g == 0.0 || g.is_normal(), "{n}: subnormal {g}");
                assert!(
                    (*g as f64 - want).abs() <= 1e-6 * want.max(1e-30) + 1e-12,
                    "{n}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn activations_match_f64() -> Result<()> {
        let xs: Vec<f32> = (0..40_000)
            .map(|i| (i as f32 - 20_000.0) * 0.0011)
            .collect();
        let t = Tensor::from_vec(xs.clone(), (200, 200), &Device::Cpu)?;
        let gelu: Vec<f32> = unary(&t, gelu_tanh)?
            .expect("f32 on CPU")
            .flatten_all()?
            .to_vec1()?;
        let quick: Vec<f32> = unary(&t, quick_gelu)?
            .expect("f32 on CPU")
            .flatten_all()?
            .to_vec1()?;
        for (i, &x) in xs.iter().enumerate() {
            let x64 = x as f64;
            let g = 0.5
                * x64
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3)))
                        .tanh());
            let q = x64 / (1.0 + (-1.702 * x64).exp());
            assert!(
                (gelu[i] as f64 - g).abs() <= 1e-6 * g.abs().max(1.0),
                "gelu({x}) = {} vs {g}",
                gelu[i]
            );
            assert!(
                (quick[i] as f64 - q).abs() <= 1e-6 * q.abs().max(1.0),
                "quick_gelu({x}) = {} vs {q}",
                quick[i]
            );
        }
        // silu, and the gated form over rows [gate | up] (here: up = the gate's negation).
        let silus: Vec<f32> = unary(&t, silu)?
            .expect("f32 on CPU")
            .flatten_all()?
            .to_vec1()?;
        let stacked = Tensor::cat(&[&t, &t.neg()?], 1)?;
        let gated_silu: Vec<f32> = gated(&stacked, silu)?
            .expect("f32 on CPU")
            .flatten_all()?
            .to_vec1()?;
        for (i, &x) in xs.iter().enumerate() {
            let x64 = x as f64;
            let want = x64 / (1.0 + (-x64).exp());
            assert!(
                (silus[i] as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                "silu({x}) = {} vs {want}",
                silus[i]
            );
            assert_eq!(gated_silu[i], silus[i] * -x, "gated silu at {x}");
        }
        assert!(gated(&Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?, silu)?.is_none());
        // A strided view takes the same path.
        let strided = unary(&t.t()?, gelu_tanh)?.expect("f32 on CPU").t()?;
        let diff = (strided - Tensor::from_vec(gelu, (200, 200), &Device::Cpu)?)?
            .abs()?
            .flatten_all()?
            .max(0)?;
        assert_eq!(diff.to_scalar::<f32>()?, 0.0);
        Ok(())
    }
}
