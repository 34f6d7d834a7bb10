//! Matrix-vector products for the decode step on CPU.
//!
//! Decoding one token multiplies a handful of activation rows by every weight matrix once, so it
//! is bound by how fast the weights stream from memory. candle 0.11's CPU matmul goes through a
//! GEMM kernel that reaches a third of the machine's bandwidth for f32 at one row, and its bf16
//! path is ~8x slower still. These kernels read each weight row once, take the dot product with
//! every activation row while it is in L1, spread the weight rows over rayon's pool, and accumulate
//! in f32 like PyTorch's reduced-precision matmuls. bf16 uses AVX-512 BF16's `vdpbf16ps` where
//! the CPU has it (pairs of exact bf16 products, f32 sums), f16 uses F16C conversions.
//!
//! The SIMD paths are picked at run time (`is_x86_feature_detected!`); other architectures and
//! older x86 CPUs use a portable loop whose fixed-width accumulators LLVM vectorizes.
#![allow(unsafe_code)]

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Activation rows up to which these kernels beat candle's f32 GEMM (one decode step of a small
/// batch); above it the work is compute bound and the GEMM wins, in bf16/f16 too once the
/// weights are widened (see `Linear`).
pub(crate) const MAX_ROWS: usize = 4;

/// Weight rows per rayon task: large enough to amortize scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 32;

/// `x W^T` for `x` `(rows, in)` with `rows <= MAX_ROWS` and a contiguous `W` `(out, in)` of the
/// same dtype on the CPU, or `None` when these kernels do not apply (another device or dtype, more
/// rows), in which case the caller uses a GEMM.
pub(crate) fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    if !matches!(x.device(), Device::Cpu) || x.dtype() != w.dtype() || !w.is_contiguous() {
        return Ok(None);
    }
    let (rows, in_dim) = x.dims2()?;
    let (out_dim, w_in) = w.dims2()?;
    if rows == 0 || rows > MAX_ROWS || in_dim != w_in || in_dim == 0 {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (x_storage, x_layout) = x.storage_and_layout();
    let (w_storage, w_layout) = w.storage_and_layout();
    let (Storage::Cpu(xs), Storage::Cpu(ws)) = (&*x_storage, &*w_storage) else {
        return Ok(None);
    };
    let (xo, wo) = (x_layout.start_offset(), w_layout.start_offset());
    let (xn, wn) = (rows * in_dim, out_dim * in_dim);
    let shape = (rows, out_dim);
    let y = match (xs, ws) {
        (CpuStorage::F32(x), CpuStorage::F32(w)) => {
            let y = run(&x[xo..xo + xn], &w[wo..wo + wn], in_dim, kernels().f32);
            Tensor::from_vec(y, shape, &Device::Cpu)?
        }
        (CpuStorage::BF16(x), CpuStorage::BF16(w)) => {
            let y = run(&x[xo..xo + xn], &w[wo..wo + wn], in_dim, kernels().bf16);
            let y: Vec<bf16> = y.into_iter().map(bf16::from_f32).collect();
            Tensor::from_vec(y, shape, &Device::Cpu)?
        }
        (CpuStorage::F16(x), CpuStorage::F16(w)) => {
            let y = run(&x[xo..xo + xn], &w[wo..wo + wn], in_dim, kernels().f16);
            let y: Vec<f16> = y.into_iter().map(f16::from_f32).collect();
            Tensor::from_vec(y, shape, &Device::Cpu)?
        }
        _ => return Ok(None),
    };
    Ok(Some(y))
}

/// True when a matmul in `dtype` on `device` that these kernels do not cover (attention's batched
/// products) should run in f32 instead: candle's CPU GEMM for bf16 and f16 is many times slower
/// than its f32 one, and widening is exact.
pub(crate) fn widen_on_cpu(device: &Device, dtype: DType) -> bool {
    matches!(device, Device::Cpu) && matches!(dtype, DType::BF16 | DType::F16)
}

/// `out[r * wr + o] = dot(xs[r], ws[o])` for the rows of width `n` in `xs` and `ws` (`wr` of them).
type Tiles<T> = fn(&[T], &[T], usize, &mut [f32]);

#[derive(Clone, Copy)]
struct Kernels {
    f32: Tiles<f32>,
    bf16: Tiles<bf16>,
    f16: Tiles<f16>,
}

/// The fastest kernels this CPU supports, chosen once.
fn kernels() -> Kernels {
    static KERNELS: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    *KERNELS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            x86::best()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            portable()
        }
    })
}

fn portable() -> Kernels {
    Kernels {
        f32: tiles_portable::<f32>,
        bf16: tiles_portable::<bf16>,
        f16: tiles_portable::<f16>,
    }
}

