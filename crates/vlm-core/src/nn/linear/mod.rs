//! A linear layer whose weight storage is an implementation detail.
//!
//! Model code only calls [`Linear::forward`]; the weight is held in a private enum, dense,
//! packed for our f32 GEMM (AVX-512 or AVX2), or quantized (candle's `QMatMul` over GGML
//! blocks), so quantizing at load time touches no model file. The products for each storage
//! are in `products`.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, DType, Device, Module, Result, Storage, Tensor};

use super::sgemm::{self, Epilogue, PackedF32};

mod products;
use super::Activation;
use candle_nn::VarBuilder;
#[cfg(test)]
use products::{candle_has_q8_0_gemm, WIDEN_BLOCK_ROWS};
use products::{dense_matmul, dequantized_matmul, packed_matmul, prefill_dequantized};

/// Weight quantization applied at load time (GGML block formats, as in llama.cpp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quantization {
    /// 8-bit weights in blocks of 32 with one f16 scale (8.5 bits per weight).
    Q8_0,
    /// 4-bit "k-quant" super-blocks of 256 (4.5 bits per weight).
    Q4K,
}

impl Quantization {
    fn ggml(self) -> GgmlDType {
        match self {
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4K => GgmlDType::Q4K,
        }
    }

    /// Weights per block: a layer's input width must be a multiple of it.
    pub fn block_size(self) -> usize {
        self.ggml().block_size()
    }

    /// The format a layer whose input width is off this one's block grid takes instead, if any.
    /// Q4_K's blocks are 256 wide, and models such as SmolLM2 (576) have most widths off that
    /// grid; like llama.cpp, which gives such tensors another type rather than leaving them in
    /// float, those layers take Q8_0 (llama.cpp picks Q5_0; Q8_0 is the format our kernels run
    /// fastest, and the more exact one).
    pub fn fallback(self) -> Option<Self> {
        match self {
            Self::Q8_0 => None,
            Self::Q4K => Some(Self::Q8_0),
        }
    }

    /// The format a layer of input width `in_features` takes under this quantization: this one,
    /// its [`fallback`](Self::fallback), or `None` (the layer stays in float).
    pub fn for_width(self, in_features: usize) -> Option<Self> {
        std::iter::successors(Some(self), |q| q.fallback())
            .find(|q| in_features.is_multiple_of(q.block_size()))
    }

    /// The name used on the command line (`q8_0`, `q4k`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4k",
        }
    }
}

impl std::str::FromStr for Quantization {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "q4k" | "q4_k" | "q4_k_m" => Ok(Self::Q4K),
            other => Err(format!(
                "unknown quantization `{other}`; expected q8_0 or q4k"
            )),
        }
    }
}

#[derive(Debug, Clone)]
enum Weight {
    /// A dense `(out_features, in_features)` matrix, as PyTorch stores it.
    Dense(Tensor),
    /// An f32 weight on an AVX-512 CPU, rearranged once for our GEMM (see `sgemm`).
    Packed(Arc<PackedF32>),
    /// GGML blocks along `in_features`; the matmul runs in f32.
    Quantized {
        matmul: QMatMul,
        blocks: Arc<QTensor>,
        out_features: usize,
        kind: Quantization,
    },
}

/// `y = x W^T + b`, over any number of leading dimensions.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    /// How many checkpoint layers were stacked into this one (see [`Linear::stacked`]).
    parts: usize,
}

