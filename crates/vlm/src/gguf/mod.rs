//! Text-only Llama-family models from GGUF files, llama.cpp's single-file format: weights, the
//! tokenizer and the chat template all come from the file.
//!
//! Every tensor is dequantized at load time (GGUF's block formats, whatever the file uses) into
//! the requested float dtype and run by the same [`Decoder`] as the vision-language models, so
//! the file's quantization affects only the values, never which kernels run. [`GgufOptions::quantization`]
//! then re-quantizes the decoder's linear layers (Q8_0 / Q4_K) with the kernels the rest of the
//! crate uses and tests. Two conversions are undone on the way in, as transformers does when it
//! reads a GGUF: llama.cpp's converter interleaves the rotary halves of the query and key
//! projections (its RoPE rotates adjacent pairs), and renames every tensor.
//!
//! ```no_run
//! use vlm::gguf::{GgufLlm, GgufOptions};
//! use vlm::{GenerateParams, Message};
//!
//! let llm = GgufLlm::load("SmolLM2-135M-Instruct.Q4_1.gguf", &GgufOptions::default())?;
//! let ids = llm.encode_chat(&[Message::text("user", "What is the capital of France?")])?;
//! let out = llm.generate(&ids, &GenerateParams::default(), |t| {
//!     print!("{}", t.text);
//!     true
//! })?;
//! println!("\n{} tokens", out.token_ids.len());
//! # Ok::<(), vlm::Error>(())
//! ```

mod meta;
mod tokenizer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::{json, Value as Json};

use meta::{gguf_error, Meta};
use tokenizer::tokenizer_json;
use vlm_core::nn::{Activation, Quantization, RopeScaling};
use vlm_core::text::{Decoder, DecoderConfig, QuantizeReport};
use vlm_prompt::{ChatTemplate, ContentPart, Message, SpecialTokens, TemplateContext, Tokenizer};

use crate::generate::{GenerateParams, Generation, Timings, TokenEvent};
use crate::{Error, Result};

/// How to load a GGUF model.
#[derive(Debug, Clone)]
pub struct GgufOptions {
    /// Where the model runs.
    pub device: Device,
    /// Float dtype the weights are dequantized to (default f32).
    pub dtype: DType,
    /// Re-quantize the decoder's linear layers after dequantizing (norms and embeddings stay in
    /// float).
    pub quantization: Option<Quantization>,
}

impl Default for GgufOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            quantization: None,
        }
    }
}

/// A Llama-architecture language model read from one GGUF file.
#[derive(Debug)]
pub struct GgufLlm {
    path: PathBuf,
    decoder: Decoder,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    special: SpecialTokens,
    eos: Vec<u32>,
    add_bos: Option<u32>,
    tensor_types: Vec<(String, usize)>,
    quantize_report: Option<QuantizeReport>,
    load_ms: f64,
}

