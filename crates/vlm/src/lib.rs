//! Local vision-language model inference on [Candle](https://github.com/huggingface/candle).
//!
//! Load a checkpoint from a folder or the Hugging Face Hub, give it images and a prompt, and
//! get text back, streamed token by token:
//!
//! ```no_run
//! use vlm::{GenerateParams, LoadOptions, ModelSource, Request, Vlm};
//!
//! # fn main() -> Result<(), vlm::Error> {
//! let source = ModelSource::parse("llava-hf/llava-interleave-qwen-0.5b-hf", None);
//! let model = Vlm::load(&source, &LoadOptions::default())?;
//! let image = model.load_image("cat.png")?;
//! let request = Request::new("What is in this picture?", vec![image]);
//! let answer = model.generate(&request, &GenerateParams::default(), |event| {
//!     print!("{}", event.text);
//!     true // keep going
//! })?;
//! println!("\n{} tokens in {:.0} ms", answer.token_ids.len(), answer.timings.decode);
//! # Ok(())
//! # }
//! ```
//!
//! # Design
//! - The crates below do one thing each: `vlm-preprocess` (image decoding and the exact
//!   Pillow-based preprocessing of the reference processors), `vlm-prompt` (tokenizer, chat
//!   templates, image-marker expansion), `vlm-core` (tensor code, no I/O). This crate loads files,
//!   picks the model family from `config.json`'s `model_type` in one registry, and runs
//!   generation through the family interface (`VisionLanguageModel` for the model, a media
//!   processor per family), never asking which family it holds.
//! - [`Vlm`] is stateless between calls: each generation owns its KV cache, so one loaded model
//!   can serve many conversations.
//! - Both checkpoint key layouts (published `language_model.model.*` and transformers 5's
//!   `model.language_model.*`) load through one renaming step; both `config.json` dialects parse.
#![deny(missing_docs)]

mod error;
mod families;
mod generate;
pub mod gguf;
pub mod manifest;
mod options;
mod pipeline;
mod sampling;
mod source;
mod weights;

pub use candle_core::{DType, Device};
pub use error::{Error, Result};
pub use families::supported_model_types;
pub use generate::{FinishReason, GenerateParams, Generation, Timings, TokenEvent, TokenLogprob};
pub use options::{LoadOptions, MediaOption, MediaOptions};
pub use pipeline::{Prepared, Request, Vlm};
pub use sampling::SamplingParams;
pub use source::ModelSource;
pub use vlm_core::models::{MediaInputs, SequenceState, VisionLanguageModel};
pub use vlm_core::nn::Quantization;
pub use vlm_preprocess::qwen2vl::FrameSampling;
pub use vlm_preprocess::{image::RgbImage, DecodeLimits, Video};
pub use vlm_prompt::{ContentPart, Message};
