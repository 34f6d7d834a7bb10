//! End-to-end benchmark of one model over a device x dtype x quantization matrix: load time,
//! vision encode, time to first token, prefill and decode rates (EOS ignored, one warm-up run,
//! median of N runs, the device synchronized before each clock read) and peak resident memory,
//! printed as a Markdown table and, with `--json`, as JSON. Devices that are not compiled in or
//! not present are reported as absent.
//!
//! ```text
//! cargo run --release -p vlm-benches -- --model <dir or hub id> --image photo.png \
//!     --device cpu,cuda,metal --dtype f32,bf16 --quant none,q8_0
//! ```

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use vlm::{DType, GenerateParams, LoadOptions, ModelSource, Quantization, Request, Vlm};

#[derive(Debug, Parser)]
struct Cli {
    /// Model folder or Hub id.
    #[arg(long)]
    model: String,
    /// Image file (repeatable).
    #[arg(long = "image")]
    images: Vec<std::path::PathBuf>,
    /// Prompt text.
    #[arg(long, default_value = "Describe this image in detail.")]
    prompt: String,
    /// Comma-separated devices to compare: cpu, cuda, metal (cuda:N / metal:N pick an ordinal).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Comma-separated dtypes to compare.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Comma-separated quantizations to compare: none, q8_0, q4k (each with every dtype).
    #[arg(long, default_value = "none")]
    quant: String,
    /// Tokens to generate per run (EOS is ignored).
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Measured runs per configuration (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Also print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    device: String,
    /// Why the device could not be measured; every figure below is absent then.
    #[serde(skip_serializing_if = "Option::is_none")]
    absent: Option<String>,
    dtype: String,
    quant: String,
    load_ms: f64,
    vision_ms_per_image: f64,
    ttft_ms: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    prompt_tokens: usize,
    /// Peak resident set of the process while this configuration loaded and ran (Linux only).
    peak_rss_mb: Option<f64>,
    /// Bytes of the checkpoint's tensors in the requested dtype (before quantization).
    weights_mb: Option<f64>,
}

impl Row {
    fn absent(device: &str, dtype: &str, quant: &str, why: String) -> Self {
        Self {
            device: device.to_string(),
            absent: Some(why),
            dtype: dtype.to_string(),
            quant: quant.to_string(),
            load_ms: f64::NAN,
            vision_ms_per_image: f64::NAN,
            ttft_ms: f64::NAN,
            prefill_tok_s: f64::NAN,
            decode_tok_s: f64::NAN,
            prompt_tokens: 0,
            peak_rss_mb: None,
            weights_mb: None,
        }
    }
}

/// Opens a device by name, or says why it is not available in this build on this machine.
fn open_device(name: &str) -> std::result::Result<vlm::Device, String> {
    let (kind, ordinal) = match name.split_once(':') {
        Some((k, n)) => (
            k,
            n.parse::<usize>()
                .map_err(|e| format!("bad ordinal: {e}"))?,
        ),
        None => (name, 0),
    };
    let compiled = match kind {
        "cpu" => return Ok(vlm::Device::Cpu),
        "cuda" => cfg!(feature = "cuda"),
        "metal" => cfg!(feature = "metal"),
        other => return Err(format!("unknown device `{other}` (cpu, cuda, metal)")),
    };
    if !compiled {
        return Err(format!("not compiled in (build with --features {kind})"));
    }
    let device = match kind {
        "cuda" => vlm::Device::new_cuda(ordinal),
        _ => vlm::Device::new_metal(ordinal),
    };
    device.map_err(|e| format!("not present: {e}"))
}

/// Peak resident set size so far, from `/proc/self/status` (`VmHWM`).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Starts a new peak-RSS window (Linux: writing 5 to `clear_refs` resets `VmHWM`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Elements of every tensor in the local checkpoint folder's safetensors files.
fn checkpoint_elements(model: &str) -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(model).ok()? {
        let path = entry.ok()?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        let mut file = std::fs::File::open(&path).ok()?;
        let mut len = [0u8; 8];
        std::io::Read::read_exact(&mut file, &mut len).ok()?;
        let mut header = vec![0u8; usize::try_from(u64::from_le_bytes(len)).ok()?];
        std::io::Read::read_exact(&mut file, &mut header).ok()?;
        let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
        for (name, info) in header.as_object()? {
            if name == "__metadata__" {
                continue;
            }
            let shape = info.get("shape")?.as_array()?;
            total += shape
                .iter()
                .map(|d| d.as_u64().unwrap_or(0))
                .product::<u64>();
        }
    }
    Some(total)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => bail!("unknown dtype `{other}` (f32, f16, bf16)"),
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.runs == 0 || cli.new_tokens < 2 {
        bail!("--runs must be >= 1 and --new-tokens >= 2");
    }
    let mut rows = Vec::new();
    let configs: Vec<(String, Option<Quantization>)> = cli
        .quant
        .split(',')
        .map(|q| match q.trim() {
            "none" => Ok(("none".to_string(), None)),
            other => other
                .parse::<Quantization>()
                .map(|k| (k.name().to_string(), Some(k)))
                .map_err(anyhow::Error::msg),
        })
        .collect::<Result<_>>()?;
    let elements = checkpoint_elements(&cli.model);
    for device_name in cli.device.split(',').map(str::trim) {
        let device = open_device(device_name);
        for (quant_name, quant) in &configs {
            for name in cli.dtype.split(',').map(str::trim) {
                let dtype = parse_dtype(name)?;
                let device = match &device {
                    Ok(d) => d.clone(),
                    Err(why) => {
                        rows.push(Row::absent(device_name, name, quant_name, why.clone()));
                        continue;
                    }
                };
                reset_peak_rss();
                let mut row = run_one(&cli, device, dtype, *quant)
                    .with_context(|| format!("{} on {device_name} in {name}", cli.model))?;
                row.device = device_name.to_string();
                row.dtype = name.to_string();
                row.quant = quant_name.clone();
                row.peak_rss_mb = peak_rss_mb();
                row.weights_mb = elements.map(|n| (n * dtype.size_in_bytes() as u64) as f64 / 1e6);
                rows.push(row);
            }
        }
    }
    println!(
        "model: {}  new tokens: {}  runs: {} (median)\n",
        cli.model, cli.new_tokens, cli.runs
    );
    println!("| device | dtype | quant | load ms | vision ms/image | TTFT ms | prefill tok/s | decode tok/s | prompt tokens | peak RSS MB | weights MB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mb = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0}"));
    for r in &rows {
        if let Some(why) = &r.absent {
            println!(
                "| {} | {} | {} | absent: {why} | | | | | | | |",
                r.device, r.dtype, r.quant
            );
            continue;
        }
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {} | {} | {} |",
            r.device,
            r.dtype,
            r.quant,
            r.load_ms,
            r.vision_ms_per_image,
            r.ttft_ms,
            r.prefill_tok_s,
            r.decode_tok_s,
            r.prompt_tokens,
            mb(r.peak_rss_mb),
            mb(r.weights_mb),
        );
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

