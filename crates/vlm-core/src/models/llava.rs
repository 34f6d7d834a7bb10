//! LLaVA: a CLIP or SigLIP tower, the two-layer projector, and a Llama/Mistral/Qwen2 decoder.
//!
//! Mirrors `transformers/models/llava/{configuration_llava,modeling_llava}.py`
//! (`LlavaForConditionalGeneration`). Weight names follow the layout transformers 5 writes
//! (`model.vision_tower.*`, `model.multi_modal_projector.*`, `model.language_model.*`,
//! `lm_head.*`); older published layouts are renamed to it at load time by the caller.

use candle_core::{Module, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::interface::{media_of, MediaInputs, VisionLanguageModel};
use crate::nn::{Activation, Quantization};
use crate::projector::LlavaProjector;
use crate::text::{Decoder, TextConfig};
use crate::vision::{VisionConfig, VisionTower};
use crate::{Error, Result};

/// Which vision tokens go to the projector (`vision_feature_select_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureSelect {
    /// Drop the first token (CLIP's CLS).
    Default,
    /// Keep every token.
    Full,
}

/// `vision_feature_layer`: one hidden-state index, or several whose features are concatenated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FeatureLayer {
    /// One layer (negative counts from the end, as in Python).
    One(i64),
    /// Several layers, concatenated along the feature dimension.
    Many(Vec<i64>),
}

impl FeatureLayer {
    fn indices(&self) -> Vec<i64> {
        match self {
            Self::One(i) => vec![*i],
            Self::Many(v) => v.clone(),
        }
    }

    /// The selected layers as indices into a tower's hidden-state list `[embeddings, layer 1,
    /// ..., layer n]` (`num_hidden_layers + 1` entries), negative ones counted from the end as in
    /// Python. Errors when one is out of range.
    pub fn resolve(&self, num_hidden_layers: usize) -> Result<Vec<usize>> {
        let n_states = num_hidden_layers + 1;
        self.indices()
            .into_iter()
            .map(|i| {
                let j = if i < 0 { n_states as i64 + i } else { i };
                if j < 0 || j >= n_states as i64 {
                    Err(Error::Config(format!(
                        "vision_feature_layer {i} is out of range for a tower with {n_states} \
                         hidden states"
                    )))
                } else {
                    Ok(j as usize)
                }
            })
            .collect()
    }
}

/// Vision tokens one image (one tile) gives after `select`: `(image_size / patch_size)^2`
/// patches, plus CLIP's CLS token unless `default` drops it.
pub(crate) fn tokens_per_tile(vision: &VisionConfig, select: FeatureSelect) -> usize {
    let (image, patch) = vision.image_and_patch_size();
    let patches = (image / patch).pow(2);
    let tokens = patches + usize::from(matches!(vision, VisionConfig::Clip(_)));
    match select {
        FeatureSelect::Default => tokens.saturating_sub(1),
        FeatureSelect::Full => tokens,
    }
}

