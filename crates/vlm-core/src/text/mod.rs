//! Text decoders: token ids or embeddings in, logits out, with an explicit KV cache.

mod config;
mod decoder;
mod sequence;

pub use config::{DecoderConfig, TextConfig};
pub use decoder::{Decoder, QuantizeReport};
pub use sequence::{DecoderSequence, RopePositions};
