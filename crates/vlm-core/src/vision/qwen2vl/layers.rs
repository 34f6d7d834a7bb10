//! The blocks and patch merger of both Qwen VL vision towers, and their 2-D rotary embedding.
//!
//! Mirrors `Qwen2VLVisionBlock`, `VisionAttention`, `VisionMlp`, `PatchMerger` and
//! `Qwen2VLVisionRotaryEmbedding` in `transformers/models/qwen2_vl/modeling_qwen2_vl.py`, and
//! their Qwen2.5-VL counterparts (`Qwen2_5_VLVisionBlock`, `Qwen2_5_VLMLP`,
//! `Qwen2_5_VLPatchMerger`) in `transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py`.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{TowerKind, TowerSpec};
use crate::nn::{varlen_attention_qkv, Activation, LayerNorm, Linear, RmsNorm, VarlenPlan};

/// Both towers hard-code this epsilon for every norm, whatever the config says.
const NORM_EPS: f64 = 1e-6;

/// LayerNorm (Qwen2-VL) or RMSNorm (Qwen2.5-VL).
#[derive(Debug, Clone)]
enum Norm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl Norm {
    fn new(kind: &TowerKind, dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            TowerKind::Qwen2 { .. } => Self::Layer(LayerNorm::new(dim, NORM_EPS, vb)?),
            TowerKind::Qwen25 { .. } => Self::Rms(RmsNorm::new(dim, NORM_EPS, vb)?),
        })
    }
}

impl Module for Norm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Layer(n) => n.forward(xs),
            Self::Rms(n) => n.forward(xs),
        }
    }
}

/// The cos/sin of every patch's rotary angles, `(patches, 1, head_dim / 2)` in f32.
///
/// The half-width layout is what [`varlen_attention_qkv`] consumes: the reference's full-width
/// table is this one concatenated with itself (`[h, w, h, w]` quarters), which is exactly the
/// rotate-half pairing.
#[derive(Debug, Clone)]
pub(crate) struct RotaryTable {
    cos: Tensor,
    sin: Tensor,
}

/// `1 / theta^(2i / (head_dim/2))` for `i < head_dim / 4`, computed in f32 as the reference does.
pub(crate) fn rotary_inv_freq(head_dim: usize, theta: f64, device: &Device) -> Result<Tensor> {
    let spatial = head_dim / 2;
    let theta = theta as f32;
    let inv: Vec<f32> = (0..spatial)
        .step_by(2)
        .map(|i| 1.0 / theta.powf(i as f32 / spatial as f32))
        .collect();
    let n = inv.len();
    Tensor::from_vec(inv, n, device)
}

impl RotaryTable {
    /// `positions`: `[row, col]` per patch, flattened; `inv_freq`: `(head_dim / 4,)`.
    pub(crate) fn new(positions: Vec<f32>, inv_freq: &Tensor) -> Result<Self> {
        let n = positions.len() / 2;
        let pos = Tensor::from_vec(positions, (n, 2, 1), inv_freq.device())?;
        // (n, 2, head_dim/4) -> (n, 1, head_dim/2): row angles then column angles.
        let freqs = pos
            .broadcast_mul(&inv_freq.reshape((1, 1, ()))?)?
            .reshape((n, 1, ()))?;
        Ok(Self {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
        })
    }
}

/// Packed-sequence self-attention (`attn.qkv`, `attn.proj`).
#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(spec: &TowerSpec, vb: VarBuilder) -> Result<Self> {
        let w = spec.width;
        Ok(Self {
            qkv: Linear::new(w, 3 * w, true, vb.pp("qkv"))?,
            proj: Linear::new(w, w, true, vb.pp("proj"))?,
            num_heads: spec.num_heads,
            head_dim: spec.head_dim,
        })
    }

    fn forward(&self, xs: &Tensor, rope: &RotaryTable, plan: &VarlenPlan) -> Result<Tensor> {
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = varlen_attention_qkv(
            &self.qkv.forward(xs)?,
            self.num_heads,
            self.head_dim,
            (&rope.cos, &rope.sin),
            plan,
            scale,
        )?;
        self.proj.forward(&out)
    }
}

