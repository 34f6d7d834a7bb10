//! SigLIP ViT vision tower (LLaVA-OneVision, Idefics3/SmolVLM, llava-interleave).
//!
//! Mirrors `transformers/models/siglip/modeling_siglip.py` (`SiglipVisionModel`), config
//! `configuration_siglip.py` (`SiglipVisionConfig`). The pooling head is not used by VLMs and
//! is not loaded.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::encoder::{EncoderDims, VitEncoder};
use crate::nn::{Activation, Linear};

fn d_hidden() -> usize {
    768
}
fn d_intermediate() -> usize {
    3072
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_channels() -> usize {
    3
}
fn d_image() -> usize {
    224
}
fn d_patch() -> usize {
    16
}
fn d_act() -> Activation {
    Activation::GeluTanh
}
fn d_eps() -> f64 {
    1e-6
}

/// `SiglipVisionConfig`, with transformers' defaults for every missing key.
#[derive(Debug, Clone, Deserialize)]
pub struct SiglipVisionConfig {
    /// Width of the hidden states.
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    /// Number of encoder layers.
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// Input channels.
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    /// Input resolution (square).
    #[serde(default = "d_image")]
    pub image_size: usize,
    /// Patch side.
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
}

/// The SigLIP vision transformer (`embeddings`, `encoder`; no CLS token).
#[derive(Debug, Clone)]
pub struct SiglipVisionTower {
    patch_embedding: Linear,
    position_embedding: Tensor,
    encoder: VitEncoder,
    patch_size: usize,
}

impl SiglipVisionTower {
    /// Loads the tower from `vb` (keys `embeddings.*`, `encoder.layers.*`).
    pub fn new(cfg: &SiglipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let (h, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let emb = vb.pp("embeddings");
        let conv = emb.get((h, c, p, p), "patch_embedding.weight")?;
        let bias = emb.get(h, "patch_embedding.bias")?;
        let num_positions = (cfg.image_size / p).pow(2);
        Ok(Self {
            patch_embedding: Linear::from_weights(conv.reshape((h, c * p * p))?, Some(bias)),
            position_embedding: emb.get((num_positions, h), "position_embedding.weight")?,
            encoder: VitEncoder::new(
                &EncoderDims {
                    hidden_size: h,
                    intermediate_size: cfg.intermediate_size,
                    num_hidden_layers: cfg.num_hidden_layers,
                    num_attention_heads: cfg.num_attention_heads,
                    layer_norm_eps: cfg.layer_norm_eps,
                    hidden_act: cfg.hidden_act,
                },
                vb.pp("encoder"),
            )?,
            patch_size: p,
        })
    }

    /// `[embeddings, layer 1, ..., layer up_to]`, each `(b, patches, hidden)`.
    ///
    /// The last entry is the raw encoder output: like transformers (which records hidden states
    /// without tying the last one to the post-layernormed output), `post_layernorm` is not part of
    /// the hidden states a VLM selects from.
    pub fn hidden_states(&self, pixel_values: &Tensor, up_to: usize) -> Result<Vec<Tensor>> {
        let dtype = self.position_embedding.dtype();
        let patches = super::patchify(&pixel_values.to_dtype(dtype)?, self.patch_size)?;
        let xs = self.patch_embedding.forward(&patches)?;
        let n = xs.dim(1)?;
        let positions = self.position_embedding.dim(0)?;
        if n != positions {
            candle_core::bail!(
                "SigLIP vision tower: the image gives {n} patches but the position table holds \
                 {positions}; resize the image to the configured size"
            );
        }
        let xs = xs.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        self.encoder.hidden_states(xs, up_to)
    }
}
