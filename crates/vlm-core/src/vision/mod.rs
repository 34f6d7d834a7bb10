//! Vision towers: images in, patch features out.

mod clip;
mod config;
mod encoder;
pub mod idefics3;
mod qwen2vl;
mod siglip;

pub use clip::{ClipVisionConfig, ClipVisionTower};
pub use config::{ClipDefaults, SiglipDefaults, VitConfig, VitDefaults};
pub use encoder::VitEncoder;
pub use idefics3::{Idefics3VisionConfig, Idefics3VisionTransformer};
pub use qwen2vl::{
    Qwen25VlVisionConfig, Qwen2VlVisionConfig, QwenVisionConfig, QwenVisionTower,
    VisionRopeParameters, VisionRopeType,
};
pub use siglip::{SiglipVisionConfig, SiglipVisionTower};

use candle_core::{Result, Tensor};
use serde::Deserialize;

/// `vision_config` of a VLM, dispatched on its `model_type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "model_type")]
pub enum VisionConfig {
    /// CLIP ViT (`clip_vision_model`).
    #[serde(rename = "clip_vision_model")]
    Clip(ClipVisionConfig),
    /// SigLIP ViT (`siglip_vision_model`).
    #[serde(rename = "siglip_vision_model")]
    Siglip(SiglipVisionConfig),
}

impl VisionConfig {
    /// Width of the tower's hidden states.
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Clip(c) => c.hidden_size,
            Self::Siglip(c) => c.hidden_size,
        }
    }

    /// Number of encoder layers.
    pub fn num_hidden_layers(&self) -> usize {
        match self {
            Self::Clip(c) => c.num_hidden_layers,
            Self::Siglip(c) => c.num_hidden_layers,
        }
    }

    /// Input resolution (square) and patch size.
    pub fn image_and_patch_size(&self) -> (usize, usize) {
        match self {
            Self::Clip(c) => (c.image_size, c.patch_size),
            Self::Siglip(c) => (c.image_size, c.patch_size),
        }
    }
}

/// A ViT-style vision tower that exposes its per-layer hidden states.
#[derive(Debug, Clone)]
pub enum VisionTower {
    /// CLIP ViT.
    Clip(ClipVisionTower),
    /// SigLIP ViT.
    Siglip(SiglipVisionTower),
}

impl VisionTower {
    /// Builds the tower for `cfg` from weights under `vb` (the tower's own prefix).
    pub fn new(cfg: &VisionConfig, vb: candle_nn::VarBuilder) -> Result<Self> {
        Ok(match cfg {
            VisionConfig::Clip(c) => Self::Clip(ClipVisionTower::new(c, vb)?),
            VisionConfig::Siglip(c) => Self::Siglip(SiglipVisionTower::new(c, vb)?),
        })
    }

    /// Hidden states `[embeddings, layer 1, ..., layer n]` as transformers returns them with
    /// `output_hidden_states=True`, computed only up to layer `up_to` (inclusive; index into that
    /// list), since later layers would be thrown away.
    pub fn hidden_states(&self, pixel_values: &Tensor, up_to: usize) -> Result<Vec<Tensor>> {
        match self {
            Self::Clip(t) => t.hidden_states(pixel_values, up_to),
            Self::Siglip(t) => t.hidden_states(pixel_values, up_to),
        }
    }
}

/// Cuts `(b, c, h, w)` pixels into non-overlapping `patch x patch` squares and flattens each in
/// `(c, ky, kx)` order: `(b, n_patches, c * patch * patch)`.
///
/// A stride-`patch` convolution with a `patch`-sized kernel is exactly a matmul of this against
/// the flattened kernel, which is both simpler and faster than a conv op.
pub(crate) fn patchify(pixel_values: &Tensor, patch: usize) -> Result<Tensor> {
    let (b, c, h, w) = pixel_values.dims4()?;
    let (gh, gw) = (h / patch, w / patch);
    // A conv with stride = kernel ignores a trailing partial patch; so do we.
    let px = pixel_values
        .narrow(2, 0, gh * patch)?
        .narrow(3, 0, gw * patch)?;
    px.reshape((b, c, gh, patch, gw, patch))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((b, gh * gw, c * patch * patch))
}