/// `get_image_features`' selection: the hidden states at `layers` (indices from
/// [`FeatureLayer::resolve`]), without the first token for `default`, concatenated along the
/// feature dimension: `(n, tokens, dim * layers)`.
pub(crate) fn select_vision_features(
    tower: &VisionTower,
    pixel_values: &Tensor,
    layers: &[usize],
    select: FeatureSelect,
) -> Result<Tensor> {
    let up_to = layers.iter().copied().max().unwrap_or(0);
    let states = tower.hidden_states(pixel_values, up_to)?;
    let picked = layers
        .iter()
        .map(|&i| {
            let s = states.get(i).ok_or_else(|| {
                Error::Config(format!("vision hidden state {i} was not computed"))
            })?;
            Ok(match select {
                FeatureSelect::Default => s.narrow(1, 1, s.dim(1)? - 1)?,
                FeatureSelect::Full => s.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&picked, D::Minus1)?)
}

fn d_image_token() -> u32 {
    32000
}
fn d_act() -> Activation {
    Activation::Gelu
}
fn d_select() -> FeatureSelect {
    FeatureSelect::Default
}
fn d_layer() -> FeatureLayer {
    FeatureLayer::One(-2)
}
fn d_true() -> bool {
    true
}

/// `LlavaConfig` (both the published and the transformers 5 dialect).
#[derive(Debug, Clone, Deserialize)]
pub struct LlavaConfig {
    /// The vision tower's config.
    pub vision_config: VisionConfig,
    /// The decoder's config.
    pub text_config: TextConfig,
    /// Id of the `<image>` placeholder token.
    #[serde(default = "d_image_token", alias = "image_token_id")]
    pub image_token_index: u32,
    /// Activation between the projector's two layers.
    #[serde(default = "d_act")]
    pub projector_hidden_act: Activation,
    /// Which vision tokens are kept.
    #[serde(default = "d_select")]
    pub vision_feature_select_strategy: FeatureSelect,
    /// Which vision hidden states are used.
    #[serde(default = "d_layer")]
    pub vision_feature_layer: FeatureLayer,
    /// Bias on the projector's linear layers.
    #[serde(default = "d_true")]
    pub multimodal_projector_bias: bool,
    /// Tied LM head (also read from `text_config`, where older checkpoints put it).
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

/// `LlavaForConditionalGeneration`.
#[derive(Debug, Clone)]
pub struct Llava {
    vision_tower: VisionTower,
    projector: LlavaProjector,
    decoder: Decoder,
    /// Indices into the tower's hidden-state list, made non-negative.
    layers: Vec<usize>,
    select: FeatureSelect,
    image_token_id: u32,
    tokens_per_image: usize,
}

impl Llava {
    /// Builds the model from weights named as transformers 5 names them, rooted at `vb`;
    /// `quantization`, if any, applies to the language model's linear layers as they load
    /// (see [`Decoder::load`]).
    pub fn new(
        cfg: &LlavaConfig,
        vb: VarBuilder,
        quantization: Option<Quantization>,
    ) -> Result<Self> {
        let mut text = cfg.text_config.resolve()?;
        text.tie_word_embeddings |= cfg.tie_word_embeddings;
        let layers = cfg
            .vision_feature_layer
            .resolve(cfg.vision_config.num_hidden_layers())?;
        let in_dim = cfg.vision_config.hidden_size() * layers.len();
        let model = vb.pp("model");
        let tokens_per_image =
            tokens_per_tile(&cfg.vision_config, cfg.vision_feature_select_strategy);
        Ok(Self {
            vision_tower: VisionTower::new(&cfg.vision_config, model.pp("vision_tower"))?,
            projector: LlavaProjector::new(
                in_dim,
                text.hidden_size,
                cfg.projector_hidden_act,
                cfg.multimodal_projector_bias,
                model.pp("multi_modal_projector"),
            )?,
            decoder: Decoder::load(
                &text,
                model.pp("language_model"),
                vb.pp("lm_head"),
                quantization,
            )?,
            layers,
            select: cfg.vision_feature_select_strategy,
            image_token_id: cfg.image_token_index,
            tokens_per_image,
        })
    }

    /// How many placeholder tokens (and feature rows) one image takes.
    pub fn tokens_per_image(&self) -> usize {
        self.tokens_per_image
    }

    /// The selected vision hidden states before the projector, `(n, tokens, dim * layers)`.
    pub fn vision_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        select_vision_features(&self.vision_tower, pixel_values, &self.layers, self.select)
    }

    /// Projected image features `(n, tokens, text_hidden)` for pixels `(n, 3, h, w)`.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self
            .projector
            .forward(&self.vision_features(pixel_values)?)?)
    }

    /// Embeds `ids` and splices `image_features` (`(n, tokens, h)`, in placeholder order) in.
    pub fn embed_with_images(
        &self,
        ids: &[u32],
        image_features: Option<&Tensor>,
    ) -> Result<Tensor> {
        let device = self.decoder.device();
        // Placeholder ids may lie outside the embedding table; they are overwritten anyway.
        let safe: Vec<u32> = ids
            .iter()
            .map(|&t| if t == self.image_token_id { 0 } else { t })
            .collect();
        let t = Tensor::from_vec(safe, (1, ids.len()), device)?;
        let embeds = self.decoder.embed(&t)?;
        let features = match image_features {
            Some(f) => {
                let (n, k, h) = f.dims3()?;
                f.reshape((n * k, h))?
            }
            None => Tensor::zeros((0, embeds.dim(2)?), embeds.dtype(), device)?,
        };
        super::merge_image_features(ids, self.image_token_id, &embeds, &features)
    }
}

/// The images of one LLaVA prompt, as its processor prepares them.
#[derive(Debug, Clone, Default)]
pub struct LlavaImages {
    /// `(n_images, 3, h, w)` pixels, or `None` without images.
    pub pixel_values: Option<Tensor>,
}

impl MediaInputs for LlavaImages {}

impl VisionLanguageModel for Llava {
    fn architecture(&self) -> &'static str {
        "llava"
    }

    fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    fn decoder_mut(&mut self) -> &mut Decoder {
        &mut self.decoder
    }

    fn image_token_id(&self) -> u32 {
        self.image_token_id
    }

    fn embed(&self, ids: &[u32], media: &dyn MediaInputs) -> Result<Tensor> {
        let images: &LlavaImages = media_of(media, self.architecture())?;
        let features = match &images.pixel_values {
            Some(px) => Some(self.image_features(&px.to_dtype(self.decoder.dtype())?)?),
            None => None,
        };
        self.embed_with_images(ids, features.as_ref())
    }
}
