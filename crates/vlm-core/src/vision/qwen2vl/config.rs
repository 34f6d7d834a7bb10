//! `vision_config` of Qwen2-VL (`Qwen2VLVisionConfig`) and Qwen2.5-VL (`Qwen2_5_VLVisionConfig`).
//!
//! Mirrors `transformers/models/qwen2_vl/configuration_qwen2_vl.py` and
//! `transformers/models/qwen2_5_vl/configuration_qwen2_5_vl.py` (transformers 5.23); missing keys
//! take those files' defaults. Both configs read the `vision_config` object as published on the
//! Hub (`in_chans`, no `rope_parameters`) and as transformers 5 saves it (`in_channels`, both
//! channel keys, `rope_parameters: {"rope_type": "axial", "rope_theta": 10000.0}`). Keys the
//! tower does not use (`model_type`, `spatial_patch_size`, `initializer_range`, ...) are ignored.

use serde::Deserialize;

use crate::nn::Activation;
use crate::{Error, Result};

/// The rotary embedding of the vision tower (`rope_parameters`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct VisionRopeParameters {
    /// `rope_type`: only the 2-D axial RoPE exists (`"default"` is what older saves wrote; the
    /// reference upgrades it to `"axial"`). Any other value fails to parse.
    #[serde(default)]
    pub rope_type: Option<VisionRopeType>,
    /// `rope_theta`, the frequency base.
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

/// The kinds of vision RoPE the reference accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum VisionRopeType {
    /// Height and width positions rotate separate quarters of each head (`"axial"`, `"default"`).
    #[serde(rename = "axial", alias = "default")]
    Axial,
}

/// The transformers default `rope_theta` (`RotaryEmbeddingConfigMixin.default_theta`).
const DEFAULT_ROPE_THETA: f64 = 10_000.0;

fn d_depth() -> usize {
    32
}
fn d_heads() -> usize {
    16
}
fn d_patch() -> usize {
    14
}
fn d_two() -> usize {
    2
}
fn d_3584() -> usize {
    3584
}
fn d_embed_dim() -> usize {
    1280
}
fn d_mlp_ratio() -> f64 {
    4.0
}
fn d_quick_gelu() -> Activation {
    Activation::QuickGelu
}
fn d_silu() -> Activation {
    Activation::Silu
}
fn d_intermediate() -> usize {
    3420
}
fn d_window() -> usize {
    112
}
fn d_tokens_per_second() -> f64 {
    4.0
}
fn d_fullatt() -> Vec<usize> {
    vec![7, 15, 23, 31]
}

/// Qwen2-VL's vision config (`Qwen2VLVisionConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen2VlVisionConfig {
    /// Number of vision blocks (also read as `num_hidden_layers`).
    #[serde(default = "d_depth", alias = "num_hidden_layers")]
    pub depth: usize,
    /// Width of the blocks.
    #[serde(default = "d_embed_dim")]
    pub embed_dim: usize,
    /// Output width of the patch merger (the language model's hidden size).
    #[serde(default = "d_3584")]
    pub hidden_size: usize,
    /// MLP activation (`quick_gelu`).
    #[serde(default = "d_quick_gelu")]
    pub hidden_act: Activation,
    /// MLP width as a multiple of `embed_dim` (truncated to an integer width, as `int()` does).
    #[serde(default = "d_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Attention heads (also read as `num_attention_heads`).
    #[serde(default = "d_heads", alias = "num_attention_heads")]
    pub num_heads: usize,
    /// Input channels; see [`Qwen2VlVisionConfig::channels`].
    #[serde(default)]
    pub in_channels: Option<usize>,
    /// The published checkpoints' name for `in_channels`.
    #[serde(default)]
    pub in_chans: Option<usize>,
    /// Patch side in pixels.
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    /// Side of the square of patches the merger folds into one token.
    #[serde(default = "d_two")]
    pub spatial_merge_size: usize,
    /// Frames per temporal patch.
    #[serde(default = "d_two")]
    pub temporal_patch_size: usize,
    /// The rotary embedding (transformers 5 saves).
    #[serde(default)]
    pub rope_parameters: Option<VisionRopeParameters>,
    /// A top-level `rope_theta`, used when `rope_parameters` gives none.
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

