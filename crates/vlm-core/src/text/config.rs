//! `text_config` of a VLM: Llama, Mistral and Qwen2 configs, normalized into one
//! [`DecoderConfig`].
//!
//! Mirrors `configuration_llama.py`, `configuration_mistral.py` and `configuration_qwen2.py`
//! (their defaults apply to missing keys, as published LLaVA configs omit most of them). Both
//! RoPE dialects are read: `rope_theta` + `rope_scaling` (published checkpoints) and
//! `rope_parameters` (what transformers 5 writes).

use serde::Deserialize;
use serde_json::Value;

use crate::nn::{Activation, RopeScaling};
use crate::{Error, Result};

/// The decoder family named by `text_config.model_type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "model_type")]
pub enum TextConfig {
    /// Llama / Vicuna (`llama`).
    #[serde(rename = "llama")]
    Llama(RawTextConfig<LlamaDefaults>),
    /// Mistral (`mistral`): the Llama architecture with other defaults.
    #[serde(rename = "mistral")]
    Mistral(RawTextConfig<MistralDefaults>),
    /// Qwen2 (`qwen2`): bias on the q/k/v projections.
    #[serde(rename = "qwen2")]
    Qwen2(RawTextConfig<Qwen2Defaults>),
    /// The Qwen2 decoder of Qwen2-VL / Qwen2.5-VL (`qwen2_vl_text`, `qwen2_5_vl_text`), with
    /// multimodal RoPE.
    #[serde(rename = "qwen2_vl_text", alias = "qwen2_5_vl_text")]
    Qwen2Vl(RawTextConfig<Qwen2VlDefaults>),
}

/// Per-family defaults, matching transformers' config classes.
pub trait Defaults {
    /// `vocab_size`, `hidden_size`, `intermediate_size`, `num_hidden_layers`, `num_attention_heads`.
    const SIZES: [usize; 5];
    /// `num_key_value_heads` (None = same as attention heads).
    const KV_HEADS: Option<usize>;
    /// `rms_norm_eps`.
    const RMS_EPS: f64;
    /// `max_position_embeddings`.
    const MAX_POS: usize;
    /// `rope_theta` when the config names none.
    const ROPE_THETA: f64 = 10000.0;
}

/// Llama defaults (`LlamaConfig()`).
#[derive(Debug, Clone, Copy)]
pub struct LlamaDefaults;
impl Defaults for LlamaDefaults {
    const SIZES: [usize; 5] = [32000, 4096, 11008, 32, 32];
    const KV_HEADS: Option<usize> = None;
    const RMS_EPS: f64 = 1e-6;
    const MAX_POS: usize = 2048;
}

/// Mistral defaults (`MistralConfig()`).
#[derive(Debug, Clone, Copy)]
pub struct MistralDefaults;
impl Defaults for MistralDefaults {
    const SIZES: [usize; 5] = [32000, 4096, 14336, 32, 32];
    const KV_HEADS: Option<usize> = Some(8);
    const RMS_EPS: f64 = 1e-6;
    const MAX_POS: usize = 4096 * 32;
}

/// Qwen2 defaults (`Qwen2Config()`).
#[derive(Debug, Clone, Copy)]
pub struct Qwen2Defaults;
impl Defaults for Qwen2Defaults {
    const SIZES: [usize; 5] = [151936, 4096, 22016, 32, 32];
    const KV_HEADS: Option<usize> = Some(32);
    const RMS_EPS: f64 = 1e-6;
    const MAX_POS: usize = 32768;
}

/// Qwen2-VL text defaults (`Qwen2VLTextConfig()`, same as `Qwen2_5_VLTextConfig()`).
#[derive(Debug, Clone, Copy)]
pub struct Qwen2VlDefaults;
impl Defaults for Qwen2VlDefaults {
    const SIZES: [usize; 5] = [152064, 8192, 29568, 80, 64];
    const KV_HEADS: Option<usize> = Some(8);
    const RMS_EPS: f64 = 1e-5;
    const MAX_POS: usize = 32768;
    const ROPE_THETA: f64 = 1_000_000.0;
}

/// The keys a decoder config may carry; missing ones take the family's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(bound = "")]
pub struct RawTextConfig<D> {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<Activation>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
    #[serde(skip)]
    _family: std::marker::PhantomData<D>,
}

/// Everything the decoder needs, with defaults resolved.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// Vocabulary size (rows of the embedding and of the head).
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Whether the LM head reuses the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Qwen2-VL's multimodal RoPE: how many frequencies the temporal, height and width
    /// positions drive (`mrope_section`). `None`: ordinary 1-D RoPE.
    pub mrope_section: Option<[usize; 3]>,
}

