use super::*;

fn reference(x: &[f32], w: &[f32], rows: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * n];
    for r in 0..rows {
        for o in 0..n {
            let s: f64 = (0..k)
                .map(|i| x[r * k + i] as f64 * w[o * k + i] as f64)
                .sum();
            y[r * n + o] = s as f32;
        }
    }
    y
}

fn values(len: usize, seed: u32) -> Vec<f32> {
    // A small LCG: deterministic, no dependency.
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

#[test]
fn splits_cover_everything_in_balanced_tasks() {
    for (rows, panels, max, threads) in [
        (1024, 40, 8, 2),
        (1024, 120, 8, 2),
        (1024, 160, 8, 2),
        (306, 48, 8, 2),
        (1024, 40, 8, 3),
        (13, 5, 8, 2),
        (12, 5, 4, 2),
        (1, 4748, 4, 2),
        (100, 1, 8, 4),
    ] {
        let s = Split::new(rows, panels, max, threads);
        assert!(
            s.per_group <= max && s.chunk_rows.is_multiple_of(MR),
            "{s:?}"
        );
        // Every panel and every row in exactly one group / chunk.
        assert!(s.groups * s.per_group >= panels && (s.groups - 1) * s.per_group < panels);
        assert!(s.chunks * s.chunk_rows >= rows && (s.chunks - 1) * s.chunk_rows < rows);
        // Many rows: as many equal tasks per thread.
        if rows > MR * threads && panels % max == 0 {
            assert!(
                (s.groups * s.chunks).is_multiple_of(threads),
                "{rows} x {panels}: {s:?}"
            );
        }
    }
    // Five groups of eight panels on two threads: the rows are halved.
    let s = Split::new(1024, 40, 8, 2);
    assert_eq!(
        (s.groups, s.per_group, s.chunks, s.chunk_rows),
        (5, 8, 2, 516)
    );
}

#[test]
fn pack_round_trips_and_stacks() -> Result<()> {
    let (n, k) = (45, 7);
    let w = values(n * k, 1);
    let p = PackedF32::pack(&w, n, k)?;
    assert_eq!(p.unpack(), w);
    let q = PackedF32::pack(&w[..32 * k], 32, k)?;
    let r = PackedF32::pack(&w[32 * k..], n - 32, k)?;
    // Whole panels first (a copy), then a ragged part first (repacked).
    assert_eq!(PackedF32::stack(&[&q, &r])?.unpack(), w);
    let mut swapped = w[32 * k..].to_vec();
    swapped.extend_from_slice(&w[..32 * k]);
    assert_eq!(PackedF32::stack(&[&r, &q])?.unpack(), swapped);
    assert!(PackedF32::pack(&w, n, k + 1).is_err());
    Ok(())
}

#[test]
fn matmul_matches_a_dot_product_at_every_edge() -> Result<()> {
    if !available() {
        // Without the kernels, nothing packs weights, and a direct call is an error.
        let p = PackedF32::pack(&values(64, 4), 8, 8)?;
        let bias = values(8, 6);
        assert!(p
            .matmul_t(&values(8, 5), 1, Some(&bias), Epilogue::None)
            .is_err());
        assert!(p.matmul_t(&values(8, 5), 1, None, Epilogue::None).is_err());
        return Ok(());
    }
    // Row counts across the microkernel and row-block edges, widths off the panel grid,
    // input widths across the K block.
    for (rows, n, k) in [
        (1, 32, 8),
        (1, 70, 300),
        (3, 33, 257),
        (12, 64, 256),
        (13, 31, 5),
        (200, 96, 513),
        (30, 300, 1100),
    ] {
        let x = values(rows * k, 2);
        let w = values(n * k, 3);
        let bias = values(n, 4);
        let packed = PackedF32::pack(&w, n, k)?;
        let want = reference(&x, &w, rows, n, k);
        // Thread counts change how the rows are chunked (see `Split`).
        for (with_bias, threads) in [(false, 1), (true, 2), (true, 3)] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(candle_core::Error::wrap)?;
            let bias = with_bias.then_some(&bias[..]);
            let got = pool.install(|| packed.matmul_t(&x, rows, bias, Epilogue::None))?;
            assert_eq!(got.len(), want.len());
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                let e = bias.map_or(*e, |b| e + b[i % n]);
                assert!(
                    (g - e).abs() <= 1e-5 * (1.0 + e.abs()),
                    "({rows}, {n}, {k}, bias {with_bias}, {threads} threads) at {i}: {g} vs {e}"
                );
            }
            // The fused activations give exactly the unfused values: the same function on
            // the same stored sums.
            for (then, f) in [
                (Epilogue::QuickGelu, cpu_math::quick_gelu as fn(f32) -> f32),
                (Epilogue::GeluTanh, cpu_math::gelu_tanh),
            ] {
                let fused = pool.install(|| packed.matmul_t(&x, rows, bias, then))?;
                let unfused: Vec<f32> = got.iter().map(|&v| f(v)).collect();
                assert_eq!(fused, unfused, "({rows}, {n}, {k}, {then:?})");
            }
        }
    }
    Ok(())
}

/// The AVX2 kernels give the AVX-512 kernels' bits (the same sums in the same order), on every
/// edge the test above covers; on an AVX2-only CPU this compares them with the reference.
#[test]
fn avx2_kernels_give_the_same_bits() -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return Ok(());
        }
        for (rows, n, k) in [
            (1, 70, 300),
            (3, 33, 257),
            (13, 31, 5),
            (200, 96, 513),
            (7, 16, 9),
        ] {
            let x = values(rows * k, 2);
            let w = values(n * k, 3);
            let bias = values(n, 4);
            let packed = PackedF32::pack(&w, n, k)?;
            let want = reference(&x, &w, rows, n, k);
            for then in [Epilogue::None, Epilogue::GeluTanh] {
                let best = packed.matmul_t(&x, rows, Some(&bias), then)?;
                ISA_OVERRIDE.with(|o| o.set(Some(Isa::Avx2)));
                let avx2 = packed.matmul_t(&x, rows, Some(&bias), then);
                ISA_OVERRIDE.with(|o| o.set(None));
                let avx2 = avx2?;
                assert_eq!(avx2, best, "({rows}, {n}, {k}, {then:?})");
                if then == Epilogue::None {
                    for (i, (g, e)) in avx2.iter().zip(&want).enumerate() {
                        let e = e + bias[i % n];
                        assert!(
                            (g - e).abs() <= 1e-5 * (1.0 + e.abs()),
                            "({rows}, {n}, {k}) at {i}"
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
