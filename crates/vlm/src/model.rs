//! Architecture dispatch: `config.json` -> the matching composition in `vlm-core`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use serde_json::Value;
use vlm_core::models::qwen2vl::MropePositions;
use vlm_core::models::{
    AnyresVariant, Idefics3, Idefics3Config, Llava, LlavaConfig, LlavaNext, LlavaNextConfig,
    LlavaOnevisionConfig, Qwen2Vl, Qwen2VlConfig, QwenVlVersion,
};
use vlm_core::nn::Quantization;
use vlm_core::text::{Decoder, QuantizeReport};

use crate::{weights, Error, Result};

/// The `model_type` values this crate can load.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "llava",
    "llava_next",
    "llava_onevision",
    "qwen2_vl",
    "qwen2_5_vl",
    "idefics3",
];

/// A loaded vision-language model.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Model {
    /// `LlavaForConditionalGeneration` (CLIP or SigLIP tower; Llama, Mistral or Qwen2 decoder).
    Llava(Box<Llava>),
    /// `Qwen2VLForConditionalGeneration` / `Qwen2_5_VLForConditionalGeneration`.
    Qwen2Vl(Box<Qwen2Vl>),
    /// `Idefics3ForConditionalGeneration` (SmolVLM-256M/500M/2.2B-Instruct).
    Idefics3(Box<Idefics3>),
    /// `LlavaNextForConditionalGeneration` and `LlavaOnevisionForConditionalGeneration` (anyres
    /// tiles, unpadding, `image_newline`).
    LlavaNext(Box<LlavaNext>),
}

/// A parsed `config.json`, one variant per supported architecture.
#[derive(Debug, Clone)]
pub(crate) enum ModelConfig {
    Llava(Box<LlavaConfig>),
    Qwen2Vl(Box<Qwen2VlConfig>),
    Idefics3(Box<Idefics3Config>),
    LlavaNext(Box<LlavaNextConfig>),
    LlavaOnevision(Box<LlavaOnevisionConfig>),
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
            "qwen2_vl" | "qwen2_5_vl" => Ok(Self::Qwen2Vl(Box::new(
                Qwen2VlConfig::from_json(json).map_err(|e| Error::InvalidJson {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?,
            ))),
            "llava_next" => Ok(Self::LlavaNext(Box::new(
                LlavaNextConfig::deserialize(json).map_err(invalid)?,
            ))),
            "llava_onevision" => Ok(Self::LlavaOnevision(Box::new(
                LlavaOnevisionConfig::deserialize(json).map_err(invalid)?,
            ))),
            "idefics3" => Ok(Self::Idefics3(Box::new(
                Idefics3Config::from_json(json).map_err(|e| Error::InvalidJson {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?,
            ))),
            other => Err(Error::UnsupportedArchitecture {
                found: other.to_string(),
                path: path.to_path_buf(),
                supported: SUPPORTED_MODEL_TYPES.join(", "),
            }),
        }
    }
}

impl ModelConfig {
    /// How published checkpoints of this architecture name their weights, relative to the
    /// transformers 5 names the model code reads.
    pub(crate) fn layout(&self) -> &'static [weights::PrefixRule] {
        match self {
            Self::Llava(_) => weights::LLAVA_RULES,
            Self::Qwen2Vl(_) => weights::QWEN2_VL_RULES,
            // Published Idefics3 / SmolVLM checkpoints already use transformers 5's names.
            Self::Idefics3(_) => &[],
            Self::LlavaNext(_) | Self::LlavaOnevision(_) => weights::LLAVA_NEXT_RULES,
        }
    }
}

impl Model {
    /// Builds the model for `config` from `vb`, the language model's linear layers quantized
    /// to `quantization` as they load; weight problems become [`Error::Weights`].
    pub(crate) fn new(
        config: &ModelConfig,
        vb: VarBuilder,
        quantization: Option<Quantization>,
    ) -> Result<Self> {
        let weights = |e: vlm_core::Error| match e {
            vlm_core::Error::Candle(c) => Error::Weights(c.to_string()),
            other => Error::Model(other),
        };
        match config {
            ModelConfig::Llava(cfg) => Ok(Self::Llava(Box::new(
                Llava::new(cfg, vb, quantization).map_err(weights)?,
            ))),
            ModelConfig::Qwen2Vl(cfg) => Ok(Self::Qwen2Vl(Box::new(
                Qwen2Vl::new(cfg, vb, quantization).map_err(weights)?,
            ))),
            ModelConfig::Idefics3(cfg) => Ok(Self::Idefics3(Box::new(
                Idefics3::new(cfg, vb, quantization).map_err(weights)?,
            ))),
            ModelConfig::LlavaNext(cfg) => Ok(Self::LlavaNext(Box::new(
                LlavaNext::new(cfg, vb, quantization).map_err(weights)?,
            ))),
            ModelConfig::LlavaOnevision(cfg) => Ok(Self::LlavaNext(Box::new(
                LlavaNext::new_onevision(cfg, vb, quantization).map_err(weights)?,
            ))),
        }
    }