/// Loads the model once on `device` and measures one warm-up run and `cli.runs` timed runs.
fn run_one(
    cli: &Cli,
    device: vlm::Device,
    dtype: DType,
    quantization: Option<Quantization>,
) -> Result<Row> {
    let options = LoadOptions {
        device,
        dtype: Some(dtype),
        quantization,
        ..LoadOptions::default()
    };
    let vlm = Vlm::load(&ModelSource::parse(&cli.model, None), &options)?;
    let images = cli
        .images
        .iter()
        .map(|p| vlm.load_image(p))
        .collect::<vlm::Result<Vec<_>>>()?;
    let n_images = images.len().max(1) as f64;
    let request = Request::new(cli.prompt.clone(), images);
    let params = GenerateParams {
        max_new_tokens: cli.new_tokens,
        ignore_eos: true,
        ..GenerateParams::default()
    };
    vlm.generate(&request, &params, |_| true)?; // warm-up
    let (mut vision, mut prefill, mut decode, mut ttft) = (vec![], vec![], vec![], vec![]);
    let mut prompt_tokens = 0;
    for _ in 0..cli.runs {
        let out = vlm.generate(&request, &params, |_| true)?;
        let t = out.timings;
        prompt_tokens = out.prompt_tokens;
        vision.push(t.vision / n_images);
        ttft.push(t.vision + t.prefill);
        prefill.push(out.prompt_tokens as f64 / (t.prefill / 1e3));
        // The first token comes from the prefill; the decode phase makes the others.
        decode.push((out.token_ids.len() - 1) as f64 / (t.decode / 1e3));
    }
    Ok(Row {
        device: String::new(),
        absent: None,
        dtype: String::new(),
        quant: String::new(),
        load_ms: vlm.load_ms(),
        vision_ms_per_image: median(vision),
        ttft_ms: median(ttft),
        prefill_tok_s: median(prefill),
        decode_tok_s: median(decode),
        prompt_tokens,
        peak_rss_mb: None,
        weights_mb: None,
    })
}
