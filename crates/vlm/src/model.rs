//! Architecture dispatch: `config.json` -> the matching composition in `vlm-core`.

use std::path::Path;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::Deserialize;
use serde_json::Value;
use vlm_core::models::{Llava, LlavaConfig};
use vlm_core::text::Decoder;

use crate::{Error, Result};

/// The `model_type` values this crate can load.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llava"];

/// A loaded vision-language model.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Model {
    /// `LlavaForConditionalGeneration` (CLIP or SigLIP tower; Llama, Mistral or Qwen2 decoder).
    Llava(Llava),
}

/// A parsed `config.json`, one variant per supported architecture.
#[derive(Debug, Clone)]
pub(crate) enum ModelConfig {
    Llava(Box<LlavaConfig>),
}

impl ModelConfig {
    /// Picks the architecture from `model_type` and parses its config; `path` is for errors.
    pub(crate) fn parse(json: &Value, path: &Path) -> Result<Self> {
        let model_type = json
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("<missing model_type>");
        let invalid = |e: serde_json::Error| Error::InvalidJson {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        match model_type {
            "llava" => Ok(Self::Llava(Box::new(
                LlavaConfig::deserialize(json).map_err(invalid)?,
            ))),
            other => Err(Error::UnsupportedArchitecture {
                found: other.to_string(),
                path: path.to_path_buf(),
                supported: SUPPORTED_MODEL_TYPES.join(", "),
            }),
        }
    }
}

impl Model {
    /// Builds the model for `config` from `vb`; weight problems become [`Error::Weights`].
    pub(crate) fn new(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let weights = |e: vlm_core::Error| match e {
            vlm_core::Error::Candle(c) => Error::Weights(c.to_string()),
            other => Error::Model(other),
        };
        match config {
            ModelConfig::Llava(cfg) => Ok(Self::Llava(Llava::new(cfg, vb).map_err(weights)?)),
        }
    }

    /// The language model.
    pub fn decoder(&self) -> &Decoder {
        match self {
            Self::Llava(m) => m.decoder(),
        }
    }

    /// Id of the image placeholder token.
    pub fn image_token_id(&self) -> u32 {
        match self {
            Self::Llava(m) => m.image_token_id(),
        }
    }

    /// Placeholder tokens one image expands to.
    pub fn tokens_per_image(&self) -> usize {
        match self {
            Self::Llava(m) => m.tokens_per_image(),
        }
    }

    /// Projected image features `(n, tokens, hidden)` for pixel values `(n, 3, h, w)`.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        match self {
            Self::Llava(m) => Ok(m.image_features(pixel_values)?),
        }
    }

    /// Token embeddings of `ids` with `image_features` spliced in at the placeholders.
    pub fn embed_with_images(
        &self,
        ids: &[u32],
        image_features: Option<&Tensor>,
    ) -> Result<Tensor> {
        match self {
            Self::Llava(m) => Ok(m.embed_with_images(ids, image_features)?),
        }
    }
}