impl Linear {
    /// Wraps an existing `(out, in)` weight and optional `(out,)` bias.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Dense(weight),
            bias,
            parts: 1,
        }
    }

    /// Dense layers reading the same input, stacked along their output features into one: its
    /// output is theirs concatenated in order. One matmul streams all the weights in one pass
    /// (one parallel region, one quantization of the activations for quantized weights), as the
    /// q/k/v and gate/up projections of a decoder layer want. Either every layer has a bias or
    /// none has.
    pub fn stacked(layers: &[Linear]) -> Result<Self> {
        let mut weights = Vec::with_capacity(layers.len());
        let mut packed = Vec::with_capacity(layers.len());
        let mut biases = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate() {
            match &layer.weight {
                Weight::Dense(w) => weights.push(w.clone()),
                Weight::Packed(p) => packed.push(p.as_ref()),
                Weight::Quantized { .. } => {
                    candle_core::bail!("stacking linear layers: layer {i} is already quantized")
                }
            }
            biases.extend(layer.bias.as_ref());
        }
        if weights.is_empty() && packed.is_empty() {
            candle_core::bail!("stacking linear layers: no layers given");
        }
        if !biases.is_empty() && biases.len() != layers.len() {
            candle_core::bail!(
                "stacking linear layers: {} of {} layers have a bias, expected all or none",
                biases.len(),
                layers.len()
            );
        }
        let bias = if biases.is_empty() {
            None
        } else {
            Some(Tensor::cat(&biases, 0)?)
        };
        let weight = if weights.is_empty() {
            Weight::Packed(Arc::new(PackedF32::stack(&packed)?))
        } else {
            // Mixed layouts (not built by our loaders): back to dense, in order.
            let dense = layers
                .iter()
                .map(|l| l.dense_weight())
                .collect::<Result<Vec<_>>>()?;
            Weight::Dense(Tensor::cat(&dense, 0)?)
        };
        Ok(Self {
            weight,
            bias,
            parts: layers.iter().map(|l| l.parts).sum(),
        })
    }

    /// The weight as a dense `(out, in)` tensor: a view for dense layers, a copy for packed ones.
    fn dense_weight(&self) -> Result<Tensor> {
        match &self.weight {
            Weight::Dense(w) => Ok(w.clone()),
            Weight::Packed(p) => p.to_tensor(),
            Weight::Quantized { .. } => {
                candle_core::bail!("expected a float weight, found a quantized one")
            }
        }
    }

    /// This layer with an f32 CPU weight packed for our AVX-512 GEMM, which every row count then
    /// takes (a decode step too); unchanged on other devices, dtypes and CPUs.
    pub fn packed(self) -> Result<Self> {
        let Weight::Dense(w) = &self.weight else {
            return Ok(self);
        };
        if !sgemm::available() || !matches!(w.device(), Device::Cpu) || w.dtype() != DType::F32 {
            return Ok(self);
        }
        let (out, inp) = w.dims2()?;
        if inp == 0 {
            return Ok(self);
        }
        let w = w.contiguous()?;
        let packed = {
            let (storage, layout) = w.storage_and_layout();
            let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
                return Ok(self);
            };
            let start = layout.start_offset();
            PackedF32::pack(&data[start..start + out * inp], out, inp)?
        };
        Ok(Self {
            weight: Weight::Packed(Arc::new(packed)),
            ..self
        })
    }

    /// The dtype of the weight's values (f32 for quantized weights, which compute in f32).
    pub fn dtype(&self) -> DType {
        match &self.weight {
            Weight::Dense(w) => w.dtype(),
            Weight::Packed(_) | Weight::Quantized { .. } => DType::F32,
        }
    }

    /// How many checkpoint layers this one holds: more than one once [`Linear::stacked`].
    pub fn parts(&self) -> usize {
        self.parts
    }

    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias` is true), packed for our GEMM
    /// where it runs (see [`Linear::packed`]).
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        Self::new_dense(in_dim, out_dim, bias, vb)?.packed()
    }

    /// [`Linear::new`] with the weight as stored (for a caller that stacks, quantizes or packs
    /// it next).
    pub fn new_dense(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self::from_weights(weight, bias))
    }

    /// The dense weight, `(out_features, in_features)`; `None` once quantized or packed.
    pub fn weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Dense(w) => Some(w),
            Weight::Packed(_) | Weight::Quantized { .. } => None,
        }
    }

    /// The quantization of the weight, if any.
    pub fn quantization(&self) -> Option<Quantization> {
        match &self.weight {
            Weight::Dense(_) | Weight::Packed(_) => None,
            Weight::Quantized { kind, .. } => Some(*kind),
        }
    }

    /// This layer with its weight quantized to `kind`, or to its fallback where the input width
    /// is not a multiple of `kind`'s block (see [`Quantization::for_width`]); the bias stays in
    /// float. A layer that fits neither is returned unchanged; [`Linear::quantization`] tells
    /// which happened.
    pub fn quantized(&self, kind: Quantization) -> Result<Self> {
        let w = match &self.weight {
            Weight::Dense(w) => w.clone(),
            Weight::Packed(p) => p.to_tensor()?,
            Weight::Quantized { .. } => return Ok(self.clone()),
        };
        let w = &w;
        let (out_features, in_features) = w.dims2()?;
        let Some(kind) = kind.for_width(in_features) else {
            return Ok(self.clone());
        };
        let q = Arc::new(QTensor::quantize(&w.to_dtype(DType::F32)?, kind.ggml())?);
        Ok(Self {
            weight: Weight::Quantized {
                matmul: QMatMul::from_arc(q.clone())?,
                blocks: q,
                out_features,
                kind,
            },
            bias: self.bias.clone(),
            parts: self.parts,
        })
    }
}

impl Linear {
    /// `act(x W^T + b)`: the values of `act.forward(&self.forward(xs)?)`, computed in one pass
    /// where the packed kernel can apply `act` to each block of outputs as it completes (f32
    /// inputs, an activation `cpu_math` implements), instead of a second pass over a fresh
    /// tensor as wide as the MLP.
    pub fn forward_act(&self, xs: &Tensor, act: Activation) -> Result<Tensor> {
        if let (Weight::Packed(_), DType::F32, Some(then)) =
            (&self.weight, xs.dtype(), act.epilogue())
        {
            return self.forward_then(xs, then);
        }
        act.forward(&self.forward(xs)?)
    }

    /// The product, bias, and (packed weights only) `then` on every output.
    fn forward_then(&self, xs: &Tensor, then: Epilogue) -> Result<Tensor> {
        let dims = xs.dims();
        let in_dim = dims.last().copied().unwrap_or(0);
        let rows = xs.elem_count() / in_dim.max(1);
        // Fold every leading dimension into one so the matmul is a single GEMM against W^T.
        let flat = xs.reshape((rows, in_dim))?;
        // The packed kernel adds the bias as it stores each output.
        let mut bias = self.bias.as_ref();
        let (ys, out_features) = match &self.weight {
            Weight::Dense(w) => (dense_matmul(&flat, w)?, w.dim(0)?),
            Weight::Packed(p) => (
                packed_matmul(&flat, p, bias.take(), then)?,
                p.out_features(),
            ),
            Weight::Quantized {
                matmul,
                blocks,
                out_features,
                kind,
            } => {
                let ys = match super::qgemv::matmul_t(&flat, blocks)? {
                    Some(ys) => ys,
                    None if prefill_dequantized(*kind, blocks, rows) => {
                        dequantized_matmul(&flat, blocks, bias.take())?
                    }
                    None => {
                        // candle's quantized kernels take f32 activations.
                        let ys = matmul.forward(&flat.to_dtype(DType::F32)?.contiguous()?)?;
                        ys.to_dtype(xs.dtype())?
                    }
                };
                (ys, *out_features)
            }
        };
        let ys = match bias {
            Some(b) => ys.broadcast_add(b)?,
            None => ys,
        };
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = out_features;
        }
        ys.reshape(out_dims)
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_then(xs, Epilogue::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn relative_error(a: &Tensor, b: &Tensor) -> Result<f32> {
        let num = (a - b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        let den = b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        Ok(num / den)
    }

    #[test]
    fn quantized_layers_track_the_dense_one() -> Result<()> {
        let dev = Device::Cpu;
        let w = (Tensor::randn(0f32, 1.0, (96, 512), &dev)? / 512f64.sqrt())?;
        let b = Tensor::randn(0f32, 1.0, 96, &dev)?;
        let dense = Linear::from_weights(w, Some(b));
        let x = Tensor::randn(0f32, 1.0, (2, 5, 512), &dev)?;
        let want = dense.forward(&x)?;
        // Relative L2 error of the outputs: ~0.4% for 8-bit blocks, a few % for 4-bit k-quants.
        for (kind, bound) in [(Quantization::Q8_0, 0.01), (Quantization::Q4K, 0.08)] {
            let q = dense.quantized(kind)?;
            assert_eq!(q.quantization(), Some(kind));
            let got = q.forward(&x)?;
            assert_eq!(got.dims(), want.dims());
            let err = relative_error(&got, &want)?;
            assert!(err < bound, "{kind:?}: relative error {err}");
        }
        Ok(())
    }

    #[test]
    fn q8_0_prefill_on_the_256_grid_takes_candles_int8_gemm_only_where_it_has_one() -> Result<()> {
        let dev = Device::Cpu;
        let (out, inp) = (48, 512);
        let w = (Tensor::randn(0f32, 1.0, (out, inp), &dev)? / (inp as f64).sqrt())?;
        let q = Linear::from_weights(w.clone(), None).quantized(Quantization::Q8_0)?;
        let Weight::Quantized { blocks, .. } = &q.weight else {
            panic!("{inp} is a multiple of 32: Q8_0 applies");
        };
        let int8 = candle_has_q8_0_gemm(out, inp);
        assert_eq!(prefill_dequantized(Quantization::Q8_0, blocks, 7), !int8);
        let x = Tensor::randn(0f32, 1.0, (7, inp), &dev)?;
        let got = q.forward(&x)?;
        let exact = x.matmul(&blocks.dequantize(&dev)?.t()?)?;
        let err = relative_error(&got, &exact)?;
        // candle's int8 GEMM also rounds the activations to 8 bits; the decoded product does not.
        let bound = if int8 { 1e-2 } else { 1e-6 };
        assert!(
            err < bound,
            "int8 GEMM {int8}: {err} vs the dequantized product"
        );
        Ok(())
    }

    #[test]
    fn q8_0_prefill_off_the_256_grid_is_the_dequantized_product() -> Result<()> {
        let dev = Device::Cpu;
        // The second weight spans two blocks of dequantized rows (WIDEN_BLOCK_ROWS).
        for (out, inp) in [(40, 576), (WIDEN_BLOCK_ROWS + 34, 96)] {
            let w = (Tensor::randn(0f32, 1.0, (out, inp), &dev)? / (inp as f64).sqrt())?;
            let q = Linear::from_weights(w.clone(), None).quantized(Quantization::Q8_0)?;
            let Weight::Quantized { blocks, .. } = &q.weight else {
                panic!("{inp} is a multiple of 32: Q8_0 applies");
            };
            assert!(prefill_dequantized(Quantization::Q8_0, blocks, 7));
            assert!(
                !candle_has_q8_0_gemm(out, inp),
                "{out}x{inp} is off the 256 grid"
            );
            // Decode steps never dequantize the whole weight.
            assert!(!prefill_dequantized(Quantization::Q8_0, blocks, 1));
            let x = Tensor::randn(0f32, 1.0, (7, inp), &dev)?;
            let got = q.forward(&x)?;
            assert_eq!(got.dims(), [7, out]);
            let exact = x.matmul(&blocks.dequantize(&dev)?.t()?)?;
            let err = relative_error(&got, &exact)?;
            assert!(err < 1e-6, "{out}x{inp} vs the dequantized product: {err}");
            let err = relative_error(&got, &x.matmul(&w.t()?)?)?;
            assert!(err < 0.01, "{out}x{inp} vs the dense layer: {err}");
        }
        Ok(())
    }

    #[test]
    fn packed_layers_match_dense_ones() -> Result<()> {
        let dev = Device::Cpu;
        let w = |out: usize| Tensor::randn(0f32, 1.0, (out, 64), &dev);
        let (wq, wk) = (w(64)?, w(20)?);
        let (bq, bk) = (
            Tensor::randn(0f32, 1.0, 64, &dev)?,
            Tensor::randn(0f32, 1.0, 20, &dev)?,
        );
        let dense = [
            Linear::from_weights(wq.clone(), Some(bq.clone())),
            Linear::from_weights(wk.clone(), Some(bk.clone())),
        ];
        let packed = [dense[0].clone().packed()?, dense[1].clone().packed()?];
        assert_eq!(
            packed[0].weight().is_none(),
            super::sgemm::available(),
            "f32 CPU weights pack exactly where the kernels run"
        );
        let x = Tensor::randn(0f32, 1.0, (2, 7, 64), &dev)?;
        let want = Linear::stacked(&dense)?.forward(&x)?;
        let got = Linear::stacked(&packed)?.forward(&x)?;
        assert_eq!(got.dims(), [2, 7, 84]);
        assert!(relative_error(&got, &want)? < 1e-6);
        // One row (a decode step) and quantizing a packed layer.
        let one = x.narrow(1, 0, 1)?;
        let diff = relative_error(&packed[1].forward(&one)?, &dense[1].forward(&one)?)?;
        assert!(diff < 1e-6, "{diff}");
        let q = packed[0].quantized(Quantization::Q8_0)?;
        assert_eq!(q.quantization(), Some(Quantization::Q8_0));
        let diff = relative_error(&q.forward(&x)?, &dense[0].forward(&x)?)?;
        assert!(diff < 0.02, "{diff}");
        // Activations fused into the packed kernel (or not: Gelu has no fused form) are the
        // unfused values exactly.
        for act in [
            Activation::QuickGelu,
            Activation::GeluTanh,
            Activation::Gelu,
        ] {
            let unfused = act.forward(&packed[0].forward(&x)?)?;
            let fused = packed[0].forward_act(&x, act)?;
            let diff = (fused - unfused)?.abs()?.flatten_all()?.max(0)?;
            assert_eq!(diff.to_scalar::<f32>()?, 0.0, "{act:?}");
        }
        Ok(())
    }

    #[test]
    fn widths_off_the_grid_fall_back_or_stay_dense() -> Result<()> {
        let dev = Device::Cpu;
        // Off Q4_K's 256 grid, on Q8_0's 32: the layer Q8_0 gives, value for value.
        let w = Tensor::randn(0f32, 1.0, (8, 64), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (3, 64), &dev)?;
        let dense = Linear::from_weights(w, None);
        let q = dense.quantized(Quantization::Q4K)?;
        assert_eq!(q.quantization(), Some(Quantization::Q8_0));
        let want = dense.quantized(Quantization::Q8_0)?.forward(&x)?;
        let got = q.forward(&x)?;
        assert_eq!(got.to_vec2::<f32>()?, want.to_vec2::<f32>()?);
        // Off both grids: float.
        for kind in [Quantization::Q4K, Quantization::Q8_0] {
            let w = Tensor::randn(0f32, 1.0, (8, 48), &dev)?;
            let q = Linear::from_weights(w, None).quantized(kind)?;
            assert_eq!(q.quantization(), None, "{kind:?}");
        }
        assert_eq!(Quantization::Q4K.for_width(512), Some(Quantization::Q4K));
        assert_eq!(Quantization::Q8_0.for_width(576), Some(Quantization::Q8_0));
        assert_eq!(Quantization::Q8_0.for_width(40), None);
        Ok(())
    }
}