    /// The language model.
    pub fn decoder(&self) -> &Decoder {
        match self {
            Self::Llava(m) => m.decoder(),
            Self::Qwen2Vl(m) => m.decoder(),
            Self::Idefics3(m) => m.decoder(),
            Self::LlavaNext(m) => m.decoder(),
        }
    }

    /// Quantizes the language model's linear layers (see [`Decoder::quantize`]).
    pub fn quantize_decoder(&mut self, kind: Quantization) -> Result<QuantizeReport> {
        let decoder = match self {
            Self::Llava(m) => m.decoder_mut(),
            Self::Qwen2Vl(m) => m.decoder_mut(),
            Self::Idefics3(m) => m.decoder_mut(),
            Self::LlavaNext(m) => m.decoder_mut(),
        };
        Ok(decoder.quantize(kind)?)
    }

    /// Id of the image placeholder token.
    pub fn image_token_id(&self) -> u32 {
        match self {
            Self::Llava(m) => m.image_token_id(),
            Self::Qwen2Vl(m) => m.config().image_token_id,
            Self::Idefics3(m) => m.image_token_id(),
            Self::LlavaNext(m) => m.image_token_id(),
        }
    }

    /// Id of the video placeholder token, for models that take videos.
    pub fn video_token_id(&self) -> Option<u32> {
        match self {
            Self::Llava(_) | Self::Idefics3(_) | Self::LlavaNext(_) => None,
            Self::Qwen2Vl(m) => Some(m.config().video_token_id),
        }
    }

    /// A short architecture name (`llava`, `qwen2_vl`, `qwen2_5_vl`).
    pub fn architecture(&self) -> &'static str {
        match self {
            Self::Llava(_) => "llava",
            Self::Idefics3(_) => "idefics3",
            Self::LlavaNext(m) => match m.variant() {
                AnyresVariant::Next => "llava_next",
                AnyresVariant::Onevision => "llava_onevision",
            },
            Self::Qwen2Vl(m) => match m.config().version {
                QwenVlVersion::Qwen2Vl => "qwen2_vl",
                QwenVlVersion::Qwen25Vl => "qwen2_5_vl",
            },
        }
    }

    /// Feature rows per image for fixed-resolution models (LLaVA); `None` where the count
    /// depends on the image (Qwen2-VL: the grid after `smart_resize`).
    pub fn tokens_per_image(&self) -> Option<usize> {
        match self {
            Self::Llava(m) => Some(m.tokens_per_image()),
            Self::Qwen2Vl(_) | Self::Idefics3(_) | Self::LlavaNext(_) => None,
        }
    }

    /// Projected image features `(rows, hidden)` of the prepared images, in placeholder order
    /// (`None` without images).
    pub fn image_features(
        &self,
        prepared: &crate::Prepared,
        dtype: DType,
    ) -> Result<Option<Tensor>> {
        let Some(px) = &prepared.pixel_values else {
            return Ok(None);
        };
        let px = px.to_dtype(dtype)?;
        Ok(Some(match self {
            Self::Llava(m) => m.image_features(&px)?.flatten_to(1)?,
            Self::Qwen2Vl(m) => m.vision_features(&px, &prepared.image_grids)?,
            Self::Idefics3(m) => m.image_features(&px, prepared.pixel_attention_mask.as_ref())?,
            Self::LlavaNext(m) => {
                let mut per_image = Vec::with_capacity(prepared.views_per_image.len());
                let mut start = 0;
                for &views in &prepared.views_per_image {
                    per_image.push(px.narrow(0, start, views)?);
                    start += views;
                }
                m.image_features(&per_image, &prepared.image_sizes)?
            }
        }))
    }

