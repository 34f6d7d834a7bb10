//! A linear layer whose weight storage is an implementation detail.
//!
//! Model code only calls [`Linear::forward`]; the weight is held in a private enum so a later
//! quantized variant (candle's `QMatMul`) slots in here without touching any model file.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
enum Weight {
    /// A dense `(out_features, in_features)` matrix, as PyTorch stores it.
    Dense(Tensor),
}

/// `y = x W^T + b`, over any number of leading dimensions.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    /// Wraps an existing `(out, in)` weight and optional `(out,)` bias.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Dense(weight),
            bias,
        }
    }

    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias` is true).
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self::from_weights(weight, bias))
    }

    /// The dense weight, `(out_features, in_features)`.
    pub fn weight(&self) -> &Tensor {
        match &self.weight {
            Weight::Dense(w) => w,
        }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let Weight::Dense(w) = &self.weight;
        let dims = xs.dims();
        let in_dim = dims.last().copied().unwrap_or(0);
        let rows = xs.elem_count() / in_dim.max(1);
        // Fold every leading dimension into one so the matmul is a single GEMM against W^T.
        let flat = xs.reshape((rows, in_dim))?;
        let ys = flat.matmul(&w.t()?)?;
        let ys = match &self.bias {
            Some(b) => ys.broadcast_add(b)?,
            None => ys,
        };
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = w.dim(0)?;
        }
        ys.reshape(out_dims)
    }
}
