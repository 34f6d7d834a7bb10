//! The two config.json schemas: `LlavaNextConfig` (`models/llava_next/configuration_llava_next.py`)
//! and `LlavaOnevisionConfig` (`models/llava_onevision/configuration_llava_onevision.py`), with
//! their class defaults, and the processor's token count per image computed from them.

use serde::Deserialize;

use super::geometry::Geometry;
use crate::models::{FeatureLayer, FeatureSelect};
use crate::nn::Activation;
use crate::text::TextConfig;
use crate::vision::VisionConfig;
use crate::{Error, Result};

/// `LlavaNextConfig.image_grid_pinpoints`' default, `[height, width]`.
pub const LLAVA_NEXT_PINPOINTS: [[usize; 2]; 5] =
    [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];

/// `LlavaOnevisionConfig.image_grid_pinpoints`' default: `[384 * i, 384 * j]` for `i, j` in
/// `1..=6`, row-major.
pub fn llava_onevision_pinpoints() -> Vec<[usize; 2]> {
    (1..=6)
        .flat_map(|i| (1..=6).map(move |j| [384 * i, 384 * j]))
        .collect()
}

fn d_act() -> Activation {
    Activation::Gelu
}
fn d_true() -> bool {
    true
}
fn d_next_image_token() -> u32 {
    32000
}
fn d_next_select() -> FeatureSelect {
    FeatureSelect::Default
}
fn d_next_layer() -> FeatureLayer {
    FeatureLayer::One(-2)
}
fn d_ov_image_token() -> u32 {
    151646
}
fn d_ov_video_token() -> u32 {
    151647
}
fn d_ov_select() -> FeatureSelect {
    FeatureSelect::Full
}
fn d_ov_layer() -> FeatureLayer {
    FeatureLayer::One(-1)
}
fn d_aspect() -> String {
    "anyres_max_9".to_string()
}

/// `LlavaNextConfig` (`model_type: llava_next`), both dialects; absent keys take its defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct LlavaNextConfig {
    /// The vision tower's config (CLIP in every published checkpoint).
    pub vision_config: VisionConfig,
    /// The decoder's config (Llama / Vicuna, Mistral, Qwen2, ...).
    pub text_config: TextConfig,
    /// Id of the `<image>` placeholder token.
    #[serde(default = "d_next_image_token", alias = "image_token_id")]
    pub image_token_index: u32,
    /// Activation between the projector's two layers.
    #[serde(default = "d_act")]
    pub projector_hidden_act: Activation,
    /// Which vision tokens are kept (default `default`: CLIP's CLS dropped).
    #[serde(default = "d_next_select")]
    pub vision_feature_select_strategy: FeatureSelect,
    /// Which vision hidden states are used (default -2).
    #[serde(default = "d_next_layer")]
    pub vision_feature_layer: FeatureLayer,
    /// Bias on the projector's linear layers.
    #[serde(default = "d_true")]
    pub multimodal_projector_bias: bool,
    /// Tied LM head (only this top-level key counts, as in transformers 5).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Candidate tile-grid resolutions `[height, width]` (`None`: [`LLAVA_NEXT_PINPOINTS`]).
    #[serde(default)]
    pub image_grid_pinpoints: Option<Vec<[usize; 2]>>,
}

/// `LlavaOnevisionConfig` (`model_type: llava_onevision`), both dialects; absent keys take its
/// defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct LlavaOnevisionConfig {
    /// The vision tower's config (SigLIP in every published checkpoint).
    pub vision_config: VisionConfig,
    /// The decoder's config (Qwen2 in every published checkpoint).
    pub text_config: TextConfig,
    /// Id of the `<image>` placeholder token.
    #[serde(default = "d_ov_image_token", alias = "image_token_id")]
    pub image_token_index: u32,
    /// Id of the `<video>` placeholder token (videos are not supported yet).
    #[serde(default = "d_ov_video_token", alias = "video_token_id")]
    pub video_token_index: u32,
    /// Activation between the projector's two layers.
    #[serde(default = "d_act")]
    pub projector_hidden_act: Activation,
    /// Which vision tokens are kept (default `full`).
    #[serde(default = "d_ov_select")]
    pub vision_feature_select_strategy: FeatureSelect,
    /// Which vision hidden states are used (default -1).
    #[serde(default = "d_ov_layer")]
    pub vision_feature_layer: FeatureLayer,
    /// Bias on the projector's linear layers.
    #[serde(default = "d_true")]
    pub multimodal_projector_bias: bool,
    /// Tied LM head (also read from `text_config`).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Candidate tile-grid resolutions `[height, width]` (`None`: [`llava_onevision_pinpoints`]).
    #[serde(default)]
    pub image_grid_pinpoints: Option<Vec<[usize; 2]>>,
    /// The token budget of the tile grid, `anyres_max_N` (default `anyres_max_9`).
    #[serde(default = "d_aspect")]
    pub vision_aspect_ratio: String,
}

