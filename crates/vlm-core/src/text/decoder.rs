//! The Llama-architecture decoder (Llama, Vicuna, Mistral, Qwen2).
//!
//! Mirrors `transformers/models/llama/modeling_llama.py` and `qwen2/modeling_qwen2.py`; the
//! only structural difference between them is the bias on q/k/v (`DecoderConfig::qkv_bias`).
//! Weights live under `embed_tokens`, `layers.{i}.{input_layernorm, self_attn.{q,k,v,o}_proj,
//! post_attention_layernorm, mlp.{gate,up,down}_proj}`, `norm`, and the head at `lm_head`.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::DecoderConfig;
use crate::nn::{
    attention_gqa, causal_mask_from_positions, Activation, KvCache, LayerCache, Linear,
    Quantization, RmsNorm, RotaryEmbedding,
};

#[derive(Debug, Clone)]
struct Attention {
    /// `q_proj`, `k_proj` and `v_proj` stacked along the output features: one pass over the
    /// input (one activation quantization, one parallel region) instead of three.
    qkv_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// With dense weights: [`Layer::new`] packs or quantizes them.
    fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        Ok(Self {
            qkv_proj: Linear::stacked(&[
                Linear::new_dense(h, nh * hd, cfg.qkv_bias, vb.pp("q_proj"))?,
                Linear::new_dense(h, nkv * hd, cfg.qkv_bias, vb.pp("k_proj"))?,
                Linear::new_dense(h, nkv * hd, cfg.qkv_bias, vb.pp("v_proj"))?,
            ])?,
            o_proj: Linear::new_dense(nh * hd, h, cfg.o_bias, vb.pp("o_proj"))?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let (b, s, _) = xs.dims3()?;
        let heads = |t: Tensor, n: usize| t.reshape((b, s, n, self.head_dim))?.transpose(1, 2);
        let qkv = self.qkv_proj.forward(xs)?;
        let (nq, nkv) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let q = heads(qkv.narrow(2, 0, nq)?.contiguous()?, self.num_heads)?;
        let k = heads(qkv.narrow(2, nq, nkv)?.contiguous()?, self.num_kv_heads)?;
        let v = heads(
            qkv.narrow(2, nq + nkv, nkv)?.contiguous()?,
            self.num_kv_heads,
        )?;
        let q = RotaryEmbedding::apply(&q, cos, sin)?;
        let k = RotaryEmbedding::apply(&k, cos, sin)?;
        let (k, v) = cache.append(&k, &v)?;
        let n_rep = self.num_heads / self.num_kv_heads;
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = attention_gqa(&q, &k, &v, n_rep, mask, scale)?;
        let out = out.transpose(1, 2)?.reshape((b, s, ()))?;
        self.o_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    /// `gate_proj` and `up_proj` stacked along the output features.
    gate_up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    /// With dense weights: [`Layer::new`] packs or quantizes them.
    fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_up_proj: Linear::stacked(&[
                Linear::new_dense(h, i, false, vb.pp("gate_proj"))?,
                Linear::new_dense(h, i, false, vb.pp("up_proj"))?,
            ])?,
            down_proj: Linear::new_dense(i, h, false, vb.pp("down_proj"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up_proj.forward(xs)?;
        self.down_proj.forward(&self.act.gated(&gate_up)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Layer {
    /// Loads a layer, then packs its linear layers for our GEMM or, with `quantization`,
    /// quantizes them straight from the dense weights (in parallel: the block quantizers are
    /// single-threaded per tensor). Done layer by layer, a quantized model never holds more
    /// than one layer in f32.
    fn new(
        cfg: &DecoderConfig,
        vb: VarBuilder,
        quantization: Option<Quantization>,
    ) -> Result<Self> {
        use rayon::prelude::*;
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let mut layer = Self {
            input_layernorm: RmsNorm::new(h, eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(h, eps, vb.pp("post_attention_layernorm"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        };
        let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
        [
            &mut a.qkv_proj,
            &mut a.o_proj,
            &mut m.gate_up_proj,
            &mut m.down_proj,
        ]
        .into_par_iter()
        .try_for_each(|l| -> Result<()> {
            *l = finish_linear(l.clone(), quantization)?;
            Ok(())
        })?;
        Ok(layer)
    }
}

/// A loaded dense layer, quantized to `quantization` or else (also when its width is off the
/// block grid) packed for our GEMM.
fn finish_linear(l: Linear, quantization: Option<Quantization>) -> Result<Linear> {
    let l = match quantization {
        Some(kind) => l.quantized(kind)?,
        None => l,
    };
    if l.quantization().is_some() {
        Ok(l)
    } else {
        l.packed()
    }
}

/// What [`Decoder::quantize`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuantizeReport {
    /// Checkpoint linear layers now quantized, to the format asked for or to its fallback
    /// ([`Quantization::for_width`](crate::nn::Quantization::for_width); stacked q/k/v and
    /// gate/up count one each).
    pub quantized: usize,
    /// Checkpoint linear layers left dense: input width a multiple of neither block size.
    pub kept_dense: usize,
}

/// A decoder-only language model with an explicit KV cache.
#[derive(Debug, Clone)]
pub struct Decoder {
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: RotaryEmbedding,
    cfg: DecoderConfig,
}

impl Decoder {
    /// Loads the decoder body from `vb` (`embed_tokens`, `layers`, `norm`) and the head from
    /// `head` (`weight`), which is not read when the embeddings are tied.
    pub fn new(cfg: &DecoderConfig, vb: VarBuilder, head: VarBuilder) -> Result<Self> {
        Self::load(cfg, vb, head, None)
    }

    /// [`Decoder::new`], with every linear layer (attention, MLP, head) quantized to
    /// `quantization` as it is loaded, as [`Decoder::quantize`] would after loading, but
    /// without ever holding the whole model in f32 (or packing weights only to unpack them).
    pub fn load(
        cfg: &DecoderConfig,
        vb: VarBuilder,
        head: VarBuilder,
        quantization: Option<Quantization>,
    ) -> Result<Self> {
        let embed_tokens = vb.get((cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")?;
        let lm_head = match (cfg.tie_word_embeddings, quantization) {
            // The embedding table stays in float for the lookup; the head is its quantized
            // copy.
            (true, Some(kind)) => {
                Linear::from_weights(embed_tokens.clone(), None).quantized(kind)?
            }
            (true, None) => Linear::from_weights(embed_tokens.clone(), None),
            (false, q) => finish_linear(
                Linear::new_dense(cfg.hidden_size, cfg.vocab_size, false, head)?,
                q,
            )?,
        };
        let vbl = vb.pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, vbl.pp(i), quantization))
            .collect::<Result<_>>()?;
        Ok(Self {
            rope: RotaryEmbedding::new(
                cfg.head_dim,
                cfg.rope_theta,
                &cfg.rope_scaling,
                embed_tokens.device(),
            )?,
            embed_tokens,
            layers,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?,
            lm_head,
            cfg: cfg.clone(),
        })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// The activation dtype (that of the weights).
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &candle_core::Device {
        self.embed_tokens.device()
    }

    /// A fresh cache sized for this decoder.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Token embeddings: `(b, s)` ids -> `(b, s, hidden)`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        self.embed_tokens
            .index_select(&flat, 0)?
            .reshape((b, s, self.cfg.hidden_size))
    }

    /// Runs the layers over `embeds` `(b, s, hidden)`, appending to `cache`, and returns the
    /// final normed hidden states `(b, s, hidden)`.
    ///
    /// `positions` are the rotary positions: `(b, s)` for 1-D RoPE, where they also define the
    /// causal mask (a key is visible when its position is not after the query's), or
    /// `(3, b, s)` temporal/height/width positions for a multimodal-RoPE decoder
    /// (`mrope_section` in the config). M-RoPE positions are not monotonic over the sequence
    /// (an image's tokens share rows and columns), so the mask then follows the order of the
    /// tokens in the cache instead, as the reference does.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let dtype = embeds.dtype();
        let (b, s, _) = embeds.dims3()?;
        let (mask_positions, (cos, sin)) = match (positions.rank(), self.cfg.mrope_section) {
            (2, None) => (positions.clone(), self.rope.cos_sin(positions, dtype)?),
            (3, Some(sections)) => {
                let start = cache.len() as u32;
                let order = Tensor::arange(start, start + s as u32, embeds.device())?
                    .unsqueeze(0)?
                    .repeat((b, 1))?;
                let cs = self.rope.cos_sin_multimodal(positions, &sections, dtype)?;
                (order, cs)
            }
            (_, sections) => candle_core::bail!(
                "decoder positions: expected {} but got a tensor of shape {:?}",
                if sections.is_some() {
                    "(3, batch, seq) multimodal positions"
                } else {
                    "(batch, seq) positions"
                },
                positions.dims()
            ),
        };
        let key_positions = cache.extend_positions(&mask_positions)?;
        let mask = causal_mask_from_positions(&mask_positions, &key_positions, dtype)?;
        let mut xs = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let Some(lc) = cache.layer_mut(i) else {
                candle_core::bail!("KV cache has fewer layers than the decoder ({i})");
            };
            let h = layer.input_layernorm.forward(&xs)?;
            let h = layer.self_attn.forward(&h, &cos, &sin, mask.as_ref(), lc)?;
            let xs2 = (xs + h)?;
            let h = layer
                .mlp
                .forward(&layer.post_attention_layernorm.forward(&xs2)?)?;
            xs = (xs2 + h)?;
        }
        self.norm.forward(&xs)
    }

    /// Quantizes every linear layer (attention and MLP projections, and the LM head) to
    /// `kind`; embeddings and norms stay in float. Returns how many layers were quantized and
    /// how many had to stay dense (input width not a multiple of the block size).
    pub fn quantize(&mut self, kind: Quantization) -> Result<QuantizeReport> {
        use rayon::prelude::*;
        let mut linears: Vec<&mut Linear> = Vec::with_capacity(self.layers.len() * 4 + 1);
        for layer in self.layers.iter_mut() {
            let a = &mut layer.self_attn;
            linears.extend([&mut a.qkv_proj, &mut a.o_proj]);
            let m = &mut layer.mlp;
            linears.extend([&mut m.gate_up_proj, &mut m.down_proj]);
        }
        linears.push(&mut self.lm_head);
        // Block quantization is single-threaded per tensor; the layers are independent.
        let quantized = linears
            .into_par_iter()
            .map(|l| -> Result<(bool, usize)> {
                *l = l.quantized(kind)?;
                Ok((l.quantization().is_some(), l.parts()))
            })
            .collect::<Result<Vec<(bool, usize)>>>()?;
        let mut report = QuantizeReport::default();
        for (q, parts) in quantized {
            if q {
                report.quantized += parts;
            } else {
                report.kept_dense += parts;
            }
        }
        Ok(report)
    }

    /// Projects hidden states to vocabulary logits.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    fn config(tie: bool, intermediate_size: usize) -> DecoderConfig {
        DecoderConfig {
            vocab_size: 40,
            hidden_size: 256,
            intermediate_size,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 64,
            hidden_act: Activation::Silu,
            max_position_embeddings: 64,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_scaling: crate::nn::RopeScaling::Default,
            tie_word_embeddings: tie,
            qkv_bias: true,
            o_bias: false,
            mrope_section: None,
        }
    }

    /// Random variance-preserving weights for `cfg`, learned from a build over a `VarMap`.
    fn weights(cfg: &DecoderConfig) -> Result<HashMap<String, Tensor>> {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        Decoder::new(cfg, vb.pp("model"), vb.pp("lm_head"))?;
        let vars = varmap
            .data()
            .lock()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut out = HashMap::new();
        for (name, var) in vars.iter() {
            let dims = var.dims();
            let t = match dims {
                [_] => (Tensor::randn(0f32, 0.1, dims, &dev)? + 1.0)?,
                _ => Tensor::randn(0f32, (dims[1] as f32).powf(-0.5), dims, &dev)?,
            };
            out.insert(name.clone(), t);
        }
        Ok(out)
    }

    #[test]
    fn quantizing_while_loading_equals_quantizing_after() -> Result<()> {
        let dev = Device::Cpu;
        // MLP widths off Q4_K's 256 grid: down_proj falls back to Q8_0 (320), or stays float
        // when off Q8_0's 32 grid too (336).
        for (tie, kind, width, kept) in [
            (false, Quantization::Q8_0, 512, 0),
            (true, Quantization::Q4K, 320, 0),
            (true, Quantization::Q4K, 336, 2),
        ] {
            let cfg = config(tie, width);
            let w = weights(&cfg)?;
            let vb = || VarBuilder::from_tensors(w.clone(), DType::F32, &dev);
            let mut after = Decoder::new(&cfg, vb().pp("model"), vb().pp("lm_head"))?;
            let report = after.quantize(kind)?;
            let during = Decoder::load(&cfg, vb().pp("model"), vb().pp("lm_head"), Some(kind))?;
            // Quantizing the quantized decoder again changes nothing and reports the same.
            let mut again = during.clone();
            assert_eq!(again.quantize(kind)?, report);
            // Per layer: q, k, v, o, gate, up, down; and the head.
            assert_eq!(
                (report.quantized, report.kept_dense),
                (2 * 7 + 1 - kept, kept)
            );
            // A layer left in float is packed for our GEMM like any other float layer.
            let down = &during.layers[0].mlp.down_proj;
            let want = (kept == 0).then(|| kind.for_width(width)).flatten();
            assert_eq!(down.quantization(), want, "down_proj at width {width}");
            if kept > 0 {
                assert_eq!(down.weight().is_none(), crate::nn::sgemm::available());
            }
            let ids = Tensor::new(&[[3u32, 7, 1, 30, 12]], &dev)?;
            let positions = Tensor::new(&[[0u32, 1, 2, 3, 4]], &dev)?;
            let logits = |d: &Decoder| -> Result<Vec<f32>> {
                let h = d.forward_embeds(&d.embed(&ids)?, &positions, &mut d.new_cache())?;
                d.logits(&h)?.flatten_all()?.to_vec1::<f32>()
            };
            assert_eq!(logits(&during)?, logits(&after)?, "tie {tie}, {kind:?}");
        }
        Ok(())
    }
}
