//! The generation loop: prefill, then one token at a time with the KV cache, streaming text
//! that never splits a UTF-8 character and holding back text that could start a stop string.

use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::pipeline::{Prepared, Vlm};
use crate::sampling::{self, Rng, SamplingParams};
use crate::{Error, Result};

/// Options of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Token choice (greedy by default).
    pub sampling: SamplingParams,
    /// Generation stops when the text contains one of these; the text is cut before it.
    pub stop_strings: Vec<String>,
    /// Keep going past end-of-sequence tokens (parity runs and benchmarks).
    pub ignore_eos: bool,
    /// Report this many alternatives' log-probabilities per token (`None`: no log-probs).
    pub logprobs: Option<usize>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            sampling: SamplingParams::default(),
            stop_strings: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

/// Log-probability of a generated token and of the best alternatives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    /// The generated token.
    pub token_id: u32,
    /// Its log-probability under the model (log-softmax of the raw logits).
    pub logprob: f32,
    /// The `k` most likely tokens as `(id, logprob)`, best first.
    pub top: Vec<(u32, f32)>,
}

/// One streamed token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    /// The token id.
    pub token_id: u32,
    /// Text that became final with this token (may be empty: a partial UTF-8 character, or text
    /// held back because it could begin a stop string).
    pub text: String,
    /// Log-probabilities, when requested.
    pub logprob: Option<TokenLogprob>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token was generated.
    Eos,
    /// A stop string appeared in the text.
    StopString,
    /// `max_new_tokens` was reached.
    Length,
    /// The streaming callback asked to stop.
    Cancelled,
}

/// Wall-clock time of each stage, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Loading the model (reported once, from [`Vlm::load_ms`]).
    pub load: f64,
    /// Vision tower + projector + embedding merge.
    pub vision: f64,
    /// The prompt forward pass up to the first token's logits.
    pub prefill: f64,
    /// All decode steps after the first token.
    pub decode: f64,
}

/// The result of a generation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    /// The generated text (special tokens skipped, cut before a stop string).
    pub text: String,
    /// The generated token ids (including a final EOS token, as transformers returns it).
    pub token_ids: Vec<u32>,
    /// Prompt length in tokens, image tokens included.
    pub prompt_tokens: usize,
    /// One entry per generated token, when requested.
    pub logprobs: Vec<TokenLogprob>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Stage timings.
    pub timings: Timings,
}

pub(crate) struct Generator<'a> {
    vlm: &'a Vlm,
    params: &'a GenerateParams,
}

impl<'a> Generator<'a> {
    pub(crate) fn new(vlm: &'a Vlm, params: &'a GenerateParams) -> Result<Self> {
        params.sampling.validate()?;
        if params.stop_strings.iter().any(String::is_empty) {
            return Err(Error::InvalidOption(
                "stop strings must not be empty".into(),
            ));
        }
        Ok(Self { vlm, params })
    }

    fn last_logits(&self, hidden: &Tensor) -> Result<Vec<f32>> {
        let s = hidden.dim(1)?;
        let last = hidden.narrow(1, s - 1, 1)?;
        Ok(self
            .vlm
            .model()
            .logits(&last)?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?)
    }

