//! The pre-norm transformer encoder CLIP and SigLIP share (`layer_norm1`, `self_attn`,
//! `layer_norm2`, `mlp.fc1/fc2`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{attention, Activation, LayerNorm, Linear};

/// Dimensions of a ViT encoder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncoderDims {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(d: &EncoderDims, vb: VarBuilder) -> Result<Self> {
        let h = d.hidden_size;
        Ok(Self {
            q_proj: Linear::new(h, h, true, vb.pp("q_proj"))?,
            k_proj: Linear::new(h, h, true, vb.pp("k_proj"))?,
            v_proj: Linear::new(h, h, true, vb.pp("v_proj"))?,
            out_proj: Linear::new(h, h, true, vb.pp("out_proj"))?,
            num_heads: d.num_attention_heads,
            head_dim: h / d.num_attention_heads,
        })
    }

    /// `mask`: additive, broadcastable to `(b, heads, n, n)` (Idefics3 masks padded patches).
    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, _) = xs.dims3()?;
        let split = |t: Tensor| {
            t.reshape((b, n, self.num_heads, self.head_dim))?
                .transpose(1, 2)
        };
        let q = split(self.q_proj.forward(xs)?)?;
        let k = split(self.k_proj.forward(xs)?)?;
        let v = split(self.v_proj.forward(xs)?)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = attention(&q, &k, &v, mask, scale)?;
        let out = out.transpose(1, 2)?.reshape((b, n, ()))?;
        self.out_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    fn new(d: &EncoderDims, vb: VarBuilder) -> Result<Self> {
        let h = d.hidden_size;
        Ok(Self {
            layer_norm1: LayerNorm::new(h, d.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: SelfAttention::new(d, vb.pp("self_attn"))?,
            layer_norm2: LayerNorm::new(h, d.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: Linear::new(h, d.intermediate_size, true, vb.pp("mlp").pp("fc1"))?,
            fc2: Linear::new(d.intermediate_size, h, true, vb.pp("mlp").pp("fc2"))?,
            act: d.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = (xs
            + self
                .self_attn
                .forward(&self.layer_norm1.forward(xs)?, mask)?)?;
        let m = self
            .fc1
            .forward_act(&self.layer_norm2.forward(&h)?, self.act)?;
        let m = self.fc2.forward(&m)?;
        h + m
    }
}

/// Attention scores (batch x heads x queries x keys) per pass of [`VitEncoder::forward_masked`].
const MAX_SCORES_PER_PASS: usize = 1 << 24;

/// A stack of encoder layers (`encoder.layers.{i}`).
#[derive(Debug, Clone)]
pub struct VitEncoder {
    layers: Vec<EncoderLayer>,
}

impl VitEncoder {
    pub(crate) fn new(d: &EncoderDims, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..d.num_hidden_layers)
            .map(|i| EncoderLayer::new(d, vb.pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Returns `[input, out_1, ..., out_k]` with `k = min(up_to, n_layers)`.
    pub(crate) fn hidden_states(&self, input: Tensor, up_to: usize) -> Result<Vec<Tensor>> {
        let mut states = Vec::with_capacity(up_to + 1);
        states.push(input);
        for layer in self.layers.iter().take(up_to) {
            let next = match states.last() {
                Some(prev) => layer.forward(prev, None)?,
                None => candle_core::bail!("encoder has no input"),
            };
            states.push(next);
        }
        Ok(states)
    }

    /// The output of the last layer, with an additive attention `mask` broadcastable to
    /// `(b, heads, n, n)` applied in every layer (`None`: every token sees every token).
    ///
    /// Images (batch rows) are independent, so a large batch (Idefics3's tiles) goes through in
    /// passes of at most [`MAX_SCORES_PER_PASS`] attention scores: the score tensors of 17 tiles
    /// at once took gigabytes, and smaller ones stay in cache.
    pub(crate) fn forward_masked(&self, input: Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, _) = input.dims3()?;
        let heads = self.layers.first().map_or(1, |l| l.self_attn.num_heads);
        let per_pass = (MAX_SCORES_PER_PASS / (heads * n * n).max(1)).max(1);
        if b > per_pass {
            let mut outs = Vec::with_capacity(b.div_ceil(per_pass));
            for start in (0..b).step_by(per_pass) {
                let len = per_pass.min(b - start);
                // The mask has a batch of `b` or of 1 (broadcast).
                let m = match mask {
                    Some(m) if m.dim(0)? == b => Some(m.narrow(0, start, len)?),
                    other => other.cloned(),
                };
                outs.push(self.forward_masked(input.narrow(0, start, len)?, m.as_ref())?);
            }
            return Tensor::cat(&outs, 0);
        }
        let mut xs = input;
        for layer in &self.layers {
            xs = layer.forward(&xs, mask)?;
        }
        Ok(xs)
    }
}
