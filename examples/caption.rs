//! Caption an image. Without `--model`, uses the default small model of `weights-manifest/`.
//!
//! ```text
//! cargo run --release --example caption -- --image photo.jpg
//! ```

use anyhow::Result;
use clap::Parser;
use vlm_examples::{manifest_default, run, CommonArgs};

/// Describe images with a local vision-language model.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// The instruction given with the image.
    #[arg(long, default_value = "Describe this image in one sentence.")]
    prompt: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.common.images.is_empty() {
        anyhow::bail!("caption needs at least one --image <path>");
    }
    let model = match &cli.common.model {
        Some(m) => m.clone(),
        None => manifest_default()?,
    };
    run(&cli.common, &model, &cli.prompt)
}
