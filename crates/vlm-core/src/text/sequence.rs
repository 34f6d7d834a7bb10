//! The decoding state of one sequence on an attention [`Decoder`]: its KV cache, how many
//! tokens it holds, and where those tokens sit for the rotary embedding.
//!
//! A model family creates it for a prompt (it alone knows the prompt's positions: 1-D for
//! Llama-style decoders, 3-D M-RoPE with an offset for Qwen2-VL) and generation only advances it,
//! so nothing outside the family asks how positions are laid out.

use candle_core::{Device, Result, Tensor};

use super::Decoder;
use crate::nn::KvCache;

/// Where the tokens of a sequence sit for the rotary embedding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RopePositions {
    /// The token at sequence index `i` is at position `i` (1-D RoPE).
    Sequential,
    /// Multimodal RoPE: the prompt's positions per axis (temporal, height, width), one entry
    /// per prompt token, and the offset of every later token, which sits at `i + delta` on
    /// all three axes.
    Multimodal {
        /// Per-axis positions of the prompt.
        axes: [Vec<i64>; 3],
        /// `max position + 1 - prompt tokens`.
        delta: i64,
    },
}

/// The KV cache and positions of one sequence (see the module docs).
#[derive(Debug, Clone)]
pub struct DecoderSequence {
    cache: KvCache,
    positions: RopePositions,
    len: usize,
}

impl DecoderSequence {
    /// An empty sequence for `decoder` whose prompt will sit at `positions`.
    pub fn new(decoder: &Decoder, positions: RopePositions) -> Self {
        Self {
            cache: decoder.new_cache(),
            positions,
            len: 0,
        }
    }

    /// Tokens run so far (prompt and generated).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the prompt has run.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The positions of `n` new tokens at the end of the sequence: `(1, n)` for 1-D RoPE,
    /// `(3, 1, n)` for M-RoPE (the prompt's own positions for the prompt, `i + delta` after).
    fn next_positions(&self, n: usize, device: &Device) -> Result<Tensor> {
        let start = self.len;
        match &self.positions {
            RopePositions::Sequential => {
                Tensor::arange(start as u32, (start + n) as u32, device)?.unsqueeze(0)
            }
            RopePositions::Multimodal { axes, delta } => {
                let prompt = axes[0].len();
                let mut flat = Vec::with_capacity(3 * n);
                for axis in axes {
                    flat.extend((start..start + n).map(|i| match axis.get(i) {
                        Some(&p) if i < prompt => p,
                        _ => i as i64 + delta,
                    }));
                }
                Tensor::from_vec(flat, (3, 1, n), device)
            }
        }
    }
}

impl Decoder {
    /// Runs `embeds` `(1, s, hidden)` at the end of `sequence` and returns the final normed
    /// hidden states `(1, s, hidden)`. A multimodal sequence's first run must be its whole
    /// prompt: its positions were computed for exactly those tokens.
    pub fn run_sequence(&self, sequence: &mut DecoderSequence, embeds: &Tensor) -> Result<Tensor> {
        let s = embeds.dim(1)?;
        if let RopePositions::Multimodal { axes, .. } = &sequence.positions {
            if sequence.len == 0 && s != axes[0].len() {
                candle_core::bail!(
                    "a multimodal prompt of {} positions run with {s} embeddings",
                    axes[0].len()
                );
            }
        }
        let positions = sequence.next_positions(s, embeds.device())?;
        let hidden = self.forward_embeds(embeds, &positions, &mut sequence.cache)?;
        sequence.len += s;
        Ok(hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions_of(seq: &DecoderSequence, n: usize) -> Result<Vec<i64>> {
        seq.next_positions(n, &Device::Cpu)?
            .to_dtype(candle_core::DType::I64)?
            .flatten_all()?
            .to_vec1()
    }

    #[test]
    fn multimodal_positions_continue_at_the_offset() -> Result<()> {
        let axes = [vec![0, 1, 1, 3], vec![0, 1, 2, 3], vec![0, 2, 1, 3]];
        let mut seq = DecoderSequence {
            cache: KvCache::new(1),
            positions: RopePositions::Multimodal { axes, delta: 0 },
            len: 0,
        };
        assert_eq!(positions_of(&seq, 4)?, [0, 1, 1, 3, 0, 1, 2, 3, 0, 2, 1, 3]);
        seq.len = 4;
        seq.positions = match seq.positions {
            RopePositions::Multimodal { axes, .. } => RopePositions::Multimodal { axes, delta: -2 },
            other => other,
        };
        assert_eq!(positions_of(&seq, 1)?, [2, 2, 2]);
        let mut seq = DecoderSequence {
            cache: KvCache::new(1),
            positions: RopePositions::Sequential,
            len: 5,
        };
        assert_eq!(positions_of(&seq, 2)?, [5, 6]);
        seq.len = 0;
        assert_eq!(positions_of(&seq, 3)?, [0, 1, 2]);
        Ok(())
    }
}