impl Default for Qwen2VlVisionConfig {
    fn default() -> Self {
        Self {
            depth: d_depth(),
            embed_dim: d_embed_dim(),
            hidden_size: d_3584(),
            hidden_act: d_quick_gelu(),
            mlp_ratio: d_mlp_ratio(),
            num_heads: d_heads(),
            in_channels: None,
            in_chans: None,
            patch_size: d_patch(),
            spatial_merge_size: d_two(),
            temporal_patch_size: d_two(),
            rope_parameters: None,
            rope_theta: None,
        }
    }
}

impl Qwen2VlVisionConfig {
    /// Input channels: `in_channels`, else `in_chans`, else 3.
    ///
    /// transformers itself ignores `in_chans` (it keeps the default 3); every published checkpoint
    /// has 3 there, and honouring it lets a checkpoint with other channels load at all.
    pub fn channels(&self) -> usize {
        self.in_channels.or(self.in_chans).unwrap_or(3)
    }

    /// The RoPE base: `rope_parameters.rope_theta`, else `rope_theta`, else 10000.
    pub fn rope_base(&self) -> f64 {
        rope_base(self.rope_parameters.as_ref(), self.rope_theta)
    }

    /// Width of each block's MLP: `int(embed_dim * mlp_ratio)`.
    pub fn mlp_hidden_size(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }
}

/// Qwen2.5-VL's vision config (`Qwen2_5_VLVisionConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen25VlVisionConfig {
    /// Number of vision blocks (also read as `num_hidden_layers`).
    #[serde(default = "d_depth", alias = "num_hidden_layers")]
    pub depth: usize,
    /// Width of the blocks.
    #[serde(default = "d_3584")]
    pub hidden_size: usize,
    /// MLP activation of the gated MLP (`silu`).
    #[serde(default = "d_silu")]
    pub hidden_act: Activation,
    /// Width of each block's gated MLP.
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    /// Attention heads (also read as `num_attention_heads`).
    #[serde(default = "d_heads", alias = "num_attention_heads")]
    pub num_heads: usize,
    /// Input channels; see [`Qwen25VlVisionConfig::channels`].
    #[serde(default)]
    pub in_channels: Option<usize>,
    /// The published checkpoints' name for `in_channels`.
    #[serde(default)]
    pub in_chans: Option<usize>,
    /// Patch side in pixels.
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    /// Side of the square of patches the merger folds into one token.
    #[serde(default = "d_two")]
    pub spatial_merge_size: usize,
    /// Frames per temporal patch.
    #[serde(default = "d_two")]
    pub temporal_patch_size: usize,
    /// Temporal positions per second of video; used by the language model's 3-D positions, not
    /// by the tower.
    #[serde(default = "d_tokens_per_second")]
    pub tokens_per_second: f64,
    /// Side of an attention window in pixels (112: 4 x 4 merged tokens of 2 x 2 patches of 14).
    #[serde(default = "d_window")]
    pub window_size: usize,
    /// Output width of the patch merger (the language model's hidden size).
    #[serde(default = "d_3584")]
    pub out_hidden_size: usize,
    /// Blocks that attend over whole frames; the others attend within windows. Indices past
    /// `depth` are ignored, as in the reference (tiny test checkpoints keep the default list).
    #[serde(default = "d_fullatt")]
    pub fullatt_block_indexes: Vec<usize>,
    /// The rotary embedding (transformers 5 saves).
    #[serde(default)]
    pub rope_parameters: Option<VisionRopeParameters>,
    /// A top-level `rope_theta`, used when `rope_parameters` gives none.
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

