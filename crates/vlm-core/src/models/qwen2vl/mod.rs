//! Qwen2-VL and Qwen2.5-VL: the native-resolution vision tower with its patch merger, and a
//! Qwen2 decoder with multimodal RoPE.
//!
//! Mirrors `transformers/models/qwen2_vl/modeling_qwen2_vl.py` (`Qwen2VLForConditionalGeneration`)
//! and `qwen2_5_vl/modeling_qwen2_5_vl.py`. Weight names follow the layout transformers 5 writes
//! (`model.visual.*`, `model.language_model.*`, `lm_head.*`); the published layout (`visual.*`,
//! `model.*`) is renamed to it at load time by the caller.
//!
//! Both dialects of `config.json` are read: the published one keeps the text fields at the top
//! level with `rope_scaling: {"type": "mrope", "mrope_section": [..]}`, transformers 5 nests
//! them in `text_config` with `rope_parameters`.

mod rope_index;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde_json::Value;

pub use rope_index::{rope_index, MediaKind, MropePositions, RopeIndexInputs, TemporalSpacing};

use super::interface::{media_of, MediaInputs, SequenceState, VisionLanguageModel};
use crate::nn::Quantization;
use crate::text::{Decoder, DecoderConfig, DecoderSequence, RopePositions, TextConfig};
use crate::vision::{Qwen25VlVisionConfig, Qwen2VlVisionConfig, QwenVisionConfig, QwenVisionTower};
use crate::{Error, Result};

/// `mrope_section` when a config names none (the reference's fallback).
const DEFAULT_MROPE_SECTION: [usize; 3] = [16, 24, 24];

/// Which generation of the architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QwenVlVersion {
    /// Qwen2-VL (`model_type: qwen2_vl`).
    Qwen2Vl,
    /// Qwen2.5-VL (`model_type: qwen2_5_vl`).
    Qwen25Vl,
}

/// A resolved Qwen2-VL / Qwen2.5-VL config.
#[derive(Debug, Clone)]
pub struct Qwen2VlConfig {
    /// Which generation.
    pub version: QwenVlVersion,
    /// The vision tower.
    pub vision: QwenVisionConfig,
    /// The decoder, with `mrope_section` set.
    pub text: DecoderConfig,
    /// Id of `<|image_pad|>`.
    pub image_token_id: u32,
    /// Id of `<|video_pad|>`.
    pub video_token_id: u32,
    /// Id of `<|vision_start|>`.
    pub vision_start_token_id: u32,
    /// How video time maps to temporal positions.
    pub spacing: TemporalSpacing,
}

fn json_u32(json: &Value, key: &str, default: u32) -> Result<u32> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| Error::Config(format!("`{key}`: expected a token id, found {v}"))),
    }
}

fn from_value<T: serde::de::DeserializeOwned>(value: Value, what: &str) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::Config(format!("{what}: {e}")))
}

