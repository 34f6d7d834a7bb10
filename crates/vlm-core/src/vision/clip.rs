//! CLIP ViT vision tower (LLaVA-1.5, LLaVA-NeXT).
//!
//! Mirrors `transformers/models/clip/modeling_clip.py` (`CLIPVisionModel`), config
//! `configuration_clip.py` (`CLIPVisionConfig`).

pub use super::config::ClipVisionConfig;
use super::encoder::VitEncoder;
use crate::nn::{LayerNorm, Linear};
use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// The CLIP vision transformer (`embeddings`, `pre_layrnorm`, `encoder`).
#[derive(Debug, Clone)]
pub struct ClipVisionTower {
    patch_embedding: Linear,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: VitEncoder,
    patch_size: usize,
}

impl ClipVisionTower {
    /// Loads the tower from `vb` (keys `embeddings.*`, `pre_layrnorm.*`, `encoder.layers.*`).
    pub fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let (h, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let emb = vb.pp("embeddings");
        let conv = emb.get((h, c, p, p), "patch_embedding.weight")?;
        let num_positions = (cfg.image_size / p).pow(2) + 1;
        Ok(Self {
            patch_embedding: Linear::from_weights(conv.reshape((h, c * p * p))?, None),
            class_embedding: emb.get(h, "class_embedding")?,
            position_embedding: emb.get((num_positions, h), "position_embedding.weight")?,
            pre_layrnorm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            encoder: VitEncoder::new(&cfg.encoder_dims(), vb.pp("encoder"))?,
            patch_size: p,
        })
    }

    /// `[pre_layrnorm(embeddings), layer 1, ..., layer up_to]`, each `(b, 1 + patches, hidden)`.
    pub fn hidden_states(&self, pixel_values: &Tensor, up_to: usize) -> Result<Vec<Tensor>> {
        let dtype = self.class_embedding.dtype();
        let patches = super::patchify(&pixel_values.to_dtype(dtype)?, self.patch_size)?;
        let patches = self.patch_embedding.forward(&patches)?;
        let (b, n, h) = patches.dims3()?;
        let positions = self.position_embedding.dim(0)?;
        if n + 1 != positions {
            candle_core::bail!(
                "CLIP vision tower: the image gives {n} patches but the position table holds {} \
                 (image_size / patch_size squared); resize the image to the configured size",
                positions - 1
            );
        }
        let cls = self.class_embedding.reshape((1, 1, h))?.expand((b, 1, h))?;
        let xs = Tensor::cat(&[&cls, &patches], D::Minus2)?;
        let xs = xs.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        let xs = self.pre_layrnorm.forward(&xs)?;
        self.encoder.hidden_states(xs, up_to)
    }
}
