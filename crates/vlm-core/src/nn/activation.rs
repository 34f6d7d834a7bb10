//! Activation functions named as in transformers' `ACT2FN`.

use candle_core::{Result, Tensor};
use serde::Deserialize;

/// An activation, parsed once from the config string (`hidden_act`, `projector_hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// Exact GELU with erf (`gelu`).
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, `gelu_new`, `gelu_fast`).
    #[serde(rename = "gelu_pytorch_tanh", alias = "gelu_new", alias = "gelu_fast")]
    GeluTanh,
    /// `x * sigmoid(1.702 x)` (CLIP's `quick_gelu`).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// `x * sigmoid(x)` (`silu`, `swish`).
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    /// `max(x, 0)`.
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    /// `act(gate) * up` for `xs` whose last dimension is `[gate | up]` (a gated MLP's stacked
    /// gate and up projections): one pass on the CPU in f32, else narrow, activate, multiply.
    pub fn gated(&self, xs: &Tensor) -> Result<Tensor> {
        use super::cpu_math;
        let fast = match self {
            Self::Silu => cpu_math::gated(xs, cpu_math::silu)?,
            Self::QuickGelu => cpu_math::gated(xs, cpu_math::quick_gelu)?,
            Self::GeluTanh => cpu_math::gated(xs, cpu_math::gelu_tanh)?,
            Self::Gelu | Self::Relu => None,
        };
        if let Some(ys) = fast {
            return Ok(ys);
        }
        let last = xs.rank().saturating_sub(1);
        let width = xs.dim(last)?;
        if width % 2 != 0 {
            candle_core::bail!("gated activation: expected an even last dimension, found {width}");
        }
        let half = width / 2;
        let gate = self.forward(&xs.narrow(last, 0, half)?.contiguous()?)?;
        gate * xs.narrow(last, half, half)?
    }

    /// The same function for the packed GEMM to apply as it stores its outputs, where the
    /// unfused f32 CPU path below computes it with a `cpu_math` function (so both agree).
    pub(crate) fn epilogue(self) -> Option<super::sgemm::Epilogue> {
        use super::sgemm::Epilogue;
        match self {
            Self::QuickGelu => Some(Epilogue::QuickGelu),
            Self::GeluTanh => Some(Epilogue::GeluTanh),
            Self::Gelu | Self::Silu | Self::Relu => None,
        }
    }

    /// Applies the activation elementwise.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // On CPU in f32: vectorized and spread over threads (candle calls libm per element).
        let fast = match self {
            Self::GeluTanh => super::cpu_math::unary(xs, super::cpu_math::gelu_tanh)?,
            Self::QuickGelu => super::cpu_math::unary(xs, super::cpu_math::quick_gelu)?,
            Self::Silu => super::cpu_math::unary(xs, super::cpu_math::silu)?,
            _ => None,
        };
        if let Some(ys) = fast {
            return Ok(ys);
        }
        match self {
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
            Self::QuickGelu => xs.broadcast_mul(&candle_nn::ops::sigmoid(&(xs * 1.702)?)?),
            Self::Silu => xs.silu(),
            Self::Relu => xs.relu(),
        }
    }
}
