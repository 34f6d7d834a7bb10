//! AVX-512 (F, BW, VL) + VNNI kernels.
//!
//! Every `unsafe fn` here requires the target features it is compiled with; [`best`] hands
//! them out only after detecting those features, wrapped in safe function pointers.
use super::*;
use std::arch::x86_64::*;

pub(super) fn best() -> Option<Kernels> {
    let ok = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("f16c");
    ok.then_some(Kernels {
        q8_0: band_q8_0,
        q4k: band_q4k,
    })
}

fn band_q8_0(acts: &ActsQ8_0, ws: &[u8], out: &mut [f32]) {
    // SAFETY: only handed out by `best` after detecting the features.
    unsafe {
        match acts.rows() {
            1 => band_q8_0_avx512::<1>(acts, ws, out),
            2 => band_q8_0_avx512::<2>(acts, ws, out),
            3 => band_q8_0_avx512::<3>(acts, ws, out),
            _ => band_q8_0_avx512::<4>(acts, ws, out),
        }
    }
}

fn band_q4k(acts: &ActsQ8K, ws: &[u8], out: &mut [f32]) {
    // SAFETY: only handed out by `best` after detecting the features.
    unsafe {
        match acts.rows() {
            1 => band_q4k_avx512::<1>(acts, ws, out),
            2 => band_q4k_avx512::<2>(acts, ws, out),
            3 => band_q4k_avx512::<3>(acts, ws, out),
            _ => band_q4k_avx512::<4>(acts, ws, out),
        }
    }
}

/// `R` activation rows against the band, four weight rows at a time (four memory streams);
/// a last group of fewer rows repeats its last row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
unsafe fn band_q8_0_avx512<const R: usize>(acts: &ActsQ8_0, ws: &[u8], out: &mut [f32]) {
    let row_bytes = acts.in_dim / Q8_0_BLOCK * Q8_0_BYTES;
    let n = ws.len() / row_bytes;
    let mut o = 0;
    while o < n {
        let rows = [0, 1, 2, 3].map(|j| ws.as_ptr().add((o + j).min(n - 1) * row_bytes));
        let sums = rows_q8_0::<R>(acts, rows, row_bytes);
        let take = (n - o).min(4);
        for (r, row) in sums.iter().enumerate() {
            out[r * n + o..r * n + o + take].copy_from_slice(&row[..take]);
        }
        o += 4;
    }
}

/// Two weight rows share a 512-bit register, one per half. Weights are read as unsigned
/// bytes `w ^ 0x80 = w + 128`, so one `vpdpbusd` against the signed activations gives a
/// block's dot product plus `128 * sum(x)`, which the accumulator starts at minus (in the
/// first lane of each half). Per block that is one integer instruction per pair of rows,
/// then one conversion and one FMA by the two rows' scales times the activation scale.
// Indices address several per-row arrays at once.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn rows_q8_0<const R: usize>(
    acts: &ActsQ8_0,
    w: [*const u8; 4],
    row_bytes: usize,
) -> [[f32; 4]; R] {
    let blocks = acts.in_dim / Q8_0_BLOCK;
    let xq = acts.q.as_ptr();
    let flip = _mm512_set1_epi8(-128);
    // Lanes 0-7 take element 0 (the first row's scale), lanes 8-15 element 1.
    let halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for b in 0..blocks {
        let at = b * Q8_0_BYTES;
        let mut wu = [_mm512_setzero_si512(); 2];
        let mut dw = [_mm_setzero_ps(); 2];
        for p in 0..2 {
            let (lo, hi) = (w[2 * p].add(at), w[2 * p + 1].add(at));
            // Rows of a narrow layer are only ~50 cache lines long, too short for the hardware
            // prefetcher to ramp up: fetch the same block of the next four rows into L2.
            prefetch(lo.wrapping_add(4 * row_bytes));
            prefetch(hi.wrapping_add(4 * row_bytes));
            let pair = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(lo.add(2) as *const __m256i)),
                _mm256_loadu_si256(hi.add(2) as *const __m256i),
            );
            wu[p] = _mm512_xor_si512(pair, flip);
            let bits = (lo as *const u16).read_unaligned() as u32
                | ((hi as *const u16).read_unaligned() as u32) << 16;
            dw[p] = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
        }
        for r in 0..R {
            let x = _mm256_loadu_si256(xq.add(r * acts.in_dim + b * 32) as *const __m256i);
            let x = _mm512_broadcast_i64x4(x);
            let start = _mm512_maskz_set1_epi32(0x0101, *acts.offset.get_unchecked(r * blocks + b));
            let dx = _mm_set1_ps(*acts.d.get_unchecked(r * blocks + b));
            for p in 0..2 {
                let dot = _mm512_dpbusd_epi32(start, wu[p], x);
                let scale =
                    _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(_mm_mul_ps(dw[p], dx)));
                acc[r][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[r][p]);
            }
        }
    }
    let mut sums = [[0f32; 4]; R];
    for r in 0..R {
        for p in 0..2 {
            let v = acc[r][p];
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            sums[r][2 * p] = hsum256(_mm512_castps512_ps256(v));
            sums[r][2 * p + 1] = hsum256(hi);
        }
    }
    sums
}