/// llama.cpp stores the query/key rows of each head with the two rotary halves interleaved;
/// this puts them back in the rotate-half order of the Hugging Face layout.
fn unpermute_rotary(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let half = rows / heads / 2;
    w.reshape((heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

impl GgufLlm {
    /// Reads the file, dequantizes its tensors into `options.dtype` on `options.device`, builds
    /// the tokenizer and chat template from its metadata, and re-quantizes if asked.
    pub fn load(path: impl AsRef<Path>, options: &GgufOptions) -> Result<Self> {
        let start = Instant::now();
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let content = Content::read(&mut file).map_err(|e| gguf_error(path, e.to_string()))?;
        let meta = Meta {
            path,
            map: &content.metadata,
        };
        let arch = meta.string("general.architecture")?.unwrap_or("");
        if arch != "llama" {
            return Err(gguf_error(
                path,
                format!("general.architecture is `{arch}`; only `llama` is supported"),
            ));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = meta.usize(&key("embedding_length"))?;
        let heads = meta.usize(&key("attention.head_count"))?;
        let kv_heads = match meta.map.get(&key("attention.head_count_kv")) {
            Some(_) => meta.usize(&key("attention.head_count_kv"))?,
            None => heads,
        };
        if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(gguf_error(
                path,
                format!("inconsistent attention shape: width {hidden}, {heads} heads, {kv_heads} key/value heads"),
            ));
        }
        if meta.map.contains_key(&key("rope.scaling.type")) {
            return Err(gguf_error(
                path,
                "RoPE scaling in GGUF metadata is not supported",
            ));
        }
        let tokens = meta.strings("tokenizer.ggml.tokens")?.len();
        let has_head = content.tensor_infos.contains_key("output.weight");
        let cfg = DecoderConfig {
            vocab_size: tokens,
            hidden_size: hidden,
            intermediate_size: meta.usize(&key("feed_forward_length"))?,
            num_hidden_layers: meta.usize(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim: hidden / heads,
            hidden_act: Activation::Silu,
            max_position_embeddings: meta.usize(&key("context_length"))?,
            rms_norm_eps: meta.f64_or(&key("attention.layer_norm_rms_epsilon"), 1e-5)?,
            rope_theta: meta.f64_or(&key("rope.freq_base"), 10_000.0)?,
            rope_scaling: RopeScaling::Default,
            tie_word_embeddings: !has_head,
            qkv_bias: false,
            o_bias: false,
            mrope_section: None,
        };

        // Dequantize every tensor under its Hugging Face name.
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let mut type_counts: std::collections::BTreeMap<String, usize> = Default::default();
        for (name, info) in &content.tensor_infos {
            *type_counts
                .entry(format!("{:?}", info.ggml_dtype))
                .or_default() += 1;
            let Some(hf) = hf_name(name) else {
                // rope_freqs and other tables the decoder derives itself
                continue;
            };
            let q = content
                .tensor(&mut file, name, &Device::Cpu)
                .map_err(|e| gguf_error(path, format!("tensor `{name}`: {e}")))?;
            let mut t = q
                .dequantize(&Device::Cpu)
                .map_err(|e| gguf_error(path, format!("tensor `{name}`: {e}")))?;
            if name.ends_with(".attn_q.weight") {
                t = unpermute_rotary(&t, heads)?;
            } else if name.ends_with(".attn_k.weight") {
                t = unpermute_rotary(&t, kv_heads)?;
            }
            tensors.insert(hf, t.to_dtype(options.dtype)?.to_device(&options.device)?);
        }
        let vb = VarBuilder::from_tensors(tensors, options.dtype, &options.device);
        let mut decoder = Decoder::new(&cfg, vb.pp("model"), vb.pp("lm_head"))
            .map_err(|e| gguf_error(path, format!("building the decoder: {e}")))?;
        let quantize_report = options
            .quantization
            .map(|kind| decoder.quantize(kind))
            .transpose()?;

        let tokenizer =
            Tokenizer::from_json_bytes(tokenizer_json(&meta)?.to_string().as_bytes(), path)?;
        let name_of = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
        let bos = meta.token_id("tokenizer.ggml.bos_token_id")?;
        let eos = meta.token_id("tokenizer.ggml.eos_token_id")?;
        let special = SpecialTokens::from_config_json(
            &json!({
                "bos_token": name_of(bos),
                "eos_token": name_of(eos),
                "unk_token": name_of(meta.token_id("tokenizer.ggml.unknown_token_id")?),
                "pad_token": name_of(meta.token_id("tokenizer.ggml.padding_token_id")?),
            }),
            path,
        )?;
        let add_bos = match meta.map.get("tokenizer.ggml.add_bos_token") {
            Some(v) if v.to_bool().unwrap_or(false) => bos,
            _ => None,
        };
        let template = meta
            .string("tokenizer.chat_template")?
            .map(ChatTemplate::new)
            .transpose()?;
        Ok(Self {
            path: path.to_path_buf(),
            decoder,
            tokenizer,
            template,
            special,
            eos: eos.into_iter().collect(),
            add_bos,
            tensor_types: type_counts.into_iter().collect(),
            quantize_report,
            load_ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// The file this model was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The decoder (dequantized, and re-quantized if asked).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The tokenizer built from the file's metadata.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// End-of-sequence ids.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }

    /// How many tensors the file stores in each GGML type (e.g. `Q4_1: 210`).
    pub fn tensor_types(&self) -> &[(String, usize)] {
        &self.tensor_types
    }

    /// What re-quantization did, when [`GgufOptions::quantization`] was set.
    pub fn quantize_report(&self) -> Option<&QuantizeReport> {
        self.quantize_report.as_ref()
    }

    /// Milliseconds the load took.
    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    /// The conversation rendered with the file's chat template, ending with the prompt for the
    /// assistant's turn. Content goes to the template as a plain string, as text-only chats do in
    /// transformers; images and videos are an error (this is a text model).
    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        let template = self
            .template
            .as_ref()
            .ok_or_else(|| gguf_error(&self.path, "the file has no tokenizer.chat_template"))?;
        let mut list = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let mut text = String::new();
            for part in &m.content {
                match part {
                    ContentPart::Text(t) => text.push_str(t),
                    _ => {
                        return Err(Error::InvalidOption(format!(
                            "message {i} has an image or video; {} is a text-only model",
                            self.path.display()
                        )))
                    }
                }
            }
            list.push(json!({"role": m.role, "content": text}));
        }
        let context = TemplateContext::new(self.special.clone()).with_generation_prompt(true);
        Ok(template.render_json(&Json::Array(list), &context)?)
    }

    /// Token ids of the rendered conversation (the template writes any special tokens itself).
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.render_chat(messages)?;
        Ok(self.tokenizer.encode(&text, false)?)
    }

    /// Token ids of plain text, with BOS when the file asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.add_bos.into_iter().collect();
        ids.extend(self.tokenizer.encode(text, false)?);
        Ok(ids)
    }

    /// Logits `(ids.len(), vocab)` (f32) at every position of `ids`, from a fresh cache: what
    /// scoring a text or teacher-forcing an answer needs.
    pub fn sequence_logits(&self, ids: &[u32]) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(Error::InvalidOption("no tokens to score".into()));
        }
        let device = self.decoder.device();
        let input = Tensor::new(ids, device)?.unsqueeze(0)?;
        let positions = Tensor::arange(0u32, ids.len() as u32, device)?.unsqueeze(0)?;
        let mut cache = self.decoder.new_cache();
        let hidden =
            self.decoder
                .forward_embeds(&self.decoder.embed(&input)?, &positions, &mut cache)?;
        Ok(self
            .decoder
            .logits(&hidden)?
            .squeeze(0)?
            .to_dtype(DType::F32)?)
    }

    /// Last-position logits of a prompt (f32), from a fresh cache.
    pub fn prompt_logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut cache = self.decoder.new_cache();
        self.step(ids, 0, &mut cache)
    }

    fn step(
        &self,
        ids: &[u32],
        offset: usize,
        cache: &mut vlm_core::nn::KvCache,
    ) -> Result<Vec<f32>> {
        let device = self.decoder.device();
        let n = ids.len();
        let input = Tensor::new(ids, device)?.unsqueeze(0)?;
        let positions = Tensor::arange(offset as u32, (offset + n) as u32, device)?.unsqueeze(0)?;
        let emb = self.decoder.embed(&input)?;
        let hidden = self.decoder.forward_embeds(&emb, &positions, cache)?;
        let last = hidden.narrow(1, n - 1, 1)?;
        Ok(self
            .decoder
            .logits(&last)?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?)
    }

    /// Generates from prompt ids with the same sampling, stop and streaming rules as
    /// [`crate::Vlm::generate`]; `on_token` returns `false` to cancel.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<Generation> {
        params.sampling.validate()?;
        if prompt.is_empty() {
            return Err(Error::InvalidOption("the prompt has no tokens".into()));
        }
        let context = self.decoder.config().max_position_embeddings;
        if prompt.len() >= context {
            return Err(Error::PromptTooLong {
                prompt_tokens: prompt.len(),
                context,
            });
        }
        let device = self.decoder.device().clone();
        let mut timings = Timings {
            load: self.load_ms,
            ..Timings::default()
        };
        let t = Instant::now();
        let mut cache = self.decoder.new_cache();
        let logits = self.step(prompt, 0, &mut cache)?;
        device.synchronize()?;
        timings.prefill = t.elapsed().as_secs_f64() * 1e3;

        let t = Instant::now();
        let decoded = crate::generate::decode_loop(
            &self.tokenizer,
            &self.eos,
            prompt,
            context,
            logits,
            params,
            |token, pos| self.step(&[token], pos, &mut cache),
            &mut on_token,
        )?;
        device.synchronize()?;
        timings.decode = t.elapsed().as_secs_f64() * 1e3;
        Ok(decoded.into_generation(prompt.len(), timings))
    }
}

/// The Hugging Face name of a llama.cpp tensor, or `None` for tables the decoder derives.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, leaf) = rest.split_once('.')?;
    let leaf = match leaf {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{leaf}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotary_rows_return_to_rotate_half_order() -> candle_core::Result<()> {
        // One head of 4 rows stored interleaved as [r0, r2, r1, r3].
        let w = Tensor::new(&[[0f32], [2.], [1.], [3.]], &Device::Cpu)?;
        let back = unpermute_rotary(&w, 1)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(back, vec![0., 1., 2., 3.]);
        Ok(())
    }

    #[test]
    fn names_map_to_the_hugging_face_layout() {
        assert_eq!(
            hf_name("blk.12.ffn_down.weight").as_deref(),
            Some("model.layers.12.mlp.down_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