/// `y[r][o] = dot(x[r], w[o])`, returned row-major `(rows, out)`.
fn run<T: Copy + Sync>(x: &[T], w: &[T], in_dim: usize, tiles: Tiles<T>) -> Vec<f32> {
    let rows = x.len() / in_dim;
    let out_dim = w.len() / in_dim;
    if rows == 1 {
        let mut y = vec![0f32; out_dim];
        y.par_chunks_mut(ROWS_PER_TASK)
            .zip(w.par_chunks(ROWS_PER_TASK * in_dim))
            .for_each(|(ys, ws)| tiles(x, ws, in_dim, ys));
        return y;
    }
    // Each task owns a band of weight rows (kept in cache while every activation row passes)
    // and returns its (rows, band) block.
    let blocks: Vec<Vec<f32>> = w
        .par_chunks(ROWS_PER_TASK * in_dim)
        .map(|ws| {
            let mut block = vec![0f32; rows * (ws.len() / in_dim)];
            tiles(x, ws, in_dim, &mut block);
            block
        })
        .collect();
    let mut y = vec![0f32; out_dim * rows];
    for (b, block) in blocks.iter().enumerate() {
        let band = block.len() / rows;
        for (r, vals) in block.chunks(band).enumerate() {
            let at = r * out_dim + b * ROWS_PER_TASK;
            y[at..at + band].copy_from_slice(vals);
        }
    }
    y
}

/// Lossless conversion of the supported element types to f32.
trait Widen: Copy {
    fn widen(self) -> f32;
}

impl Widen for f32 {
    fn widen(self) -> f32 {
        self
    }
}

impl Widen for bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Widen for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// Sixteen independent lanes, which LLVM turns into vector FMAs without reassociating anything.
fn dot_portable<T: Widen>(a: &[T], b: &[T]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (xa, xb) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += xa[l].widen() * xb[l].widen();
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x.widen() * y.widen())
        .sum();
    acc.iter().sum::<f32>() + tail
}

