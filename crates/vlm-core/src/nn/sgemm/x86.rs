//! The AVX-512 microkernels of the packed GEMM.

use super::{Out, NR};
use std::arch::x86_64::*;

/// How far ahead (in f32s, 24 input features) [`tile`] asks for its weight panel.
const PREFETCH_AHEAD: usize = 24 * NR;

/// `y[i][..cols] (+)= sum_k x[k][i] * w[k][..cols]` for `R` rows.
///
/// The panel block streams from L2: every two input features the kernel asks for the four
/// lines it will need [`PREFETCH_AHEAD`] values on, and before the loop for the outputs it
/// will add to, so neither waits at the end (2-14% on the vision and prefill shapes,
/// measured alternating with the plain loop in one process).
///
/// # Safety
/// As [`super::block`], with `R` rows.
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn tile<const R: usize>(
    x: *const f32,
    ldk: usize,
    w: *const f32,
    kc: usize,
    out: &Out,
) {
    if !out.first {
        for i in 0..R {
            let row = out.y.add(i * out.ldy);
            _mm_prefetch::<_MM_HINT_T0>(row as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(16) as *const i8);
        }
    }
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let mut k = 0;
    while k < kc {
        if k % 2 == 0 {
            // Two input features are two 128-byte rows of the panel: four lines. A hint
            // only, never a fault, past the block's end too.
            let ahead = w.wrapping_add(k * NR + PREFETCH_AHEAD) as *const i8;
            for line in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
            }
        }
        let w0 = _mm512_load_ps(w.add(k * NR));
        let w1 = _mm512_load_ps(w.add(k * NR + 16));
        for (i, a) in acc.iter_mut().enumerate() {
            let b = _mm512_set1_ps(*x.add(k * ldk + i));
            a[0] = _mm512_fmadd_ps(b, w0, a[0]);
            a[1] = _mm512_fmadd_ps(b, w1, a[1]);
        }
        k += 1;
    }
    store(out, &acc);
}

/// [`super::finish`], compiled for AVX-512 so that `f` vectorizes.
///
/// # Safety
/// As [`super::finish`].
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn finish<F: Fn(f32) -> f32>(out: &Out, rows: usize, f: F) {
    for i in 0..rows {
        for v in std::slice::from_raw_parts_mut(out.y.add(i * out.ldy), out.cols) {
            *v = f(*v);
        }
    }
}

/// `y[i][..cols] = acc[i] (+ bias)` or `+= acc[i]` for each row `i`.
#[inline(always)]
unsafe fn store<const R: usize>(out: &Out, acc: &[[__m512; 2]; R]) {
    let cols = out.cols;
    let lo: __mmask16 = if cols >= 16 {
        0xffff
    } else {
        (1u32 << cols) as u16 - 1
    };
    let hi: __mmask16 = if cols >= NR {
        0xffff
    } else if cols > 16 {
        (1u32 << (cols - 16)) as u16 - 1
    } else {
        0
    };
    let bias = if out.first && !out.bias.is_null() {
        Some((
            _mm512_maskz_loadu_ps(lo, out.bias),
            _mm512_maskz_loadu_ps(hi, out.bias.add(16)),
        ))
    } else {
        None
    };
    for (i, a) in acc.iter().enumerate() {
        let row = out.y.add(i * out.ldy);
        let (mut v0, mut v1) = (a[0], a[1]);
        if !out.first {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(lo, row));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(hi, row.add(16)));
        } else if let Some((b0, b1)) = bias {
            v0 = _mm512_add_ps(v0, b0);
            v1 = _mm512_add_ps(v1, b1);
        }
        _mm512_mask_storeu_ps(row, lo, v0);
        _mm512_mask_storeu_ps(row.add(16), hi, v1);
    }
}

/// [`tile`] for one row (a decode step): bound by how fast the panel streams in, so four
/// input features per step into independent accumulators keep more loads in flight than
/// one dependent chain of FMAs would.
///
/// # Safety
/// As [`super::block`], with one row.
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn row(x: *const f32, ldk: usize, w: *const f32, kc: usize, out: &Out) {
    let mut acc = [_mm512_setzero_ps(); 8];
    let mut k = 0;
    while k + 4 <= kc {
        for u in 0..4 {
            let b = _mm512_set1_ps(*x.add((k + u) * ldk));
            let wk = w.add((k + u) * NR);
            acc[2 * u] = _mm512_fmadd_ps(b, _mm512_load_ps(wk), acc[2 * u]);
            acc[2 * u + 1] = _mm512_fmadd_ps(b, _mm512_load_ps(wk.add(16)), acc[2 * u + 1]);
        }
        k += 4;
    }
    while k < kc {
        let b = _mm512_set1_ps(*x.add(k * ldk));
        acc[0] = _mm512_fmadd_ps(b, _mm512_load_ps(w.add(k * NR)), acc[0]);
        acc[1] = _mm512_fmadd_ps(b, _mm512_load_ps(w.add(k * NR + 16)), acc[1]);
        k += 1;
    }
    let v0 = _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[4], acc[6]));
    let v1 = _mm512_add_ps(_mm512_add_ps(acc[1], acc[3]), _mm512_add_ps(acc[5], acc[7]));
    store(out, &[[v0, v1]]);
}
