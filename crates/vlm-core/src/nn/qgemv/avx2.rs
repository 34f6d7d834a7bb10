//! The Q8_0 and Q4_K kernels for x86 CPUs with AVX2 but without AVX-512 VNNI (AMD before
//! Zen 4, Intel client parts). (candle's Q4_K product at one row ran the SmolVLM-256M decode
//! slower than f32 there.)
//!
//! Without `vpdpbusd`, a block's integer dot product is `vpmaddubsw` (unsigned bytes times
//! signed bytes, adjacent pairs summed to 16 bits) then `vpmaddwd` by ones (pairs to 32 bits).
//! The unsigned operand is `|w|` and the signed one `x` with `w`'s sign (`vpsignb`), as GGML's
//! AVX2 kernels do: no pair sum can saturate (`2 * 128 * 127 < 2^15`, since the activations
//! never hold -128), so the dot product is exact, as in the AVX-512 kernel. Q4_K's 4-bit weights
//! are unsigned already: `vpmaddubsw` on them directly, then `vpmaddwd` by the sub-block scale.
//!
//! Every `unsafe fn` here requires the target features it is compiled with; [`kernels`] hands
//! them out only after detecting those features, wrapped in safe function pointers.
use super::*;
use std::arch::x86_64::*;

/// The kernels, when this CPU has what they need.
pub(super) fn kernels() -> Option<Kernels> {
    let ok = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    ok.then_some(Kernels {
        q8_0: band_q8_0,
        q4k: band_q4k,
    })
}

fn band_q4k(acts: &ActsQ8K, ws: &[u8], out: &mut [f32]) {
    // SAFETY: only handed out by `kernels` after detecting the features.
    unsafe {
        match acts.rows() {
            1 => band_q4k_avx2::<1>(acts, ws, out),
            2 => band_q4k_avx2::<2>(acts, ws, out),
            3 => band_q4k_avx2::<3>(acts, ws, out),
            _ => band_q4k_avx2::<4>(acts, ws, out),
        }
    }
}

/// One weight row at a time; per 256-weight block and sub-block `s` (the low or high nibbles
/// of 32 bytes), `vpmaddubsw` against its activations (slot `ORDER[s]` of [`ActsQ8K`]'s
/// layout, at most `2 * 15 * 127` per pair) and `vpmaddwd` by its 6-bit scale: exact i32 sums,
/// one conversion to f32 per block. The mins term uses the activation sums of each sub-block.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn band_q4k_avx2<const R: usize>(acts: &ActsQ8K, ws: &[u8], out: &mut [f32]) {
    // Where ActsQ8K keeps sub-block `s` (its order is its own inverse).
    const SLOT: [usize; 8] = [0, 2, 1, 3, 4, 6, 5, 7];
    let blocks = acts.in_dim / QK_K;
    let row_bytes = blocks * Q4K_BYTES;
    let n = ws.len() / row_bytes;
    let xq = acts.q.as_ptr();
    let nibble = _mm256_set1_epi8(0x0f);
    for o in 0..n {
        let w = ws.as_ptr().add(o * row_bytes);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut acc_min = [_mm_setzero_ps(); R];
        for b in 0..blocks {
            let blk = w.add(b * Q4K_BYTES);
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(4 * Q4K_BYTES) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(4 * Q4K_BYTES + 64) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(4 * Q4K_BYTES + 128) as *const i8);
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
            let (d, dmin) = (_mm_cvtss_f32(dd), _mm_cvtss_f32(_mm_movehdup_ps(dd)));
            let (sc, mn) = unpack_scales(std::slice::from_raw_parts(blk.add(4), 12));
            let scale: [__m256i; 8] =
                std::array::from_fn(|s| _mm256_set1_epi16(((sc >> (8 * s)) & 0xff) as i16));
            let mn16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
            let mut nibbles = [_mm256_setzero_si256(); 8];
            for j in 0..4 {
                let q = _mm256_loadu_si256(blk.add(16 + 32 * j) as *const __m256i);
                nibbles[2 * j] = _mm256_and_si256(q, nibble);
                nibbles[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), nibble);
            }
            for r in 0..R {
                let x = xq.add(r * acts.in_dim + b * QK_K);
                let mut isum = _mm256_setzero_si256();
                for s in 0..8 {
                    let xs = _mm256_loadu_si256(x.add(SLOT[s] * 32) as *const __m256i);
                    let pairs = _mm256_maddubs_epi16(nibbles[s], xs);
                    isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, scale[s]));
                }
                let dx = *acts.d.get_unchecked(r * blocks + b);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * dx), acc[r]);
                let sums =
                    _mm_loadu_si128(acts.sums.as_ptr().add((r * blocks + b) * 8) as *const __m128i);
                let imin = _mm_cvtepi32_ps(_mm_madd_epi16(mn16, sums));
                acc_min[r] = _mm_fmadd_ps(imin, _mm_set1_ps(dmin * dx), acc_min[r]);
            }
        }
        for r in 0..R {
            let m = acc_min[r];
            let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_add_ss(m, _mm_movehdup_ps(m));
            *out.get_unchecked_mut(r * n + o) = hsum(acc[r]) - _mm_cvtss_f32(m);
        }
    }
}

fn band_q8_0(acts: &ActsQ8_0, ws: &[u8], out: &mut [f32]) {
    // SAFETY: only handed out by `kernels` after detecting the features.
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