    pub(crate) fn run(
        &mut self,
        prepared: &Prepared,
        mut on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<Generation> {
        let vlm = self.vlm;
        let params = self.params;
        let model = vlm.model();
        let device = model.device();
        let mut timings = Timings {
            load: vlm.load_ms(),
            ..Timings::default()
        };

        let t = Instant::now();
        // The sequence first: a family may check placeholders against its media there, before
        // the vision tower runs.
        let mut sequence = vlm.new_sequence(prepared)?;
        let embeds = vlm.embed(prepared)?;
        device.synchronize()?;
        timings.vision = ms(t);

        let t = Instant::now();
        let n_prompt = prepared.input_ids.len();
        let hidden = model.prefill(sequence.as_mut(), &embeds)?;
        let logits = self.last_logits(&hidden)?;
        timings.prefill = ms(t);

        let t = Instant::now();
        let decoded = decode_loop(
            vlm.tokenizer(),
            vlm.eos_token_ids(),
            &prepared.input_ids,
            model.context_length(),
            logits,
            params,
            |token, _position| {
                let hidden = model.step(sequence.as_mut(), token)?;
                self.last_logits(&hidden)
            },
            &mut on_token,
        )?;
        device.synchronize()?;
        timings.decode = ms(t);
        Ok(decoded.into_generation(n_prompt, timings))
    }
}

/// What the decode loop produced.
pub(crate) struct Decoded {
    text: String,
    token_ids: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    finish: FinishReason,
}

impl Decoded {
    pub(crate) fn into_generation(self, prompt_tokens: usize, timings: Timings) -> Generation {
        Generation {
            text: self.text,
            token_ids: self.token_ids,
            prompt_tokens,
            logprobs: self.logprobs,
            finish_reason: self.finish,
            timings,
        }
    }
}

/// Samples from `logits` (the prompt's last position), then asks `next(token, position)` for
/// the logits after each new token, with the sampling, EOS, stop-string, cancellation and
/// streaming rules every model shares. Stops at `max_new_tokens` or the `context` length.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_loop(
    tokenizer: &vlm_prompt::Tokenizer,
    eos_token_ids: &[u32],
    prompt: &[u32],
    context: usize,
    mut logits: Vec<f32>,
    params: &GenerateParams,
    mut next: impl FnMut(u32, usize) -> Result<Vec<f32>>,
    on_token: &mut impl FnMut(&TokenEvent) -> bool,
) -> Result<Decoded> {
    let mut rng = Rng::new(params.sampling.seed);
    let mut seen: Vec<u32> = prompt.to_vec();
    let mut out = Output::new(tokenizer, &params.stop_strings);
    let mut token_ids = Vec::new();
    let mut logprobs = Vec::new();
    let mut finish = FinishReason::Length;
    for step in 0..params.max_new_tokens {
        let lp = params.logprobs.map(|_| sampling::log_softmax(&logits));
        sampling::apply_repetition_penalty(&mut logits, &seen, params.sampling.repetition_penalty);
        let token = sampling::sample(&logits, &params.sampling, &mut rng);
        token_ids.push(token);
        seen.push(token);
        let logprob = match (params.logprobs, lp) {
            (Some(k), Some(lp)) => Some(TokenLogprob {
                token_id: token,
                logprob: lp.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY),
                top: sampling::top_k_pairs(&lp, k),
            }),
            _ => None,
        };
        if let Some(l) = &logprob {
            logprobs.push(l.clone());
        }
        let is_eos = !params.ignore_eos && eos_token_ids.contains(&token);
        let (text, hit_stop) = if is_eos {
            (out.finish()?, false)
        } else {
            out.push(token)?
        };
        let keep_going = on_token(&TokenEvent {
            token_id: token,
            text,
            logprob,
        });
        if is_eos {
            finish = FinishReason::Eos;
            break;
        }
        if hit_stop {
            finish = FinishReason::StopString;
            break;
        }
        if !keep_going {
            finish = FinishReason::Cancelled;
            break;
        }
        if step + 1 == params.max_new_tokens {
            break;
        }
        let pos = prompt.len() + step;
        if pos >= context {
            break;
        }
        logits = next(token, pos)?;
    }
    if finish == FinishReason::Length || finish == FinishReason::Cancelled {
        let tail = out.finish()?;
        if !tail.is_empty() {
            on_token(&TokenEvent {
                token_id: token_ids.last().copied().unwrap_or(0),
                text: tail,
                logprob: None,
            });
        }
    }
    Ok(Decoded {
        text: out.text,
        token_ids,
        logprobs,
        finish,
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Incremental text with stop-string handling.
struct Output<'a> {
    stream: vlm_prompt::TokenStream<'a>,
    stops: &'a [String],
    /// Text emitted so far.
    text: String,
    /// Decoded text not yet emitted because it may be the start of a stop string.
    pending: String,
}

impl<'a> Output<'a> {
    fn new(tokenizer: &'a vlm_prompt::Tokenizer, stops: &'a [String]) -> Self {
        Self {
            stream: tokenizer.stream(true),
            stops,
            text: String::new(),
            pending: String::new(),
        }
    }

    /// Adds a token; returns the newly final text and whether a stop string was found.
    fn push(&mut self, token: u32) -> Result<(String, bool)> {
        if let Some(piece) = self.stream.push(token)? {
            self.pending.push_str(&piece);
        }
        Ok(self.release(false))
    }

    /// Flushes everything that is left.
    fn finish(&mut self) -> Result<String> {
        if let Some(piece) = self.stream.finish()? {
            self.pending.push_str(&piece);
        }
        Ok(self.release(true).0)
    }

    fn release(&mut self, all: bool) -> (String, bool) {
        // A stop string may span earlier text, so search the emitted tail plus pending text.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut start = self.text.len().saturating_sub(longest);
        while !self.text.is_char_boundary(start) {
            start -= 1;
        }
        let window = format!("{}{}", &self.text[start..], self.pending);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| window.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            // Cut at the stop string; what was already emitted stays emitted.
            let emitted_in_window = self.text.len() - start;
            let cut = at.saturating_sub(emitted_in_window).min(self.pending.len());
            let out: String = self.pending[..cut].to_string();
            self.text.push_str(&out);
            self.pending.clear();
            return (out, true);
        }
        let keep = if all {
            0
        } else {
            self.stops
                .iter()
                .map(|s| longest_suffix_prefix(&self.pending, s))
                .max()
                .unwrap_or(0)
        };
        let split = self.pending.len() - keep;
        let out: String = self.pending[..split].to_string();
        self.pending.drain(..split);
        self.text.push_str(&out);
        (out, false)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, at a char boundary.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            let at = text.len() - n;
            text.is_char_boundary(at) && stop.is_char_boundary(n) && stop.starts_with(&text[at..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::longest_suffix_prefix;

    #[test]
    fn holds_back_possible_stop_prefixes() {
        assert_eq!(longest_suffix_prefix("hello US", "USER:"), 2);
        assert_eq!(longest_suffix_prefix("hello", "USER:"), 0);
        assert_eq!(longest_suffix_prefix("a é", "é!"), 2);
    }
}
