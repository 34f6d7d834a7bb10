//! SigLIP ViT vision tower (LLaVA-OneVision, Idefics3/SmolVLM, llava-interleave).
//!
//! Mirrors `transformers/models/siglip/modeling_siglip.py` (`SiglipVisionModel`), config
//! `configuration_siglip.py` (`SiglipVisionConfig`). The pooling head is not used by VLMs and
//! is not loaded.

pub use super::config::SiglipVisionConfig;
use super::encoder::VitEncoder;
use crate::nn::Linear;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

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
            encoder: VitEncoder::new(&cfg.encoder_dims(), vb.pp("encoder"))?,
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
