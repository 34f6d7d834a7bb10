//! Criterion benches of the hot operations, at the Qwen2-VL-2B shapes the end-to-end targets use
//! (text width 1536, MLP 8960, 12 query / 2 key-value heads of 128; vision width 1280, MLP 5120,
//! 16 heads of 80, 1024 patches for a 448x448 image).
//!
//! `cargo bench -p vlm-benches --bench ops` (add `-- matmul` to run one group).

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vlm_core::nn::{attention, attention_gqa, Linear, Quantization, RopeScaling, RotaryEmbedding};
use vlm_preprocess::image::RgbImage;
use vlm_preprocess::Resample;

type Res<T> = candle_core::Result<T>;

fn linear(out_dim: usize, in_dim: usize, dtype: DType) -> Res<Linear> {
    let w = (Tensor::randn(0f32, 1.0, (out_dim, in_dim), &Device::Cpu)? / (in_dim as f64).sqrt())?;
    Ok(Linear::from_weights(w.to_dtype(dtype)?, None))
}

fn input(rows: usize, in_dim: usize, dtype: DType) -> Res<Tensor> {
    Tensor::randn(0f32, 1.0, (rows, in_dim), &Device::Cpu)?.to_dtype(dtype)
}

/// Dense and quantized linear layers: decode (one row) and prefill / vision (many rows).
fn matmul(c: &mut Criterion) -> Res<()> {
    let mut group = c.benchmark_group("linear");
    group.sample_size(10);
    // (name, rows, in, out)
    let shapes = [
        ("decode_lm_head", 1, 1536, 151_936),
        ("decode_mlp_up", 1, 1536, 8960),
        ("decode_mlp_down", 1, 8960, 1536),
        ("prefill_mlp_up", 412, 1536, 8960),
        ("prefill_mlp_down", 127, 8960, 1536),
        ("vision_mlp_up", 1024, 1280, 5120),
        // SmolLM2-135M (SmolVLM-256M's decoder): widths off the 256 grid of candle's fast
        // quantized GEMM, stacked q/k/v and gate/up as the loader builds them.
        ("smol_prefill_qkv", 1262, 576, 960),
        ("smol_prefill_gate_up", 1262, 576, 3072),
        ("smol_prefill_down", 1262, 1536, 576),
    ];
    let kinds: [(&str, DType, Option<Quantization>); 5] = [
        ("f32", DType::F32, None),
        ("bf16", DType::BF16, None),
        ("f16", DType::F16, None),
        ("q8_0", DType::F32, Some(Quantization::Q8_0)),
        ("q4k", DType::F32, Some(Quantization::Q4K)),
    ];
    for (name, rows, in_dim, out_dim) in shapes {
        for (kind, dtype, quant) in kinds {
            // The lm_head shape is for the bandwidth of one decode step only.
            if rows > 1 && dtype == DType::F16 {
                continue;
            }
            let mut layer = linear(out_dim, in_dim, dtype)?;
            if let Some(q) = quant {
                layer = layer.quantized(q)?;
            } else if dtype == DType::F32 {
                // candle's GEMM on the weight as stored, for the packed kernel to beat.
                if rows > 1 {
                    let x = input(rows, in_dim, dtype)?;
                    group.bench_function(BenchmarkId::new(name, "f32_candle"), |b| {
                        b.iter(|| layer.forward(&x).map(|y| y.dims().len()))
                    });
                }
                layer = layer.packed()?;
            }
            let x = input(rows, in_dim, dtype)?;
            group.throughput(Throughput::Elements((rows * in_dim * out_dim) as u64));
            group.bench_function(BenchmarkId::new(name, kind), |b| {
                b.iter(|| layer.forward(&x).map(|y| y.dims().len()))
            });
            // candle's own quantized matmul on the same blocks, for the decode kernels to beat.
            if let (Some(q), 1) = (quant, rows) {
                let w = linear(out_dim, in_dim, DType::F32)?.weight().cloned();
                let w = w.ok_or_else(|| candle_core::Error::Msg("dense weight".into()))?;
                let ggml = match q {
                    Quantization::Q8_0 => GgmlDType::Q8_0,
                    Quantization::Q4K => GgmlDType::Q4K,
                };
                let candle = QMatMul::from_qtensor(QTensor::quantize(&w, ggml)?)?;
                group.bench_function(BenchmarkId::new(name, format!("{kind}_candle")), |b| {
                    b.iter(|| candle.forward(&x).map(|y| y.dims().len()))
                });
            }
        }
    }
    group.finish();
    Ok(())
}

/// Vision attention over one image's patches, and one decode step of grouped-query attention
/// over a 412-token cache.
fn attn(c: &mut Criterion) -> Res<()> {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    let q = Tensor::randn(0f32, 1.0, (1, 16, 1024, 80), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (1, 16, 1024, 80), &dev)?;
    let v = Tensor::randn(0f32, 1.0, (1, 16, 1024, 80), &dev)?;
    let scale = 1.0 / 80f64.sqrt();
    group.bench_function("vision_1024x16x80", |b| {
        b.iter(|| attention(&q, &k, &v, None, scale).map(|y| y.dims().len()))
    });
    let q = Tensor::randn(0f32, 1.0, (1, 12, 1, 128), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (1, 2, 412, 128), &dev)?;
    let v = Tensor::randn(0f32, 1.0, (1, 2, 412, 128), &dev)?;
    let scale = 1.0 / 128f64.sqrt();
    group.bench_function("decode_gqa_12x2x412", |b| {
        b.iter(|| attention_gqa(&q, &k, &v, 6, None, scale).map(|y| y.dims().len()))
    });
    group.finish();
    Ok(())
}

/// cos/sin tables for a prefill and their application to the query heads.
fn rope(c: &mut Criterion) -> Res<()> {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("rope");
    let rope = RotaryEmbedding::new(128, 1e6, &RopeScaling::Default, &dev)?;
    let positions = Tensor::arange(0u32, 412, &dev)?.unsqueeze(0)?;
    group.bench_function("cos_sin_412", |b| {
        b.iter(|| {
            rope.cos_sin(&positions, DType::F32)
                .map(|t| t.0.dims().len())
        })
    });
    let (cos, sin) = rope.cos_sin(&positions, DType::F32)?;
    let q = Tensor::randn(0f32, 1.0, (1, 12, 412, 128), &dev)?;
    group.bench_function("apply_12x412x128", |b| {
        b.iter(|| RotaryEmbedding::apply(&q, &cos, &sin).map(|y| y.dims().len()))
    });
    group.finish();
    Ok(())
}

/// Pillow-exact resampling of a camera-sized image to the 448x448 the targets use.
fn resize(c: &mut Criterion) {
    let mut group = c.benchmark_group("resize");
    group.sample_size(20);
    let src = RgbImage::from_fn(1024, 768, |x, y| {
        vlm_preprocess::image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 251) as u8])
    });
    for (name, filter) in [
        ("bicubic", Resample::Bicubic),
        ("bilinear", Resample::Bilinear),
    ] {
        group.bench_function(BenchmarkId::new("1024x768_to_448", name), |b| {
            b.iter(|| vlm_preprocess::resize(&src, 448, 448, filter).map(|i| i.width()))
        });
    }
    group.finish();
}

fn all(c: &mut Criterion) {
    let run = |name: &str, r: Res<()>| {
        if let Err(e) = r {
            eprintln!("bench group {name} could not be set up: {e}");
            std::process::exit(1);
        }
    };
    run("linear", matmul(c));
    run("attention", attn(c));
    run("rope", rope(c));
    resize(c);
}

criterion_group!(benches, all);
criterion_main!(benches);
