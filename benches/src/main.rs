//! End-to-end benchmark of one model over a list of dtypes: load time, vision encode, prefill
//! and decode rates (EOS ignored, one warm-up run, median of N runs), printed as a Markdown
//! table and, with `--json`, as JSON.
//!
//! ```text
//! cargo run --release -p vlm-benches -- --model <dir or hub id> --image photo.png --dtype f32,bf16
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
    dtype: String,
    quant: String,
    load_ms: f64,
    vision_ms_per_image: f64,
    ttft_ms: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    prompt_tokens: usize,
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
    for (quant_name, quant) in &configs {
        for name in cli.dtype.split(',') {
            let dtype = parse_dtype(name.trim())?;
            let options = LoadOptions {
                dtype: Some(dtype),
                quantization: *quant,
                ..LoadOptions::default()
            };
            let vlm = Vlm::load(&ModelSource::parse(&cli.model, None), &options)
                .with_context(|| format!("loading {} in {name}", cli.model))?;
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
            rows.push(Row {
                dtype: name.trim().to_string(),
                quant: quant_name.clone(),
                load_ms: vlm.load_ms(),
                vision_ms_per_image: median(vision),
                ttft_ms: median(ttft),
                prefill_tok_s: median(prefill),
                decode_tok_s: median(decode),
                prompt_tokens,
            });
        }
    }
    println!(
        "model: {}  new tokens: {}  runs: {} (median)\n",
        cli.model, cli.new_tokens, cli.runs
    );
    println!("| dtype | quant | load ms | vision ms/image | TTFT ms | prefill tok/s | decode tok/s | prompt tokens |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {} |",
            r.dtype,
            r.quant,
            r.load_ms,
            r.vision_ms_per_image,
            r.ttft_ms,
            r.prefill_tok_s,
            r.decode_tok_s,
            r.prompt_tokens
        );
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}