impl LlavaNextConfig {
    pub(super) fn geometry(&self) -> Result<Geometry> {
        let pinpoints = self
            .image_grid_pinpoints
            .clone()
            .unwrap_or_else(|| LLAVA_NEXT_PINPOINTS.to_vec());
        Geometry::new(
            &self.vision_config,
            self.vision_feature_select_strategy,
            pinpoints,
            None,
        )
    }

    /// Placeholder tokens (= feature rows) of an image of `height x width`: what
    /// `LlavaNextProcessor._get_number_of_features` computes (minus the CLS for `default`).
    pub fn num_image_tokens(&self, height: usize, width: usize) -> Result<usize> {
        self.geometry()?.num_image_tokens(height, width)
    }
}

impl LlavaOnevisionConfig {
    pub(super) fn geometry(&self) -> Result<Geometry> {
        let pinpoints = self
            .image_grid_pinpoints
            .clone()
            .unwrap_or_else(llava_onevision_pinpoints);
        Geometry::new(
            &self.vision_config,
            self.vision_feature_select_strategy,
            pinpoints,
            Some(self.max_num_patches()?),
        )
    }

    /// `N` of `vision_aspect_ratio = "anyres_max_N"`: how many tiles' worth of tokens the grid
    /// may keep before it is downscaled.
    pub fn max_num_patches(&self) -> Result<usize> {
        self.vision_aspect_ratio
            .strip_prefix("anyres_max_")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                Error::Config(format!(
                    "vision_aspect_ratio {:?} is not supported; supported: \"anyres_max_N\" with \
                     N >= 1",
                    self.vision_aspect_ratio
                ))
            })
    }

    /// Placeholder tokens (= feature rows) of an image of `height x width` that is tiled (the
    /// only image of its prompt): `LlavaOnevisionProcessor._get_number_of_features`.
    pub fn num_image_tokens(&self, height: usize, width: usize) -> Result<usize> {
        self.geometry()?.num_image_tokens(height, width)
    }

    /// Placeholder tokens of an image in a multi-image prompt (untiled): one view plus the
    /// newline.
    pub fn num_image_tokens_untiled(&self) -> Result<usize> {
        Ok(self.geometry()?.num_image_tokens_untiled())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_token_counts() -> Result<()> {
        // llava-v1.6-mistral-7b-hf: CLIP 336/14 (24x24 patches, CLS dropped), Mistral.
        let next: LlavaNextConfig = serde_json::from_value(serde_json::json!({
            "model_type": "llava_next",
            "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
            "image_token_index": 32000,
            "text_config": {"model_type": "mistral", "vocab_size": 32064},
            "use_image_newline_parameter": true,
            "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024,
                "image_size": 336, "patch_size": 14, "num_hidden_layers": 24,
                "num_attention_heads": 16, "intermediate_size": 4096},
            "vision_feature_layer": -2, "vision_feature_select_strategy": "default"
        }))
        .map_err(|e| Error::Config(e.to_string()))?;
        // A 1000x500 (w x h) image fills 336x672 exactly: 576 + 24 * 48 + 24 newlines.
        assert_eq!(next.num_image_tokens(500, 1000)?, 576 + 24 * 48 + 24);
        // llava-onevision-qwen2-0.5b-ov-hf: SigLIP 384/14 (27x27), anyres_max_9.
        let ov: LlavaOnevisionConfig = serde_json::from_value(serde_json::json!({
            "model_type": "llava_onevision",
            "text_config": {"model_type": "qwen2"},
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152,
                "image_size": 384, "patch_size": 14, "num_hidden_layers": 26,
                "num_attention_heads": 16, "intermediate_size": 4304},
            "vision_aspect_ratio": "anyres_max_9", "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full"
        }))
        .map_err(|e| Error::Config(e.to_string()))?;
        // 2304x2304 pinpoint: 162x162 map, ratio 2 -> 81x81 with newlines.
        assert_eq!(ov.num_image_tokens(4000, 4000)?, 729 + 81 * 82);
        assert_eq!(ov.num_image_tokens_untiled()?, 730);
        let bad = LlavaOnevisionConfig {
            vision_aspect_ratio: "anyres".into(),
            ..ov
        };
        assert!(bad.num_image_tokens(10, 10).is_err());
        Ok(())
    }
}
