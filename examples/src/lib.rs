//! What the `caption` and `ask` examples share: the flag contract, model loading, and output
//! (streamed text, or one JSON object with `--json`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use vlm::{
    DType, Device, FrameSampling, GenerateParams, Generation, LoadOptions, MediaOptions,
    ModelSource, Quantization, Request, SamplingParams, TokenLogprob, Vlm,
};

/// Flags every example takes.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Model folder or Hugging Face Hub id.
    #[arg(long)]
    pub model: Option<String>,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    pub revision: Option<String>,
    /// Image file; repeat for several images (they go before the prompt text).
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// A video, for models that take videos (Qwen2-VL): its frames as image files in order, or
    /// one animated GIF.
    #[arg(long = "video", num_args = 1..)]
    pub video: Vec<PathBuf>,
    /// Frame rate of the `--video` frames (Qwen2.5-VL spaces video positions by time; without
    /// it the GIF's own timing, else transformers' default of 24, is used).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Use this many frames of the video, spread evenly (default: every frame).
    #[arg(long, conflicts_with = "sample_fps")]
    pub num_frames: Option<usize>,
    /// Use this many frames per second of the video (needs its frame rate: `--fps` or a GIF's).
    #[arg(long)]
    pub sample_fps: Option<f64>,
    /// Cap the whole video at about this many tokens (each frame gets an even share).
    #[arg(long)]
    pub max_video_tokens: Option<u64>,
    /// Tiling models (Idefics3 / SmolVLM): do not split images into tiles, encode only the
    /// downscaled image.
    #[arg(long)]
    pub no_image_splitting: bool,
    /// Native-resolution models: resize images to at least this many pixels.
    #[arg(long)]
    pub min_pixels: Option<u64>,
    /// Native-resolution models: resize images to at most this many pixels (one image token per
    /// 28 x 28 pixels for Qwen2-VL), so a huge photo cannot exhaust memory.
    #[arg(long)]
    pub max_pixels: Option<u64>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Sample among the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Repetition penalty (1.0 = none).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 299792458)]
    pub seed: u64,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Stop when the text contains this string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// f32, f16 or bf16 (default: f32 on CPU, the checkpoint's dtype on GPUs).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Quantize the language model's linear layers at load time: q8_0 or q4k.
    #[arg(long)]
    pub quant: Option<Quantization>,
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Report the log-probabilities of the K best alternatives for each generated token.
    #[arg(long)]
    pub logprobs: Option<usize>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

fn parse_device(name: &str) -> Result<Device> {
    Ok(match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0).context("CUDA device (build with --features cuda)")?,
        "metal" => Device::new_metal(0).context("Metal device (build with --features metal)")?,
        other => bail!("unknown device `{other}`; expected cpu, cuda or metal"),
    })
}

fn parse_dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" | "float32" => DType::F32,
        "f16" | "float16" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => bail!("unknown dtype `{other}`; expected f32, f16 or bf16"),
    })
}

/// The default model of `weights-manifest/` (the entry with `"default": true`).
pub fn manifest_default() -> Result<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../weights-manifest");
    let entries = vlm::manifest::read_dir(&dir)?;
    let entry = entries
        .into_iter()
        .find(|e| e.default)
        .with_context(|| format!("no entry with \"default\": true in {}", dir.display()))?;
    Ok(entry.hub_id)
}

/// JSON printed with `--json`.
#[derive(Debug, Serialize)]
struct JsonOutput<'a> {
    text: &'a str,
    token_ids: &'a [u32],
    prompt_tokens: usize,
    logprobs: &'a [TokenLogprob],
    finish_reason: vlm::FinishReason,
    timings: vlm::Timings,
}

/// Loads the model, runs `prompt` over the images, and prints the answer.
pub fn run(args: &CommonArgs, model: &str, prompt: &str) -> Result<()> {
    let options = LoadOptions {
        device: parse_device(&args.device)?,
        dtype: args.dtype.as_deref().map(parse_dtype).transpose()?,
        quantization: args.quant,
        media: MediaOptions {
            image_splitting: args.no_image_splitting.then_some(false),
            min_pixels: args.min_pixels,
            max_pixels: args.max_pixels,
            video_sampling: match (args.num_frames, args.sample_fps) {
                (Some(n), _) => Some(FrameSampling::NumFrames(n)),
                (None, Some(f)) => Some(FrameSampling::Fps(f)),
                (None, None) => None,
            },
            max_video_tokens: args.max_video_tokens,
            ..MediaOptions::default()
        },
        ..LoadOptions::default()
    };
    let source = ModelSource::parse(model, args.revision.as_deref());
    let vlm = Vlm::load(&source, &options)?;
    let images = args
        .images
        .iter()
        .map(|p| vlm.load_image(p))
        .collect::<vlm::Result<Vec<_>>>()?;
    let videos = if args.video.is_empty() {
        Vec::new()
    } else {
        vec![vlm.load_video(&args.video, args.fps)?]
    };
    let request = Request::with_videos(prompt, images, videos);
    let params = GenerateParams {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
        },
        stop_strings: args.stop.clone(),
        ignore_eos: args.ignore_eos,
        logprobs: args.logprobs,
    };
    let stream = !args.json;
    let mut stdout = std::io::stdout();
    let out: Generation = vlm.generate(&request, &params, |event| {
        if stream {
            // A closed pipe (e.g. `| head`) ends generation rather than erroring.
            return write!(stdout, "{}", event.text)
                .and_then(|_| stdout.flush())
                .is_ok();
        }
        true
    })?;
    if args.json {
        let json = JsonOutput {
            text: &out.text,
            token_ids: &out.token_ids,
            prompt_tokens: out.prompt_tokens,
            logprobs: &out.logprobs,
            finish_reason: out.finish_reason,
            timings: out.timings,
        };
        println!("{}", serde_json::to_string(&json)?);
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens, {} generated; load {:.0} ms, vision {:.0} ms, prefill {:.0} ms, decode {:.0} ms]",
            out.prompt_tokens,
            out.token_ids.len(),
            out.timings.load,
            out.timings.vision,
            out.timings.prefill,
            out.timings.decode
        );
    }
    Ok(())
}
