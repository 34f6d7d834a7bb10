//! Architecture dispatch: `config.json` -> the matching composition in `vlm-core`.

use std::path::Path;

use candle_core::Tensor;
use candle_nn::VarBuilder;
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

impl Model {
    /// Reads `config.json`, checks the architecture, and builds the model from `vb`.
    pub(crate) fn load(config_path: &Path, vb: VarBuilder) -> Result<Self> {
        let text = std::fs::read_to_string(config_path).map_err(|source| Error::Io {
            path: config_path.to_path_buf(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::InvalidJson {
            path: config_path.to_path_buf(),
            message: e.to_string(),
        })?;
        let model_type = json
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("<missing model_type>")
            .to_string();
        let invalid = |e: serde_json::Error| Error::InvalidJson {
            path: config_path.to_path_buf(),
            message: e.to_string(),
        };
        match model_type.as_str() {
            "llava" => {
                let cfg: LlavaConfig = serde_json::from_value(json).map_err(invalid)?;
                let model = Llava::new(&cfg, vb).map_err(|e| match e {
                    vlm_core::Error::Candle(c) => Error::Weights(c.to_string()),
                    other => Error::Model(other),
                })?;
                Ok(Self::Llava(model))
            }
            other => Err(Error::UnsupportedArchitecture {
                found: other.to_string(),
                path: config_path.to_path_buf(),
                supported: SUPPORTED_MODEL_TYPES.join(", "),
            }),
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