impl Default for Qwen25VlVisionConfig {
    fn default() -> Self {
        Self {
            depth: d_depth(),
            hidden_size: d_3584(),
            hidden_act: d_silu(),
            intermediate_size: d_intermediate(),
            num_heads: d_heads(),
            in_channels: None,
            in_chans: None,
            patch_size: d_patch(),
            spatial_merge_size: d_two(),
            temporal_patch_size: d_two(),
            tokens_per_second: d_tokens_per_second(),
            window_size: d_window(),
            out_hidden_size: d_3584(),
            fullatt_block_indexes: d_fullatt(),
            rope_parameters: None,
            rope_theta: None,
        }
    }
}

impl Qwen25VlVisionConfig {
    /// Input channels: `in_channels`, else `in_chans`, else 3 (see
    /// [`Qwen2VlVisionConfig::channels`]).
    pub fn channels(&self) -> usize {
        self.in_channels.or(self.in_chans).unwrap_or(3)
    }

    /// The RoPE base: `rope_parameters.rope_theta`, else `rope_theta`, else 10000.
    pub fn rope_base(&self) -> f64 {
        rope_base(self.rope_parameters.as_ref(), self.rope_theta)
    }

    /// Side of an attention window in merged tokens: `window_size // spatial_merge_size //
    /// patch_size`.
    pub fn window_merged_side(&self) -> usize {
        match (self.spatial_merge_size, self.patch_size) {
            (0, _) | (_, 0) => 0,
            (m, p) => self.window_size / m / p,
        }
    }
}

fn rope_base(params: Option<&VisionRopeParameters>, top_level: Option<f64>) -> f64 {
    params
        .and_then(|p| p.rope_theta)
        .or(top_level)
        .unwrap_or(DEFAULT_ROPE_THETA)
}

/// The vision config of either Qwen VL generation; the caller picks the variant from the outer
/// config's `model_type` (`qwen2_vl` / `qwen2_5_vl`), since published `vision_config`s carry no
/// reliable `model_type` of their own.
#[derive(Debug, Clone)]
pub enum QwenVisionConfig {
    /// Qwen2-VL: LayerNorm blocks, plain MLP, attention over whole frames.
    Qwen2Vl(Qwen2VlVisionConfig),
    /// Qwen2.5-VL: RMSNorm blocks, gated MLP, window attention with a few full-frame blocks.
    Qwen25Vl(Qwen25VlVisionConfig),
}

impl From<Qwen2VlVisionConfig> for QwenVisionConfig {
    fn from(c: Qwen2VlVisionConfig) -> Self {
        Self::Qwen2Vl(c)
    }
}

impl From<Qwen25VlVisionConfig> for QwenVisionConfig {
    fn from(c: Qwen25VlVisionConfig) -> Self {
        Self::Qwen25Vl(c)
    }
}

/// Which block/merger flavour a tower is built from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TowerKind {
    /// LayerNorm, `fc1 -> act -> fc2`, frame attention everywhere.
    Qwen2 { mlp_hidden: usize },
    /// RMSNorm, gated MLP, window attention except in `full_attention` blocks.
    Qwen25 {
        intermediate: usize,
        /// Window side in merged tokens.
        window_side: usize,
        /// Per block: attend over whole frames (true) or within windows (false).
        full_attention: Vec<bool>,
    },
}

/// The validated dimensions a tower is built from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TowerSpec {
    pub depth: usize,
    pub width: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    pub in_channels: usize,
    pub temporal_patch_size: usize,
    pub patch_size: usize,
    pub merge: usize,
    pub out_hidden: usize,
    pub act: Activation,
    pub rope_theta: f64,
    pub kind: TowerKind,
}