impl<D: Defaults> RawTextConfig<D> {
    fn resolve(&self, qwen2: bool) -> Result<DecoderConfig> {
        let [vocab, hidden, inter, layers, heads] = D::SIZES;
        let heads = self.num_attention_heads.unwrap_or(heads);
        let hidden = self.hidden_size.unwrap_or(hidden);
        if heads == 0 || !hidden.is_multiple_of(heads) && self.head_dim.is_none() {
            return Err(Error::Config(format!(
                "text_config: hidden_size {hidden} is not divisible by num_attention_heads {heads}"
            )));
        }
        let (rope_theta, rope_scaling, mrope_section) = resolve_rope(
            self.rope_theta.unwrap_or(D::ROPE_THETA),
            self.rope_scaling.as_ref(),
            self.rope_parameters.as_ref(),
        )?;
        let attention_bias = self.attention_bias.unwrap_or(false);
        Ok(DecoderConfig {
            vocab_size: self.vocab_size.unwrap_or(vocab),
            hidden_size: hidden,
            intermediate_size: self.intermediate_size.unwrap_or(inter),
            num_hidden_layers: self.num_hidden_layers.unwrap_or(layers),
            num_attention_heads: heads,
            num_key_value_heads: self.num_key_value_heads.or(D::KV_HEADS).unwrap_or(heads),
            head_dim: self.head_dim.unwrap_or(hidden / heads),
            hidden_act: self.hidden_act.unwrap_or(Activation::Silu),
            max_position_embeddings: self.max_position_embeddings.unwrap_or(D::MAX_POS),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(D::RMS_EPS),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: self.tie_word_embeddings,
            qkv_bias: qwen2 || attention_bias,
            o_bias: !qwen2 && attention_bias,
            mrope_section,
        })
    }
}

/// Reads RoPE settings from either dialect: `rope_parameters` (transformers 5, holds
/// `rope_theta` itself) or `rope_theta` + `rope_scaling` (older; `type` or `rope_type`).
///
/// Also returns `mrope_section` when present: Qwen2-VL's published configs say
/// `{"type": "mrope", "mrope_section": [..]}`, transformers 5 writes `rope_type: "default"` with
/// the same `mrope_section` key; both are plain RoPE frequencies split over three axes.
fn resolve_rope(
    theta: f64,
    scaling: Option<&Value>,
    parameters: Option<&Value>,
) -> Result<(f64, RopeScaling, Option<[usize; 3]>)> {
    let params = parameters.or(scaling).filter(|v| !v.is_null());
    let Some(Value::Object(map)) = params else {
        return Ok((theta, RopeScaling::Default, None));
    };
    let mrope_section = match map.get("mrope_section") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            serde_json::from_value::<[usize; 3]>(v.clone()).map_err(|e| {
                Error::Config(format!(
                    "mrope_section: expected three integers (temporal, height, width), \
                     found {v}: {e}"
                ))
            })?,
        ),
    };
    let mut map = map.clone();
    let theta = map
        .get("rope_theta")
        .and_then(Value::as_f64)
        .unwrap_or(theta);
    if !map.contains_key("rope_type") {
        let ty = map.get("type").cloned().unwrap_or(Value::from("default"));
        map.insert("rope_type".into(), ty);
    }
    let mut kind = map
        .get("rope_type")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    if kind == "mrope" {
        if mrope_section.is_none() {
            return Err(Error::Config(
                "rope type `mrope` needs `mrope_section` (three integers)".into(),
            ));
        }
        kind = "default".into();
        map.insert("rope_type".into(), Value::from("default"));
    }
    // Drop keys that belong to other scalings or to the theta itself.
    let keep: &[&str] = match kind.as_str() {
        "default" => &["rope_type"],
        "linear" => &["rope_type", "factor"],
        "llama3" => &[
            "rope_type",
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ],
        other => {
            return Err(Error::Config(format!(
                "unsupported rope type `{other}`; supported: default, linear, llama3"
            )))
        }
    };
    map.retain(|k, _| keep.contains(&k.as_str()));
    let scaling: RopeScaling = serde_json::from_value(Value::Object(map))
        .map_err(|e| Error::Config(format!("rope scaling `{kind}`: {e}")))?;
    Ok((theta, scaling, mrope_section))
}

impl TextConfig {
    /// Resolves defaults and dialects into a [`DecoderConfig`].
    pub fn resolve(&self) -> Result<DecoderConfig> {
        match self {
            Self::Llama(c) => c.resolve(false),
            Self::Mistral(c) => c.resolve(false),
            Self::Qwen2(c) => c.resolve(true),
            Self::Qwen2Vl(c) => c.resolve(true),
        }
    }

    /// The family name (`llama`, `mistral`, `qwen2`, `qwen2_vl_text`).
    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Llama(_) => "llama",
            Self::Mistral(_) => "mistral",
            Self::Qwen2(_) => "qwen2",
            Self::Qwen2Vl(_) => "qwen2_vl_text",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_rope_dialects_agree() -> Result<()> {
        let old = serde_json::json!({
            "model_type": "llama", "rope_theta": 500000.0,
            "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        });
        let new = serde_json::json!({
            "model_type": "llama",
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
        });
        let a: TextConfig =
            serde_json::from_value(old).map_err(|e| Error::Config(e.to_string()))?;
        let b: TextConfig =
            serde_json::from_value(new).map_err(|e| Error::Config(e.to_string()))?;
        let (a, b) = (a.resolve()?, b.resolve()?);
        assert_eq!(a.rope_theta, 500000.0);
        assert_eq!(a.rope_scaling, b.rope_scaling);
        assert!(matches!(a.rope_scaling, RopeScaling::Llama3 { .. }));
        Ok(())
    }

    #[test]
    fn unknown_rope_type_is_named() -> Result<()> {
        let cfg = serde_json::json!({"model_type": "qwen2", "rope_scaling": {"type": "yarn", "factor": 4.0}});
        let cfg: TextConfig =
            serde_json::from_value(cfg).map_err(|e| Error::Config(e.to_string()))?;
        match cfg.resolve() {
            Ok(_) => Err(Error::Config("a yarn rope config must be refused".into())),
            Err(e) => {
                let err = e.to_string();
                assert!(err.contains("yarn") && err.contains("llama3"), "{err}");
                Ok(())
            }
        }
    }
}
