//! Which kernels run: the instruction set detected once (or asked for by a caller on its
//! thread), and the dispatch of each block of a product to the kernel compiled for its rows.

use super::Out;
#[cfg(not(target_arch = "x86_64"))]
use super::NR;
#[cfg(target_arch = "x86_64")]
use super::{avx2, x86};

/// The instruction sets the packed kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    /// AVX-512F + FMA: [`x86`].
    Avx512,
    /// AVX2 + FMA: [`avx2`].
    Avx2,
}

/// The best kernels this CPU runs (checked once), if any.
pub(super) fn isa() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            if !is_x86_feature_detected!("fma") {
                None
            } else if is_x86_feature_detected!("avx512f") {
                Some(Isa::Avx512)
            } else if is_x86_feature_detected!("avx2") {
                Some(Isa::Avx2)
            } else {
                None
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Whether this CPU runs the packed kernels (AVX-512 or AVX2, with FMA).
pub(crate) fn available() -> bool {
    isa().is_some()
}

/// `f` over the `rows x out.cols` block at `out.y`, just stored.
///
/// # Safety
/// As [`block`]: this CPU runs `isa`'s kernels; `out.y` holds `rows` rows of stride
/// `out.ldy` with `out.cols` values each.
pub(super) unsafe fn finish<F: Fn(f32) -> f32>(isa: Isa, out: &Out, rows: usize, f: F) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 => x86::finish(out, rows, f),
        Isa::Avx2 => avx2::finish(out, rows, f),
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    #[cfg(not(target_arch = "x86_64"))]
    for i in 0..rows {
        for v in std::slice::from_raw_parts_mut(out.y.add(i * out.ldy), out.cols) {
            *v = f(*v);
        }
    }
}

/// Dispatches `mr <= MR` rows to the kernel compiled for that many.
///
/// # Safety
/// This CPU runs `isa`'s kernels (see [`isa`]). `x` holds `kc` steps of stride `ldk` with `mr` readable
/// values each (a tile of packed activations), `w` holds `kc * NR` values, `out.y` holds `mr`
/// rows of stride `out.ldy` with `out.cols <= NR` writable values each (readable unless
/// `out.first`), and `out.bias` is null or holds `out.cols` values.
pub(super) unsafe fn block(
    isa: Isa,
    mr: usize,
    x: *const f32,
    ldk: usize,
    w: *const f32,
    kc: usize,
    out: &Out,
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        let f = match mr {
            12 => avx2::tile::<12>,
            11 => avx2::tile::<11>,
            10 => avx2::tile::<10>,
            9 => avx2::tile::<9>,
            8 => avx2::tile::<8>,
            7 => avx2::tile::<7>,
            6 => avx2::tile::<6>,
            5 => avx2::tile::<5>,
            4 => avx2::tile::<4>,
            3 => avx2::tile::<3>,
            2 => avx2::tile::<2>,
            _ => avx2::row,
        };
        f(x, ldk, w, kc, out);
    } else {
        let f = match mr {
            12 => x86::tile::<12>,
            11 => x86::tile::<11>,
            10 => x86::tile::<10>,
            9 => x86::tile::<9>,
            8 => x86::tile::<8>,
            7 => x86::tile::<7>,
            6 => x86::tile::<6>,
            5 => x86::tile::<5>,
            4 => x86::tile::<4>,
            3 => x86::tile::<3>,
            2 => x86::tile::<2>,
            _ => x86::row,
        };
        f(x, ldk, w, kc, out);
    }
    // Portable form of the same tile. Nothing packs weights where `available()` is false, so
    // this only keeps `block` total off x86.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    #[cfg(not(target_arch = "x86_64"))]
    for i in 0..mr {
        for j in 0..out.cols {
            let mut sum = 0f32;
            for k in 0..kc {
                sum += *x.add(k * ldk + i) * *w.add(k * NR + j);
            }
            let y = out.y.add(i * out.ldy + j);
            *y = if !out.first {
                *y + sum
            } else if out.bias.is_null() {
                sum
            } else {
                sum + *out.bias.add(j)
            };
        }
    }
}

thread_local! {
    /// Kernels a caller on this thread asks for instead of the best ones (tests run the AVX2
    /// kernels on AVX-512 CPUs this way); `None` takes [`isa`].
    pub(super) static ISA_OVERRIDE: std::cell::Cell<Option<Isa>> = const { std::cell::Cell::new(None) };
}
