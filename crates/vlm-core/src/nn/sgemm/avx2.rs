//! The AVX2 microkernels of the packed GEMM, for x86 CPUs without AVX-512 (AMD before Zen 4,
//! Intel client parts).
//!
//! Sixteen 256-bit registers cannot hold an `MR x NR` block of outputs, so a tile is swept in
//! sub-blocks of up to six rows by half a panel (16 outputs, two registers): twelve
//! accumulators, two weight vectors and one broadcast per input feature, the shape of the
//! `gemm` crate's AVX2 kernel. Each output is the same sequential sum of FMAs over the input
//! features as in the AVX-512 kernels (and the one-row kernel splits the features four ways as
//! they do), so both give the same bits.

use super::{Out, NR};
use std::arch::x86_64::*;

/// Rows per sub-block.
const SUB: usize = 6;
/// Outputs per sub-block: half a panel.
const HALF: usize = NR / 2;

/// `y[i][..cols] (+)= sum_k x[k][i] * w[k][..cols]` for `R` rows.
///
/// # Safety
/// As [`super::block`], with `R` rows, on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile<const R: usize>(
    x: *const f32,
    ldk: usize,
    w: *const f32,
    kc: usize,
    out: &Out,
) {
    let mut i0 = 0;
    while i0 < R {
        let x = x.add(i0);
        for half in 0..2 {
            let Some(sub) = half_of(out, i0, half) else {
                continue;
            };
            let w = w.add(half * HALF);
            match (R - i0).min(SUB) {
                6 => rows::<6>(x, ldk, w, kc, &sub),
                5 => rows::<5>(x, ldk, w, kc, &sub),
                4 => rows::<4>(x, ldk, w, kc, &sub),
                3 => rows::<3>(x, ldk, w, kc, &sub),
                2 => rows::<2>(x, ldk, w, kc, &sub),
                _ => rows::<1>(x, ldk, w, kc, &sub),
            }
        }
        i0 += SUB;
    }
}

/// The outputs of rows `i0..` in half `half` of the panel, `None` when the panel's valid
/// columns end before it.
#[inline(always)]
unsafe fn half_of(out: &Out, i0: usize, half: usize) -> Option<Out> {
    let c0 = half * HALF;
    (out.cols > c0).then(|| Out {
        y: out.y.add(i0 * out.ldy + c0),
        ldy: out.ldy,
        cols: (out.cols - c0).min(HALF),
        first: out.first,
        bias: if out.bias.is_null() {
            out.bias
        } else {
            out.bias.add(c0)
        },
    })
}

/// `S` rows by one half panel (`w` at the half's first column, rows still [`NR`] apart).
#[inline(always)]
unsafe fn rows<const S: usize>(x: *const f32, ldk: usize, w: *const f32, kc: usize, out: &Out) {
    let mut acc = [[_mm256_setzero_ps(); 2]; S];
    for k in 0..kc {
        // Panels are 64-byte aligned and a half starts 64 bytes in.
        let w0 = _mm256_load_ps(w.add(k * NR));
        let w1 = _mm256_load_ps(w.add(k * NR + 8));
        for (i, a) in acc.iter_mut().enumerate() {
            let b = _mm256_set1_ps(*x.add(k * ldk + i));
            a[0] = _mm256_fmadd_ps(b, w0, a[0]);
            a[1] = _mm256_fmadd_ps(b, w1, a[1]);
        }
    }
    store(out, &acc);
}

/// `y[i][..cols] = acc[i] (+ bias)` or `+= acc[i]` for each row `i` of a half panel.
#[inline(always)]
unsafe fn store<const S: usize>(out: &Out, acc: &[[__m256; 2]; S]) {
    let bias = (out.first && !out.bias.is_null()).then(|| load(out.bias, out.cols));
    for (i, a) in acc.iter().enumerate() {
        let row = out.y.add(i * out.ldy);
        let (mut v0, mut v1) = (a[0], a[1]);
        if !out.first {
            let (y0, y1) = load(row, out.cols);
            v0 = _mm256_add_ps(v0, y0);
            v1 = _mm256_add_ps(v1, y1);
        } else if let Some((b0, b1)) = bias {
            v0 = _mm256_add_ps(v0, b0);
            v1 = _mm256_add_ps(v1, b1);
        }
        if out.cols == HALF {
            _mm256_storeu_ps(row, v0);
            _mm256_storeu_ps(row.add(8), v1);
        } else {
            let mut lanes = [0f32; HALF];
            _mm256_storeu_ps(lanes.as_mut_ptr(), v0);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), v1);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), row, out.cols);
        }
    }
}

/// The first `cols <= HALF` values at `p` as two vectors, zeros past them.
#[inline(always)]
unsafe fn load(p: *const f32, cols: usize) -> (__m256, __m256) {
    if cols == HALF {
        return (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
    }
    let mut lanes = [0f32; HALF];
    std::ptr::copy_nonoverlapping(p, lanes.as_mut_ptr(), cols);
    (
        _mm256_loadu_ps(lanes.as_ptr()),
        _mm256_loadu_ps(lanes.as_ptr().add(8)),
    )
}

/// [`super::finish`], compiled for AVX2 so that `f` vectorizes.
///
/// # Safety
/// As [`super::finish`], on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn finish<F: Fn(f32) -> f32>(out: &Out, rows: usize, f: F) {
    for i in 0..rows {
        for v in std::slice::from_raw_parts_mut(out.y.add(i * out.ldy), out.cols) {
            *v = f(*v);
        }
    }
}

/// [`tile`] for one row (a decode step), half a panel at a time, with the input features
/// split four ways into independent accumulators as the AVX-512 one-row kernel does.
///
/// # Safety
/// As [`super::block`], with one row, on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn row(x: *const f32, ldk: usize, w: *const f32, kc: usize, out: &Out) {
    for half in 0..2 {
        let Some(sub) = half_of(out, 0, half) else {
            continue;
        };
        let w = w.add(half * HALF);
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let mut k = 0;
        while k + 4 <= kc {
            for (u, a) in acc.iter_mut().enumerate() {
                let b = _mm256_set1_ps(*x.add((k + u) * ldk));
                let wk = w.add((k + u) * NR);
                a[0] = _mm256_fmadd_ps(b, _mm256_load_ps(wk), a[0]);
                a[1] = _mm256_fmadd_ps(b, _mm256_load_ps(wk.add(8)), a[1]);
            }
            k += 4;
        }
        while k < kc {
            let b = _mm256_set1_ps(*x.add(k * ldk));
            let wk = w.add(k * NR);
            acc[0][0] = _mm256_fmadd_ps(b, _mm256_load_ps(wk), acc[0][0]);
            acc[0][1] = _mm256_fmadd_ps(b, _mm256_load_ps(wk.add(8)), acc[0][1]);
            k += 1;
        }
        let mut v = [_mm256_setzero_ps(); 2];
        for (j, v) in v.iter_mut().enumerate() {
            *v = _mm256_add_ps(
                _mm256_add_ps(acc[0][j], acc[1][j]),
                _mm256_add_ps(acc[2][j], acc[3][j]),
            );
        }
        store(&sub, &[v]);
    }
}