fn tiles_portable<T: Widen>(xs: &[T], ws: &[T], n: usize, out: &mut [f32]) {
    let n = n.max(1);
    let wr = ws.len() / n;
    for (x_row, outs) in xs.chunks_exact(n).zip(out.chunks_mut(wr.max(1))) {
        for (o, w_row) in outs.iter_mut().zip(ws.chunks_exact(n)) {
            *o = dot_portable(x_row, w_row);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX-512 and AVX2 kernels. They read four weight rows at once (four memory streams keep
    //! more cache-line fills in flight than one, which is what a single core's bandwidth is
    //! limited by when decoding) against shared activation loads.
    //!
    //! Every `unsafe fn` here requires the target features it is compiled with; [`best`] hands
    //! them out only after detecting those features, wrapped in safe function pointers.

    use super::{dot_portable, Kernels};
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    pub(super) fn best() -> Kernels {
        let mut k = super::portable();
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            k.f32 = |x, w, n, out| unsafe { f32_avx2(x, w, n, out) };
            k.bf16 = |x, w, n, out| unsafe { bf16_avx2(x, w, n, out) };
            if is_x86_feature_detected!("f16c") {
                k.f16 = |x, w, n, out| unsafe { f16_avx2(x, w, n, out) };
            }
        }
        if is_x86_feature_detected!("avx512f") {
            k.f32 = |x, w, n, out| unsafe { f32_avx512(x, w, n, out) };
            k.f16 = |x, w, n, out| unsafe { f16_avx512(x, w, n, out) };
            k.bf16 = |x, w, n, out| unsafe { bf16_widen_avx512(x, w, n, out) };
            if is_x86_feature_detected!("avx512bf16") {
                k.bf16 = |x, w, n, out| unsafe { bf16_avx512(x, w, n, out) };
            }
        }
        k
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn ld_f32_512(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn ld_f16_512(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }

    /// Sixteen bf16 widened to f32 (bf16 is the top half of an f32).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn ld_bf16_as_f32_512(p: *const bf16) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())),
            16,
        ))
    }

    /// bf16 and `__m512bh` lanes are the same 16-bit patterns.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn ld_bf16_512(p: *const bf16) -> __m512bh {
        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast()))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fma_512(acc: __m512, a: __m512, b: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, acc)
    }

    /// Pairs of exact bf16 products summed into f32 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn dp_bf16_512(acc: __m512, a: __m512bh, b: __m512bh) -> __m512 {
        _mm512_dpbf16_ps(acc, a, b)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sum_512(a: __m512, b: __m512) -> f32 {
        _mm512_reduce_add_ps(_mm512_add_ps(a, b))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn ld_f32_256(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    /// bf16 is the top half of an f32: widen to 32 bits and shift into place.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn ld_bf16_256(p: *const bf16) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())),
            16,
        ))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn ld_f16_256(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn fma_256(acc: __m256, a: __m256, b: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, acc)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn sum_256(a: __m256, b: __m256) -> f32 {
        let v = _mm256_add_ps(a, b);
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Defines `$name(xs, ws, n, out)`: `out[r * wr + o] = dot(xs[r], ws[o])` for the `xr`
    /// activation rows and `wr` weight rows of width `n`, `$width` elements per vector.
    ///
    /// Weight rows go four at a time. Activation rows go four at a time too when there are that
    /// many (a 4 x 4 register tile: eight loads feed sixteen multiply-adds, so the weights are
    /// read from L1 once per four rows instead of once per row); a leftover row uses two
    /// accumulators per weight row instead. Fewer than four weight rows re-read the last one.
    macro_rules! tiles {
        ($name:ident, $feat:literal, $t:ty, $width:expr, $zero:expr, $load:ident, $madd:ident, $sum:ident) => {
            #[target_feature(enable = $feat)]
            unsafe fn $name(xs: &[$t], ws: &[$t], n: usize, out: &mut [f32]) {
                if n == 0 {
                    out.fill(0.0);
                    return;
                }
                let (xr, wr) = (xs.len() / n, ws.len() / n);
                if out.len() < xr * wr {
                    return;
                }
                let step = 2 * $width;
                let body2 = n - n % step;
                let body1 = n - n % $width;
                let mut o = 0;
                while o < wr {
                    let take = (wr - o).min(4);
                    let row = |j: usize| ws.as_ptr().add((o + j.min(take - 1)) * n);
                    let wp = [row(0), row(1), row(2), row(3)];
                    let mut r = 0;
                    while r + 4 <= xr {
                        let xp = [0, 1, 2, 3].map(|k| xs.as_ptr().add((r + k) * n));
                        let mut acc = [[$zero; 4]; 4];
                        let mut i = 0;
                        while i < body1 {
                            let wv = [
                                $load(wp[0].add(i)),
                                $load(wp[1].add(i)),
                                $load(wp[2].add(i)),
                                $load(wp[3].add(i)),
                            ];
                            for (a, p) in acc.iter_mut().zip(xp) {
                                let xv = $load(p.add(i));
                                for (s, w) in a.iter_mut().zip(wv) {
                                    *s = $madd(*s, w, xv);
                                }
                            }
                            i += $width;
                        }
                        for (k, a) in acc.iter().enumerate() {
                            let x_row = &xs[(r + k) * n..(r + k + 1) * n];
                            for j in 0..take {
                                let w_row = &ws[(o + j) * n..(o + j + 1) * n];
                                out[(r + k) * wr + o + j] = $sum(a[j], $zero)
                                    + dot_portable(&x_row[body1..], &w_row[body1..]);
                            }
                        }
                        r += 4;
                    }
                    while r < xr {
                        let px = xs.as_ptr().add(r * n);
                        let mut acc = [[$zero; 2]; 4];
                        let mut i = 0;
                        while i < body2 {
                            let x0 = $load(px.add(i));
                            let x1 = $load(px.add(i + $width));
                            for (a, p) in acc.iter_mut().zip(wp) {
                                a[0] = $madd(a[0], $load(p.add(i)), x0);
                                a[1] = $madd(a[1], $load(p.add(i + $width)), x1);
                            }
                            i += step;
                        }
                        let x_row = &xs[r * n..(r + 1) * n];
                        for j in 0..take {
                            let w_row = &ws[(o + j) * n..(o + j + 1) * n];
                            out[r * wr + o + j] = $sum(acc[j][0], acc[j][1])
                                + dot_portable(&x_row[body2..], &w_row[body2..]);
                        }
                        r += 1;
                    }
                    o += take;
                }
            }
        };
    }

    tiles!(
        f32_avx512,
        "avx512f",
        f32,
        16,
        _mm512_setzero_ps(),
        ld_f32_512,
        fma_512,
        sum_512
    );
    tiles!(
        f16_avx512,
        "avx512f",
        f16,
        16,
        _mm512_setzero_ps(),
        ld_f16_512,
        fma_512,
        sum_512
    );
    tiles!(
        bf16_widen_avx512,
        "avx512f",
        bf16,
        16,
        _mm512_setzero_ps(),
        ld_bf16_as_f32_512,
        fma_512,
        sum_512
    );
    tiles!(
        bf16_avx512,
        "avx512f,avx512bf16",
        bf16,
        32,
        _mm512_setzero_ps(),
        ld_bf16_512,
        dp_bf16_512,
        sum_512
    );
    tiles!(
        f32_avx2,
        "avx2,fma",
        f32,
        8,
        _mm256_setzero_ps(),
        ld_f32_256,
        fma_256,
        sum_256
    );
    tiles!(
        bf16_avx2,
        "avx2,fma",
        bf16,
        8,
        _mm256_setzero_ps(),
        ld_bf16_256,
        fma_256,
        sum_256
    );
    tiles!(
        f16_avx2,
        "avx2,fma,f16c",
        f16,
        8,
        _mm256_setzero_ps(),
        ld_f16_256,
        fma_256,
        sum_256
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU can run, against an f64 reference on the same (exactly widened)
    /// inputs, over lengths that exercise the unrolled body, the single-vector loop and the tail.
    #[test]
    fn kernels_match_an_f64_reference() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let mut sets = vec![("portable", portable())];
        #[cfg(target_arch = "x86_64")]
        sets.push(("best", x86::best()));
        for n in [1usize, 7, 16, 31, 32, 33, 64, 100, 128, 129, 257, 1536] {
            let a: Vec<f32> = (0..n).map(|_| next()).collect();
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            let ab: Vec<bf16> = a.iter().map(|&v| bf16::from_f32(v)).collect();
            let bb: Vec<bf16> = b.iter().map(|&v| bf16::from_f32(v)).collect();
            let ah: Vec<f16> = a.iter().map(|&v| f16::from_f32(v)).collect();
            let bh: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
            let exact = |x: &[f32], y: &[f32]| -> f64 {
                x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum()
            };
            let wide = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
            let wide_h = |v: &[f16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
            let want_f32 = exact(&a, &b);
            let want_bf16 = exact(&wide(&ab), &wide(&bb));
            let want_f16 = exact(&wide_h(&ah), &wide_h(&bh));
            // f32 sums of n terms of magnitude <= 1: a few ulps per term at most.
            let tol = 1e-5 * (n as f64).sqrt().max(1.0);
            let one = |f: &dyn Fn(&mut [f32])| {
                let mut out = [0f32];
                f(&mut out);
                out[0] as f64
            };
            for (name, k) in &sets {
                let got = [
                    ("f32", one(&|o| (k.f32)(&a, &b, n, o)), want_f32),
                    ("bf16", one(&|o| (k.bf16)(&ab, &bb, n, o)), want_bf16),
                    ("f16", one(&|o| (k.f16)(&ah, &bh, n, o)), want_f16),
                ];
                for (dtype, g, w) in got {
                    assert!((g - w).abs() <= tol, "{name} {dtype} n={n}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn matmul_matches_candle_for_every_dtype_and_row_count() -> Result<()> {
        let dev = Device::Cpu;
        for rows in 1..=MAX_ROWS {
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let x = Tensor::randn(0f32, 1.0, (rows, 200), &dev)?.to_dtype(dtype)?;
                let w = Tensor::randn(0f32, 1.0, (70, 200), &dev)?.to_dtype(dtype)?;
                let Some(got) = matmul_t(&x, &w)? else {
                    assert!(rows > MAX_ROWS, "declined {dtype:?} x{rows}");
                    continue;
                };
                assert_eq!(got.dtype(), dtype);
                let want = x
                    .to_dtype(DType::F32)?
                    .matmul(&w.to_dtype(DType::F32)?.t()?)?;
                let diff = (got.to_dtype(DType::F32)? - &want)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                // f32 accumulation order only; reduced dtypes also round the output once (half an
                // ulp, at most 2^-8 of the largest value for bf16 and 2^-11 for f16).
                let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                let tol = match dtype {
                    DType::BF16 => scale / 256.0,
                    DType::F16 => scale / 2048.0,
                    _ => 1e-4,
                };
                assert!(diff <= tol, "rows={rows} {dtype:?}: {diff}");
            }
        }
        // Strided activations are made contiguous; a non-contiguous weight is declined.
        let x = Tensor::randn(0f32, 1.0, (8, 3), &dev)?.t()?;
        let w = Tensor::randn(0f32, 1.0, (5, 8), &dev)?;
        assert!(matmul_t(&x, &w)?.is_some());
        assert!(matmul_t(&x, &w.t()?.contiguous()?.t()?)?.is_none());
        let many = Tensor::randn(0f32, 1.0, (MAX_ROWS + 1, 8), &dev)?;
        assert!(matmul_t(&many, &w)?.is_none());
        Ok(())
    }
}
