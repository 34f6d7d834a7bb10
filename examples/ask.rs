//! Ask a question about one or more images.
//!
//! ```text
//! cargo run --release --example ask -- --model <dir or hub id> --image a.png --prompt "What is this?"
//! ```

use anyhow::Result;
use clap::Parser;
use vlm_examples::{manifest_default, run, CommonArgs};

/// Answer a question about images with a local vision-language model.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// The question or instruction.
    #[arg(long)]
    prompt: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let model = match &cli.common.model {
        Some(m) => m.clone(),
        None => manifest_default()?,
    };
    run(&cli.common, &model, &cli.prompt)
}