impl TowerSpec {
    /// Length of one flattened patch: `C * T * P * P`.
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

impl QwenVisionConfig {
    /// Output width of the patch merger.
    pub fn out_hidden_size(&self) -> usize {
        match self {
            Self::Qwen2Vl(c) => c.hidden_size,
            Self::Qwen25Vl(c) => c.out_hidden_size,
        }
    }

    /// Side of the square of patches folded into one output token.
    pub fn spatial_merge_size(&self) -> usize {
        match self {
            Self::Qwen2Vl(c) => c.spatial_merge_size,
            Self::Qwen25Vl(c) => c.spatial_merge_size,
        }
    }

    /// Checks every dimension and resolves the derived ones.
    pub(crate) fn spec(&self) -> Result<TowerSpec> {
        let (name, width_key, mut spec) = match self {
            Self::Qwen2Vl(c) => {
                let mlp_hidden = c.mlp_hidden_size();
                if !(c.mlp_ratio.is_finite() && mlp_hidden > 0) {
                    return Err(Error::Config(format!(
                        "Qwen2-VL vision: mlp_ratio must give a positive MLP width, found \
                         embed_dim {} x mlp_ratio {}",
                        c.embed_dim, c.mlp_ratio
                    )));
                }
                let spec = TowerSpec {
                    depth: c.depth,
                    width: c.embed_dim,
                    num_heads: c.num_heads,
                    head_dim: 0,
                    in_channels: c.channels(),
                    temporal_patch_size: c.temporal_patch_size,
                    patch_size: c.patch_size,
                    merge: c.spatial_merge_size,
                    out_hidden: c.hidden_size,
                    act: c.hidden_act,
                    rope_theta: c.rope_base(),
                    kind: TowerKind::Qwen2 { mlp_hidden },
                };
                ("Qwen2-VL vision", "embed_dim", spec)
            }
            Self::Qwen25Vl(c) => {
                let window_side = c.window_merged_side();
                if window_side == 0 {
                    return Err(Error::Config(format!(
                        "Qwen2.5-VL vision: window_size // spatial_merge_size // patch_size must \
                         be at least 1, found {} // {} // {}",
                        c.window_size, c.spatial_merge_size, c.patch_size
                    )));
                }
                if c.intermediate_size == 0 {
                    return Err(Error::Config(
                        "Qwen2.5-VL vision: intermediate_size must be positive, found 0".into(),
                    ));
                }
                let full_attention = (0..c.depth)
                    .map(|i| c.fullatt_block_indexes.contains(&i))
                    .collect();
                let spec = TowerSpec {
                    depth: c.depth,
                    width: c.hidden_size,
                    num_heads: c.num_heads,
                    head_dim: 0,
                    in_channels: c.channels(),
                    temporal_patch_size: c.temporal_patch_size,
                    patch_size: c.patch_size,
                    merge: c.spatial_merge_size,
                    out_hidden: c.out_hidden_size,
                    act: c.hidden_act,
                    rope_theta: c.rope_base(),
                    kind: TowerKind::Qwen25 {
                        intermediate: c.intermediate_size,
                        window_side,
                        full_attention,
                    },
                };
                ("Qwen2.5-VL vision", "hidden_size", spec)
            }
        };
        if spec.num_heads == 0 || spec.width == 0 || spec.width % spec.num_heads != 0 {
            return Err(Error::Config(format!(
                "{name}: {width_key} {} must be a positive multiple of num_heads {}",
                spec.width, spec.num_heads
            )));
        }
        spec.head_dim = spec.width / spec.num_heads;
        if spec.head_dim % 4 != 0 {
            // The 2-D RoPE gives height and width a quarter of the head each (then repeats both
            // for the rotate-half pairs), so the head must split into four equal parts.
            return Err(Error::Config(format!(
                "{name}: head dim {} (= {} / {} heads) must be a multiple of 4 for the 2-D \
                 rotary embedding",
                spec.head_dim, spec.width, spec.num_heads
            )));
        }
        for (key, value) in [
            ("in_channels", spec.in_channels),
            ("patch_size", spec.patch_size),
            ("temporal_patch_size", spec.temporal_patch_size),
            ("spatial_merge_size", spec.merge),
            ("output hidden size", spec.out_hidden),
        ] {
            if value == 0 {
                return Err(Error::Config(format!(
                    "{name}: {key} must be positive, found 0"
                )));
            }
        }
        if !(spec.rope_theta.is_finite() && spec.rope_theta > 0.0) {
            return Err(Error::Config(format!(
                "{name}: rope_theta must be a positive number, found {}",
                spec.rope_theta
            )));
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn reads_published_qwen2_vl_config() -> TestResult {
        // Qwen/Qwen2-VL-2B-Instruct's vision_config.
        let c: Qwen2VlVisionConfig = serde_json::from_str(
            r#"{"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                "hidden_size": 1536, "patch_size": 14, "spatial_merge_size": 2,
                "spatial_patch_size": 14, "temporal_patch_size": 2}"#,
        )?;
        assert_eq!(
            (c.channels(), c.mlp_hidden_size(), c.rope_base()),
            (3, 5120, 1e4)
        );
        assert_eq!(c.hidden_act, Activation::QuickGelu);
        let spec = QwenVisionConfig::from(c).spec()?;
        assert_eq!(
            (spec.head_dim, spec.out_hidden, spec.patch_dim()),
            (80, 1536, 1176)
        );
        Ok(())
    }

    #[test]
    fn reads_transformers5_qwen2_5_vl_config() -> TestResult {
        let c: Qwen25VlVisionConfig = serde_json::from_str(
            r#"{"depth": 3, "fullatt_block_indexes": [1], "hidden_act": "silu",
                "hidden_size": 32, "in_channels": 3, "in_chans": 3, "initializer_range": 0.02,
                "intermediate_size": 56, "model_type": "qwen2_5_vl_vision", "num_heads": 4,
                "out_hidden_size": 48, "patch_size": 14,
                "rope_parameters": {"rope_theta": 20000.0, "rope_type": "axial"},
                "spatial_merge_size": 2, "temporal_patch_size": 2, "tokens_per_second": 4,
                "window_size": 112}"#,
        )?;
        assert_eq!((c.rope_base(), c.window_merged_side()), (20000.0, 4));
        let spec = QwenVisionConfig::from(c).spec()?;
        assert_eq!(
            spec.kind,
            TowerKind::Qwen25 {
                intermediate: 56,
                window_side: 4,
                full_attention: vec![false, true, false]
            }
        );
        Ok(())
    }

