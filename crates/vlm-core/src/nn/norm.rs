//! RMSNorm and LayerNorm, computed in f32 whatever the activation dtype, as the reference does.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::cpu_math;

/// The error for inputs whose rows do not match the norm's weight.
fn check_width(xs: &Tensor, width: usize, what: &str) -> Result<()> {
    let found = xs.dim(candle_core::D::Minus1)?;
    if found != width {
        candle_core::bail!("{what}: expected rows of {width} values, found {found}");
    }
    Ok(())
}

/// Root-mean-square norm (Llama, Qwen2): `w * x / sqrt(mean(x^2) + eps)`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    /// The weight's values when it is f32 on the CPU, for the one-pass row kernel.
    host: Option<Vec<f32>>,
    eps: f64,
}

/// A tensor's values, read once at load time, when it is f32 on the CPU.
fn host_f32(t: &Tensor) -> Result<Option<Vec<f32>>> {
    if t.device().is_cpu() && t.dtype() == DType::F32 {
        Ok(Some(t.to_vec1()?))
    } else {
        Ok(None)
    }
}

impl RmsNorm {
    /// Loads `{prefix}.weight` of size `dim`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Self::from_weight(vb.get(dim, "weight")?, eps)
    }

    fn from_weight(weight: Tensor, eps: f64) -> Result<Self> {
        Ok(Self {
            host: host_f32(&weight)?,
            weight,
            eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if let (true, DType::F32, Some(w)) = (xs.device().is_cpu(), xs.dtype(), &self.host) {
            // One pass per row on the CPU, in the same order of operations.
            check_width(xs, w.len(), "RMS norm")?;
            let eps = self.eps as f32;
            let n = w.len() as f32;
            let fast = cpu_math::rows(xs, |x, y| {
                let var = cpu_math::lane_sum(x, |v| v * v) / n;
                let rstd = 1.0 / (var + eps).sqrt();
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                    *y = x * rstd * w;
                }
            })?;
            if let Some(ys) = fast {
                return Ok(ys);
            }
        }
        let dtype = xs.dtype();
        // transformers normalizes in f32, casts back, then multiplies by the weight in the
        // activation dtype; the order matters for f16/bf16 parity.
        let x = xs.to_dtype(DType::F32)?;
        let var = x.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let x = x.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        x.to_dtype(dtype)?
            .broadcast_mul(&self.weight.to_dtype(dtype)?)
    }
}

/// Layer norm with weight and bias (CLIP, SigLIP).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    /// Weight and bias values when they live on the CPU, for the one-pass row kernel.
    host: Option<(Vec<f32>, Vec<f32>)>,
    eps: f64,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias` of size `dim`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        // Kept in f32, the dtype the norm computes in, so no conversion happens per call.
        Self::from_parts(
            vb.get(dim, "weight")?.to_dtype(DType::F32)?,
            vb.get(dim, "bias")?.to_dtype(DType::F32)?,
            eps,
        )
    }

    fn from_parts(weight: Tensor, bias: Tensor, eps: f64) -> Result<Self> {
        Ok(Self {
            host: host_f32(&weight)?.zip(host_f32(&bias)?),
            weight,
            bias,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if let (true, DType::F32, Some((w, b))) = (xs.device().is_cpu(), xs.dtype(), &self.host) {
            // One pass per row on the CPU (the row stays in L1 for its three sweeps).
            check_width(xs, w.len(), "layer norm")?;
            let eps = self.eps as f32;
            let n = w.len() as f32;
            let fast = cpu_math::rows(xs, |x, y| {
                let mean = cpu_math::lane_sum(x, |v| v) / n;
                let var = cpu_math::lane_sum(x, |v| (v - mean) * (v - mean)) / n;
                let rstd = 1.0 / (var + eps).sqrt();
                for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                    *y = (x - mean) * rstd * w + b;
                }
            })?;
            if let Some(ys) = fast {
                return Ok(ys);
            }
        }
        let dtype = xs.dtype();
        let x = xs.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(candle_core::D::Minus1)?;
        let x = x.broadcast_sub(&mean)?;
        let var = x.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let x = x.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let x = x.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?;
        x.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// The CPU row kernels against the same formulas in candle tensor ops, on rows wider than
    /// a vector and with a ragged tail.
    #[test]
    fn row_kernels_match_tensor_ops() -> Result<()> {
        let dev = Device::Cpu;
        let dim = 37;
        let xs = (Tensor::randn(0f32, 2.0, (3, 5, dim), &dev)? + 0.7)?;
        let weight = Tensor::randn(1f32, 0.5, dim, &dev)?;
        let bias = Tensor::randn(0f32, 0.5, dim, &dev)?;
        let eps = 1e-6;

        let rms = RmsNorm::from_weight(weight.clone(), eps)?;
        let var = xs.sqr()?.mean_keepdim(D::Minus1)?;
        let want = xs
            .broadcast_div(&(var + eps)?.sqrt()?)?
            .broadcast_mul(&weight)?;
        let diff = (rms.forward(&xs)? - want)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "RMS norm differs by {diff}");

        let ln = LayerNorm::from_parts(weight.clone(), bias.clone(), eps)?;
        let centered = xs.broadcast_sub(&xs.mean_keepdim(D::Minus1)?)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let want = centered
            .broadcast_div(&(var + eps)?.sqrt()?)?
            .broadcast_mul(&weight)?
            .broadcast_add(&bias)?;
        let diff = (ln.forward(&xs)? - want)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "layer norm differs by {diff}");

        // A strided input takes the same path after a copy; a wrong width is an error.
        let t = xs.transpose(0, 1)?;
        let diff = (ln.forward(&t)? - ln.forward(&t.contiguous()?)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        let narrow = xs.narrow(2, 0, dim - 1)?;
        assert!(rms.forward(&narrow).is_err());
        assert!(ln.forward(&narrow).is_err());
        Ok(())
    }
}
