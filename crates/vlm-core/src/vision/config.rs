//! ViT configs of CLIP (`CLIPVisionConfig`) and SigLIP (`SiglipVisionConfig`).
//!
//! The two share every key and most defaults; [`VitDefaults`] holds the ones that differ
//! (`configuration_clip.py`: patch 32, quick_gelu, eps 1e-5; `configuration_siglip.py`:
//! patch 16, gelu_pytorch_tanh, eps 1e-6).

use std::marker::PhantomData;

use serde::Deserialize;

use super::encoder::EncoderDims;
use crate::nn::Activation;

/// Family-specific defaults of a ViT config.
pub trait VitDefaults {
    /// `patch_size`.
    const PATCH: usize;
    /// `hidden_act`.
    const ACT: Activation;
    /// `layer_norm_eps`.
    const EPS: f64;
}

/// CLIP's defaults.
#[derive(Debug, Clone, Copy)]
pub struct ClipDefaults;
impl VitDefaults for ClipDefaults {
    const PATCH: usize = 32;
    const ACT: Activation = Activation::QuickGelu;
    const EPS: f64 = 1e-5;
}

/// SigLIP's defaults.
#[derive(Debug, Clone, Copy)]
pub struct SiglipDefaults;
impl VitDefaults for SiglipDefaults {
    const PATCH: usize = 16;
    const ACT: Activation = Activation::GeluTanh;
    const EPS: f64 = 1e-6;
}

fn d_hidden() -> usize {
    768
}
fn d_intermediate() -> usize {
    3072
}
fn d_twelve() -> usize {
    12
}
fn d_channels() -> usize {
    3
}
fn d_image() -> usize {
    224
}
fn d_patch<D: VitDefaults>() -> usize {
    D::PATCH
}
fn d_act<D: VitDefaults>() -> Activation {
    D::ACT
}
fn d_eps<D: VitDefaults>() -> f64 {
    D::EPS
}

/// A ViT vision config with transformers' defaults for every missing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(bound = "")]
pub struct VitConfig<D: VitDefaults> {
    /// Width of the hidden states.
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    /// Number of encoder layers.
    #[serde(default = "d_twelve")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    #[serde(default = "d_twelve")]
    pub num_attention_heads: usize,
    /// Input channels.
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    /// Input resolution (square).
    #[serde(default = "d_image")]
    pub image_size: usize,
    /// Patch side.
    #[serde(default = "d_patch::<D>")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default = "d_act::<D>")]
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    #[serde(default = "d_eps::<D>")]
    pub layer_norm_eps: f64,
    #[serde(skip)]
    _family: PhantomData<D>,
}

impl<D: VitDefaults> VitConfig<D> {
    pub(crate) fn encoder_dims(&self) -> EncoderDims {
        EncoderDims {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            layer_norm_eps: self.layer_norm_eps,
            hidden_act: self.hidden_act,
        }
    }
}

/// `CLIPVisionConfig`.
pub type ClipVisionConfig = VitConfig<ClipDefaults>;
/// `SiglipVisionConfig`.
pub type SiglipVisionConfig = VitConfig<SiglipDefaults>;