/// How far ahead of the Q4_K stream to prefetch.
const PREFETCH_BYTES: usize = 4096;

/// Into L2 (far enough ahead that L1 would evict it first). A hint only: never faults,
/// whatever the address.
#[inline(always)]
fn prefetch(p: *const u8) {
    // SAFETY: prefetching does not access memory architecturally.
    unsafe { _mm_prefetch::<_MM_HINT_T1>(p as *const i8) }
}

#[inline(always)]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Per 256-weight block: four `vpdpbusd` (4-bit weights are already unsigned) give per-lane
/// sums of four products, eight lanes per sub-block; pairs of them are narrowed to i16 (at
/// most 4 * 15 * 127 in magnitude) and multiplied by the 6-bit sub-block scales with
/// `vpmaddwd`, so a block costs one conversion to f32. The mins term uses the activation
/// sums of each sub-block.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
unsafe fn band_q4k_avx512<const R: usize>(acts: &ActsQ8K, ws: &[u8], out: &mut [f32]) {
    let blocks = acts.in_dim / QK_K;
    let row_bytes = blocks * Q4K_BYTES;
    let n = ws.len() / row_bytes;
    let xq = acts.q.as_ptr();
    let nibble = _mm512_set1_epi8(0x0f);
    // After `vpackssdw` of the dot products of sub-blocks (a, c) and (b, d), 128-bit lanes
    // 0-1 hold [a x4, b x4] and lanes 2-3 [c x4, d x4] in i16: the scale of each i16.
    let pick = |a: i16, b: i16, c: i16, d: i16| {
        let lane = |x: i16, y: i16| [x, x, x, x, y, y, y, y];
        let v: Vec<i16> = [lane(a, b), lane(a, b), lane(c, d), lane(c, d)].concat();
        _mm512_loadu_si512(v.as_ptr() as *const __m512i)
    };
    let pick_lo = pick(0, 1, 2, 3);
    let pick_hi = pick(4, 5, 6, 7);
    for o in 0..n {
        let w = ws.as_ptr().add(o * row_bytes);
        let mut acc = [_mm512_setzero_ps(); R];
        let mut acc_min = [_mm_setzero_ps(); R];
        for b in 0..blocks {
            let blk = w.add(b * Q4K_BYTES);
            // The band is one sequential stream: keep it in flight well ahead.
            let ahead = blk.wrapping_add(PREFETCH_BYTES);
            prefetch(ahead);
            prefetch(ahead.wrapping_add(64));
            prefetch(ahead.wrapping_add(128));
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
            let (d, dmin) = (_mm_cvtss_f32(dd), _mm_cvtss_f32(_mm_movehdup_ps(dd)));
            let (sc, mn) = unpack_scales(std::slice::from_raw_parts(blk.add(4), 12));
            let sc16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
            let mn16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
            let sc_lo = _mm512_permutexvar_epi16(pick_lo, sc16);
            let sc_hi = _mm512_permutexvar_epi16(pick_hi, sc16);
            let q0 = _mm512_loadu_si512(blk.add(16) as *const __m512i);
            let q1 = _mm512_loadu_si512(blk.add(80) as *const __m512i);
            let lo0 = _mm512_and_si512(q0, nibble);
            let hi0 = _mm512_and_si512(_mm512_srli_epi16(q0, 4), nibble);
            let lo1 = _mm512_and_si512(q1, nibble);
            let hi1 = _mm512_and_si512(_mm512_srli_epi16(q1, 4), nibble);
            for r in 0..R {
                let x = xq.add(r * acts.in_dim + b * QK_K) as *const __m512i;
                let z = _mm512_setzero_si512();
                let d0 = _mm512_dpbusd_epi32(z, lo0, _mm512_loadu_si512(x));
                let d1 = _mm512_dpbusd_epi32(z, hi0, _mm512_loadu_si512(x.add(1)));
                let d2 = _mm512_dpbusd_epi32(z, lo1, _mm512_loadu_si512(x.add(2)));
                let d3 = _mm512_dpbusd_epi32(z, hi1, _mm512_loadu_si512(x.add(3)));
                let s01 = _mm512_madd_epi16(_mm512_packs_epi32(d0, d1), sc_lo);
                let s23 = _mm512_madd_epi16(_mm512_packs_epi32(d2, d3), sc_hi);
                let dx = *acts.d.get_unchecked(r * blocks + b);
                let isum = _mm512_cvtepi32_ps(_mm512_add_epi32(s01, s23));
                acc[r] = _mm512_fmadd_ps(isum, _mm512_set1_ps(d * dx), acc[r]);
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
            *out.get_unchecked_mut(r * n + o) = _mm512_reduce_add_ps(acc[r]) - _mm_cvtss_f32(m);
        }
    }
}