    /// Vision features `(rows, hidden)` of the prepared videos, in placeholder order (`None`
    /// without videos).
    pub fn video_features(
        &self,
        prepared: &crate::Prepared,
        dtype: DType,
    ) -> Result<Option<Tensor>> {
        let Some(px) = &prepared.video_pixel_values else {
            return Ok(None);
        };
        match self {
            Self::Llava(_) | Self::Idefics3(_) | Self::LlavaNext(_) => {
                Err(Error::InvalidOption("this model takes no videos".into()))
            }
            Self::Qwen2Vl(m) => Ok(Some(
                m.vision_features(&px.to_dtype(dtype)?, &prepared.video_grids)?,
            )),
        }
    }

    /// Input embeddings `(1, s, hidden)` of a prepared request, media features spliced in.
    pub(crate) fn embed(&self, prepared: &crate::Prepared, dtype: DType) -> Result<Tensor> {
        let images = self.image_features(prepared, dtype)?;
        let videos = self.video_features(prepared, dtype)?;
        let ids = &prepared.input_ids;
        Ok(match self {
            Self::Llava(m) => {
                let images = match images {
                    Some(f) => Some(f.unsqueeze(0)?),
                    None => None,
                };
                m.embed_with_images(ids, images.as_ref())?
            }
            Self::Qwen2Vl(m) => m.embed_with_media(ids, images.as_ref(), videos.as_ref())?,
            Self::Idefics3(m) => m.embed_with_images(ids, images.as_ref())?,
            Self::LlavaNext(m) => m.embed_with_images(ids, images.as_ref())?,
        })
    }

    /// Placeholder tokens of each image of one anyres prompt (LLaVA-NeXT / OneVision), from the
    /// images' original `(height, width)`.
    pub(crate) fn anyres_token_counts(&self, sizes: &[(usize, usize)]) -> Result<Vec<usize>> {
        match self {
            Self::LlavaNext(m) => Ok(m.image_token_counts(sizes)?),
            _ => Err(Error::InvalidOption(format!(
                "{} does not use anyres tiles",
                self.architecture()
            ))),
        }
    }

    /// Rotary positions of a prompt and the offset later tokens carry (`delta`): a token at
    /// sequence index `i` past the prompt sits at `i + delta`.
    pub(crate) fn prompt_positions(&self, prepared: &crate::Prepared) -> Result<Positions> {
        match self {
            Self::Llava(_) | Self::Idefics3(_) | Self::LlavaNext(_) => Ok(Positions::Sequential),
            Self::Qwen2Vl(m) => Ok(Positions::Multimodal(m.rope_index(
                &prepared.input_ids,
                &prepared.image_grids,
                &prepared.video_grids,
                &prepared.video_seconds_per_grid,
            )?)),
        }
    }
}

/// How a prompt's tokens are placed for the rotary embedding.
#[derive(Debug, Clone)]
pub(crate) enum Positions {
    /// `0..len` (1-D RoPE).
    Sequential,
    /// Qwen2-VL's 3-D positions.
    Multimodal(MropePositions),
}

impl Positions {
    /// The prompt's position tensor: `(1, len)` or `(3, 1, len)`.
    pub(crate) fn prompt_tensor(&self, len: usize, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Self::Sequential => Tensor::arange(0u32, len as u32, device)?.unsqueeze(0)?,
            Self::Multimodal(p) => Tensor::from_vec(p.flat(), (3, 1, p.len()), device)?,
        })
    }

    /// Positions of the single token at sequence index `index` (past the prompt).
    pub(crate) fn step_tensor(&self, index: usize, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Self::Sequential => Tensor::new(&[[index as u32]], device)?,
            Self::Multimodal(p) => {
                let at = index as i64 + p.delta;
                Tensor::new(&[[[at]], [[at]], [[at]]], device)?
            }
        })
    }
}
