//! Tensor code for vision-language models on [Candle](https://github.com/huggingface/candle):
//! building blocks, vision towers, projectors, decoders and the VLM compositions built from
//! them. This crate does no file or network I/O: it is handed configs and a `VarBuilder`.
//!
//! Layout:
//! - [`nn`]: linear (dense now, quantizable later without model changes), RMSNorm/LayerNorm,
//!   activations, rotary embeddings (1-D and Qwen2-VL's multimodal M-RoPE), attention
//!   (including block-diagonal attention over variable-length segments), and the
//!   [`nn::KvCache`] the caller owns.
//! - [`vision`]: CLIP and SigLIP ViTs, exposing per-layer hidden states; the Qwen2-VL and
//!   Qwen2.5-VL native-resolution towers with their patch merger.
//! - [`projector`]: LLaVA's MLP projector.
//! - [`text`]: the Llama-architecture decoder (Llama, Mistral, Qwen2, Qwen2-VL's Qwen2) with
//!   `embed` and `forward_embeds(embeds, positions, cache)`.
//! - [`models`]: [`models::Llava`], [`models::Qwen2Vl`] (with `get_rope_index`'s 3-D
//!   positions), and the checked splice of media features into embeddings.
//!
//! Positions are always an explicit tensor and the KV cache is always passed in, so one model
//! value can serve several conversations and, later, batches of them.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use vlm_core::nn::RotaryEmbedding;
//! use vlm_core::nn::RopeScaling;
//!
//! # fn main() -> candle_core::Result<()> {
//! let rope = RotaryEmbedding::new(8, 10000.0, &RopeScaling::Default, &Device::Cpu)?;
//! let positions = Tensor::new(&[[0u32, 1, 2]], &Device::Cpu)?;
//! let (cos, sin) = rope.cos_sin(&positions, candle_core::DType::F32)?;
//! assert_eq!(cos.dims(), &[1, 3, 4]);
//! # let _ = sin;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod models;
pub mod nn;
pub mod projector;
pub mod text;
pub mod vision;

/// Errors from model construction and inference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed or a weight was missing / mis-shaped.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A configuration value is invalid or unsupported.
    #[error("invalid model config: {0}")]
    Config(String),
    /// Inputs of the wrong shape.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The prompt's image placeholders do not match the image features.
    #[error(
        "the prompt has {placeholders} image placeholder tokens but the images produced \
         {features} feature rows; they must be equal"
    )]
    ImageTokenMismatch {
        /// Image placeholder tokens found in the prompt.
        placeholders: usize,
        /// Feature rows produced by the vision tower and projector.
        features: usize,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
