//! The Q8_0 kernel for x86 CPUs with AVX2 but without AVX-512 VNNI (AMD before Zen 4, Intel
//! client parts). Q4_K stays with candle there: its repacked Q4_K kernels run on plain AVX2.
//!
//! Without `vpdpbusd`, a block's integer dot product is `vpmaddubsw` (unsigned bytes times
//! signed bytes, adjacent pairs summed to 16 bits) then `vpmaddwd` by ones (pairs to 32 bits).
//! The unsigned operand is `|w|` and the signed one `x` with `w`'s sign (`vpsignb`), as GGML's
//! AVX2 kernels do: no pair sum can saturate (`2 * 128 * 127 < 2^15`, since the activations
//! never hold -128), so the dot product is exact, as in the AVX-512 kernel.
//!
//! Every `unsafe fn` here requires the target features it is compiled with; [`q8_0`] hands the
//! kernel out only after detecting them, wrapped in a safe function pointer.
use super::*;
use std::arch::x86_64::*;

/// The kernel, when this CPU has what it needs.
pub(super) fn q8_0() -> Option<BandQ8_0> {
    let ok = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    ok.then_some(band_q8_0 as BandQ8_0)
}

fn band_q8_0(acts: &ActsQ8_0, ws: &[u8], out: &mut [f32]) {
    // SAFETY: only handed out by `q8_0` after detecting the features.
    unsafe {
        match acts.rows() {
            1 => band::<1>(acts, ws, out),
            2 => band::<2>(acts, ws, out),
            3 => band::<3>(acts, ws, out),
            _ => band::<4>(acts, ws, out),
        }
    }
}

/// `R` activation rows against the band, two weight rows at a time (two memory streams, eight
/// accumulators at most); a last odd row is computed twice.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn band<const R: usize>(acts: &ActsQ8_0, ws: &[u8], out: &mut [f32]) {
    let row_bytes = acts.in_dim / Q8_0_BLOCK * Q8_0_BYTES;
    let n = ws.len() / row_bytes;
    let mut o = 0;
    while o < n {
        let rows = [0, 1].map(|j| ws.as_ptr().add((o + j).min(n - 1) * row_bytes));
        let sums = two_rows::<R>(acts, rows, row_bytes);
        let take = (n - o).min(2);
        for (r, row) in sums.iter().enumerate() {
            out[r * n + o..r * n + o + take].copy_from_slice(&row[..take]);
        }
        o += 2;
    }
}

// Indices address several per-row arrays at once.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn two_rows<const R: usize>(
    acts: &ActsQ8_0,
    w: [*const u8; 2],
    row_bytes: usize,
) -> [[f32; 2]; R] {
    let blocks = acts.in_dim / Q8_0_BLOCK;
    let xq = acts.q.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..blocks {
        let at = b * Q8_0_BYTES;
        let mut wv = [_mm256_setzero_si256(); 2];
        let mut wabs = [_mm256_setzero_si256(); 2];
        let mut dw = [0f32; 2];
        for p in 0..2 {
            let blk = w[p].add(at);
            // The same block two rows on: the next step's, into L2 (a hint, never a fault).
            _mm_prefetch::<_MM_HINT_T1>(blk.wrapping_add(2 * row_bytes) as *const i8);
            wv[p] = _mm256_loadu_si256(blk.add(2) as *const __m256i);
            // |-128| wraps to 0x80, which is 128 read unsigned.
            wabs[p] = _mm256_sign_epi8(wv[p], wv[p]);
            let bits = (blk as *const u16).read_unaligned();
            dw[p] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
        }
        for r in 0..R {
            let x = _mm256_loadu_si256(xq.add(r * acts.in_dim + b * Q8_0_BLOCK) as *const __m256i);
            let dx = *acts.d.get_unchecked(r * blocks + b);
            for p in 0..2 {
                let pairs = _mm256_maddubs_epi16(wabs[p], _mm256_sign_epi8(x, wv[p]));
                let dot = _mm256_madd_epi16(pairs, ones);
                acc[r][p] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(dot),
                    _mm256_set1_ps(dw[p] * dx),
                    acc[r][p],
                );
            }
        }
    }
    let mut sums = [[0f32; 2]; R];
    for r in 0..R {
        for p in 0..2 {
            sums[r][p] = hsum(acc[r][p]);
        }
    }
    sums
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}
