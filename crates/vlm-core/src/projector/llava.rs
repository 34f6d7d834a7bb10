//! LLaVA's multi-modal projector: `linear_2(act(linear_1(x)))`.
//!
//! Mirrors `LlavaMultiModalProjector` in `transformers/models/llava/modeling_llava.py`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{Activation, Linear};

/// Two linear layers around an activation.
#[derive(Debug, Clone)]
pub struct LlavaProjector {
    linear_1: Linear,
    linear_2: Linear,
    act: Activation,
}

impl LlavaProjector {
    /// Loads `linear_1` (`in_dim -> out_dim`) and `linear_2` (`out_dim -> out_dim`).
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        act: Activation,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::new(in_dim, out_dim, bias, vb.pp("linear_1"))?,
            linear_2: Linear::new(out_dim, out_dim, bias, vb.pp("linear_2"))?,
            act,
        })
    }
}

impl Module for LlavaProjector {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.linear_2
            .forward(&self.linear_1.forward_act(xs, self.act)?)
    }
}
