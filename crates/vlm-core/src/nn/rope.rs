//! Rotary position embeddings (the "rotate half" layout Llama and Qwen2 use), with the
//! `linear` and `llama3` frequency scalings.
//!
//! Mirrors `transformers/modeling_rope_utils.py`. Positions are an explicit `(batch, seq)` tensor,
//! so every sequence of a batch may sit at a different offset.

use candle_core::{DType, Device, Result, Tensor, D};
use serde::Deserialize;

/// The frequency scaling of a rotary embedding (`rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor` (inverse frequencies divided by it).
    Linear {
        /// Interpolation factor.
        factor: f64,
    },
    /// Llama 3.1's piecewise scaling of low frequencies.
    Llama3 {
        /// Scale applied to the lowest frequencies.
        factor: f64,
        /// Wavelength threshold numerator for the low band.
        low_freq_factor: f64,
        /// Wavelength threshold numerator for the high band.
        high_freq_factor: f64,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: usize,
    },
}

/// Precomputed inverse frequencies; produces `cos`/`sin` for any positions.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    inv_freq: Tensor,
}

impl RotaryEmbedding {
    /// Builds the inverse frequencies for `head_dim` with base `theta`.
    pub fn new(
        head_dim: usize,
        theta: f64,
        scaling: &RopeScaling,
        device: &Device,
    ) -> Result<Self> {
        // The reference computes these in f32; doing the same keeps the cos/sin bit-close.
        let theta = theta as f32;
        let mut inv_freq: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / theta.powf(i as f32 / head_dim as f32))
            .collect();
        match scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                for f in inv_freq.iter_mut() {
                    *f /= *factor as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old_ctx = *original_max_position_embeddings as f32;
                let (factor, low, high) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                );
                let low_freq_wavelen = old_ctx / low;
                let high_freq_wavelen = old_ctx / high;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > low_freq_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_freq_wavelen {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        let n = inv_freq.len();
        Ok(Self {
            inv_freq: Tensor::from_vec(inv_freq, n, device)?,
        })
    }

    /// `cos` and `sin` of shape `(batch, seq, head_dim / 2)` for `positions` of shape
    /// `(batch, seq)` (any integer dtype), cast to `dtype`.
    pub fn cos_sin(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let pos = positions.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        let freqs = pos.broadcast_mul(&self.inv_freq.reshape((1, 1, ()))?)?;
        Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
    }

    /// Multimodal RoPE (Qwen2-VL's M-RoPE): `positions` of shape `(3, batch, seq)` hold the
    /// temporal, height and width position of every token, and `sections` (`mrope_section`,
    /// summing to `head_dim / 2`) say how many consecutive frequencies each of the three axes
    /// drives. Returns `cos`/`sin` of shape `(batch, seq, head_dim / 2)` like [`Self::cos_sin`],
    /// so [`Self::apply`] is unchanged.
    pub fn cos_sin_multimodal(
        &self,
        positions: &Tensor,
        sections: &[usize; 3],
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let (axes, _, _) = positions.dims3()?;
        let half = self.inv_freq.dim(0)?;
        if axes != 3 || sections.iter().sum::<usize>() != half {
            candle_core::bail!(
                "multimodal rope: expected positions (3, batch, seq) and sections summing to \
                 {half}, got {axes} position rows and sections {sections:?}"
            );
        }
        let mut cos = Vec::with_capacity(3);
        let mut sin = Vec::with_capacity(3);
        let mut start = 0;
        for (axis, &len) in sections.iter().enumerate() {
            let pos = positions
                .get(axis)?
                .to_dtype(DType::F32)?
                .unsqueeze(D::Minus1)?;
            let freq = self.inv_freq.narrow(0, start, len)?.reshape((1, 1, len))?;
            let angles = pos.broadcast_mul(&freq)?;
            cos.push(angles.cos()?);
            sin.push(angles.sin()?);
            start += len;
        }
        Ok((
            Tensor::cat(&cos, D::Minus1)?.to_dtype(dtype)?,
            Tensor::cat(&sin, D::Minus1)?.to_dtype(dtype)?,
        ))
    }

    /// Rotates `xs` of shape `(batch, heads, seq, head_dim)` by the angles in `cos`/`sin`.
    pub fn apply(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        candle_nn::rotary_emb::rope(&xs.contiguous()?, cos, sin)
    }
}