    #[test]
    fn defaults_match_transformers() {
        let c: std::result::Result<Qwen25VlVisionConfig, _> = serde_json::from_str("{}");
        assert!(
            matches!(c, Ok(ref c) if c.fullatt_block_indexes == [7, 15, 23, 31]
            && c.out_hidden_size == 3584 && c.intermediate_size == 3420 && c.window_size == 112)
        );
        let c: std::result::Result<Qwen2VlVisionConfig, _> = serde_json::from_str("{}");
        assert!(matches!(c, Ok(ref c) if c.embed_dim == 1280 && c.hidden_size == 3584));
    }

    #[test]
    fn rejects_bad_dimensions() {
        let odd_head = Qwen2VlVisionConfig {
            embed_dim: 24,
            num_heads: 4,
            ..Default::default()
        };
        let err = QwenVisionConfig::from(odd_head)
            .spec()
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("multiple of 4")));
        let tiny_window = Qwen25VlVisionConfig {
            window_size: 20,
            ..Default::default()
        };
        assert!(QwenVisionConfig::from(tiny_window).spec().is_err());
        let bad_rope: std::result::Result<Qwen2VlVisionConfig, _> =
            serde_json::from_str(r#"{"rope_parameters": {"rope_type": "linear"}}"#);
        assert!(bad_rope.is_err());
    }
}