/// `fc1 -> act -> fc2` (Qwen2-VL) or `down(act(gate) * up)` (Qwen2.5-VL), all with biases.
#[derive(Debug, Clone)]
enum Mlp {
    Plain {
        fc1: Linear,
        fc2: Linear,
        act: Activation,
    },
    Gated {
        gate_proj: Linear,
        up_proj: Linear,
        down_proj: Linear,
        act: Activation,
    },
}

impl Mlp {
    fn new(spec: &TowerSpec, vb: VarBuilder) -> Result<Self> {
        let w = spec.width;
        Ok(match spec.kind {
            TowerKind::Qwen2 { mlp_hidden } => Self::Plain {
                fc1: Linear::new(w, mlp_hidden, true, vb.pp("fc1"))?,
                fc2: Linear::new(mlp_hidden, w, true, vb.pp("fc2"))?,
                act: spec.act,
            },
            TowerKind::Qwen25 { intermediate, .. } => Self::Gated {
                gate_proj: Linear::new(w, intermediate, true, vb.pp("gate_proj"))?,
                up_proj: Linear::new(w, intermediate, true, vb.pp("up_proj"))?,
                down_proj: Linear::new(intermediate, w, true, vb.pp("down_proj"))?,
                act: spec.act,
            },
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Plain { fc1, fc2, act } => fc2.forward(&fc1.forward_act(xs, *act)?),
            Self::Gated {
                gate_proj,
                up_proj,
                down_proj,
                act,
            } => {
                let gated = act.forward(&gate_proj.forward(xs)?)?;
                down_proj.forward(&(gated * up_proj.forward(xs)?)?)
            }
        }
    }
}

/// A pre-norm block (`blocks.{i}`: `norm1`, `attn`, `norm2`, `mlp`).
#[derive(Debug, Clone)]
pub(crate) struct Block {
    norm1: Norm,
    attn: Attention,
    norm2: Norm,
    mlp: Mlp,
}

impl Block {
    pub(crate) fn new(spec: &TowerSpec, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: Norm::new(&spec.kind, spec.width, vb.pp("norm1"))?,
            attn: Attention::new(spec, vb.pp("attn"))?,
            norm2: Norm::new(&spec.kind, spec.width, vb.pp("norm2"))?,
            mlp: Mlp::new(spec, vb.pp("mlp"))?,
        })
    }

    /// `xs`: `(patches, width)`; attention stays inside the segments of `plan`.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        rope: &RotaryTable,
        plan: &VarlenPlan,
    ) -> Result<Tensor> {
        let h = (xs + self.attn.forward(&self.norm1.forward(xs)?, rope, plan)?)?;
        &h + self.mlp.forward(&self.norm2.forward(&h)?)?
    }
}

/// `merger`: norm each patch (`ln_q`), concatenate each unit of `merge^2` patches, then
/// `mlp.0 -> GELU (erf) -> mlp.2`.
#[derive(Debug, Clone)]
pub(crate) struct PatchMerger {
    ln_q: Norm,
    fc1: Linear,
    fc2: Linear,
    unit_width: usize,
}

impl PatchMerger {
    pub(crate) fn new(spec: &TowerSpec, vb: VarBuilder) -> Result<Self> {
        let unit_width = spec.width * spec.merge * spec.merge;
        let mlp = vb.pp("mlp");
        Ok(Self {
            ln_q: Norm::new(&spec.kind, spec.width, vb.pp("ln_q"))?,
            fc1: Linear::new(unit_width, unit_width, true, mlp.pp(0))?,
            fc2: Linear::new(unit_width, spec.out_hidden, true, mlp.pp(2))?,
            unit_width,
        })
    }
}

impl Module for PatchMerger {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.ln_q.forward(xs)?.reshape(((), self.unit_width))?;
        self.fc2.forward(&self.fc1.forward(&xs)?.gelu_erf()?)
    }
}