impl Qwen2VlConfig {
    /// Parses a `config.json` whose `model_type` is `qwen2_vl` or `qwen2_5_vl`.
    pub fn from_json(json: &Value) -> Result<Self> {
        let version = match json.get("model_type").and_then(Value::as_str) {
            Some("qwen2_vl") => QwenVlVersion::Qwen2Vl,
            Some("qwen2_5_vl") => QwenVlVersion::Qwen25Vl,
            other => {
                return Err(Error::Config(format!(
                    "expected model_type qwen2_vl or qwen2_5_vl, found {other:?}"
                )))
            }
        };
        let vision_json = json
            .get("vision_config")
            .cloned()
            .unwrap_or(Value::Object(Default::default()));
        let (vision, spacing) = match version {
            QwenVlVersion::Qwen2Vl => {
                let v: Qwen2VlVisionConfig = from_value(vision_json, "vision_config")?;
                (QwenVisionConfig::from(v), TemporalSpacing::Unit)
            }
            QwenVlVersion::Qwen25Vl => {
                let v: Qwen25VlVisionConfig = from_value(vision_json, "vision_config")?;
                let tokens_per_second = v.tokens_per_second as f32;
                (
                    QwenVisionConfig::from(v),
                    TemporalSpacing::Timed { tokens_per_second },
                )
            }
        };
        // transformers 5 nests the decoder under `text_config`; published checkpoints keep its
        // fields at the top level.
        let mut text_json = match json.get("text_config") {
            Some(Value::Object(t)) => t.clone(),
            _ => match json {
                Value::Object(top) => {
                    let mut top = top.clone();
                    top.remove("vision_config");
                    top
                }
                _ => return Err(Error::Config("config.json is not an object".into())),
            },
        };
        text_json.insert("model_type".into(), Value::from("qwen2_vl_text"));
        let text_config: TextConfig = from_value(Value::Object(text_json.clone()), "text_config")?;
        let mut text = text_config.resolve()?;
        text.mrope_section = Some(text.mrope_section.unwrap_or(DEFAULT_MROPE_SECTION));
        // The head is tied by the top-level flag (where both dialects put it).
        text.tie_word_embeddings = json
            .get("tie_word_embeddings")
            .or_else(|| text_json.get("tie_word_embeddings"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if let Some(section) = text.mrope_section {
            if section.iter().sum::<usize>() * 2 != text.head_dim {
                return Err(Error::Config(format!(
                    "mrope_section {section:?} must sum to head_dim / 2 = {}",
                    text.head_dim / 2
                )));
            }
        }
        if vision.out_hidden_size() != text.hidden_size {
            return Err(Error::Config(format!(
                "the vision merger outputs width {} but the decoder's hidden size is {}",
                vision.out_hidden_size(),
                text.hidden_size
            )));
        }
        Ok(Self {
            version,
            vision,
            text,
            image_token_id: json_u32(json, "image_token_id", 151655)?,
            video_token_id: json_u32(json, "video_token_id", 151656)?,
            vision_start_token_id: json_u32(json, "vision_start_token_id", 151652)?,
            spacing,
        })
    }
}

/// `Qwen2VLForConditionalGeneration` / `Qwen2_5_VLForConditionalGeneration`.
#[derive(Debug, Clone)]
pub struct Qwen2Vl {
    visual: QwenVisionTower,
    decoder: Decoder,
    cfg: Qwen2VlConfig,
}

impl Qwen2Vl {
    /// Builds the model from weights named as transformers 5 names them, rooted at `vb`;
    /// `quantization`, if any, applies to the language model's linear layers as they load
    /// (see [`Decoder::load`]).
    pub fn new(
        cfg: &Qwen2VlConfig,
        vb: VarBuilder,
        quantization: Option<Quantization>,
    ) -> Result<Self> {
        let model = vb.pp("model");
        Ok(Self {
            visual: QwenVisionTower::new(&cfg.vision, model.pp("visual"))?,
            decoder: Decoder::load(
                &cfg.text,
                model.pp("language_model"),
                vb.pp("lm_head"),
                quantization,
            )?,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Qwen2VlConfig {
        &self.cfg
    }

    /// The vision tower (with its merger).
    pub fn vision_tower(&self) -> &QwenVisionTower {
        &self.visual
    }

    /// Placeholder tokens (= merged feature rows) of a `(t, h, w)` patch grid.
    pub fn tokens_for_grid(&self, grid: [usize; 3]) -> usize {
        let m = self.cfg.vision.spatial_merge_size();
        grid[0] * grid[1] * grid[2] / (m * m).max(1)
    }

    /// Merged vision features `(tokens, hidden)` of flattened patches `(patches, patch_dim)`
    /// covering `grids` (images or videos, in order).
    pub fn vision_features(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        self.visual.forward(pixel_values, grids)
    }

    /// The 3-D positions of `ids` given the grids of its images and videos.
    pub fn rope_index(
        &self,
        ids: &[u32],
        image_grids: &[[usize; 3]],
        video_grids: &[[usize; 3]],
        video_seconds_per_grid: &[Option<f32>],
    ) -> Result<MropePositions> {
        rope_index(
            ids,
            &RopeIndexInputs {
                image_token_id: self.cfg.image_token_id,
                video_token_id: self.cfg.video_token_id,
                image_grids,
                video_grids,
                video_seconds_per_grid,
                spatial_merge_size: self.cfg.vision.spatial_merge_size(),
                spacing: self.cfg.spacing,
            },
        )
    }

    /// Embeds `ids` `(s,)` into `(1, s, hidden)` and splices the image features (rows in
    /// `<|image_pad|>` order) and video features (rows in `<|video_pad|>` order) in; the
    /// counts are checked against the placeholders first.
    pub fn embed_with_media(
        &self,
        ids: &[u32],
        image_features: Option<&Tensor>,
        video_features: Option<&Tensor>,
    ) -> Result<Tensor> {
        let device = self.decoder.device();
        let (image, video) = (self.cfg.image_token_id, self.cfg.video_token_id);
        let safe: Vec<u32> = ids
            .iter()
            .map(|&t| if t == image || t == video { 0 } else { t })
            .collect();
        let t = Tensor::from_vec(safe, (1, ids.len()), device)?;
        let mut embeds = self.decoder.embed(&t)?;
        let hidden = embeds.dim(2)?;
        for (token, features) in [(image, image_features), (video, video_features)] {
            let features = match features {
                Some(f) => f.clone(),
                None => Tensor::zeros((0, hidden), embeds.dtype(), device)?,
            };
            embeds = super::merge_image_features(ids, token, &embeds, &features)?;
        }
        Ok(embeds)
    }
}

/// The images and videos of one Qwen2-VL / Qwen2.5-VL prompt, as its processors prepare them.
#[derive(Debug, Clone, Default)]
pub struct QwenMedia {
    /// Flattened patches `(patches, 3 * t * p * p)` of all images, or `None`.
    pub pixel_values: Option<Tensor>,
    /// The `(t, h, w)` patch grid of each image.
    pub image_grids: Vec<[usize; 3]>,
    /// Flattened patches of all videos, or `None`.
    pub video_pixel_values: Option<Tensor>,
    /// The `(t, h, w)` patch grid of each video.
    pub video_grids: Vec<[usize; 3]>,
    /// Seconds per temporal patch of each video (`temporal_patch_size / fps`; Qwen2.5-VL
    /// spaces video positions by it).
    pub video_seconds_per_grid: Vec<Option<f32>>,
}

impl MediaInputs for QwenMedia {}

impl VisionLanguageModel for Qwen2Vl {
    fn architecture(&self) -> &'static str {
        match self.cfg.version {
            QwenVlVersion::Qwen2Vl => "qwen2_vl",
            QwenVlVersion::Qwen25Vl => "qwen2_5_vl",
        }
    }

    fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    fn decoder_mut(&mut self) -> &mut Decoder {
        &mut self.decoder
    }

    fn image_token_id(&self) -> u32 {
        self.cfg.image_token_id
    }

    fn video_token_id(&self) -> Option<u32> {
        Some(self.cfg.video_token_id)
    }

    fn embed(&self, ids: &[u32], media: &dyn MediaInputs) -> Result<Tensor> {
        let media: &QwenMedia = media_of(media, self.architecture())?;
        let dtype = self.decoder.dtype();
        let features = |px: &Option<Tensor>, grids: &[[usize; 3]]| -> Result<Option<Tensor>> {
            match px {
                Some(px) => Ok(Some(self.vision_features(&px.to_dtype(dtype)?, grids)?)),
                None => Ok(None),
            }
        };
        let images = features(&media.pixel_values, &media.image_grids)?;
        let videos = features(&media.video_pixel_values, &media.video_grids)?;
        self.embed_with_media(ids, images.as_ref(), videos.as_ref())
    }

    /// The 3-D positions of the prompt, which also checks every placeholder run against its
    /// grid before the vision tower runs.
    fn new_sequence(&self, ids: &[u32], media: &dyn MediaInputs) -> Result<Box<dyn SequenceState>> {
        let media: &QwenMedia = media_of(media, self.architecture())?;
        let positions = self.rope_index(
            ids,
            &media.image_grids,
            &media.video_grids,
            &media.video_seconds_per_grid,
        )?;
        Ok(Box::new(DecoderSequence::new(
            &self.decoder,
            RopePositions::Multimodal {
                axes: positions.axes,
                delta: positions.delta,
            },
        )))
    }
}
