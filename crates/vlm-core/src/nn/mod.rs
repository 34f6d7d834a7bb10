//! Building blocks shared by every model: linear layers, norms, activations, rotary embeddings,
//! attention and the KV cache.

mod activation;
mod attention;
mod cpu_attention;
mod cpu_math;
mod gemv;
mod kv_cache;
mod linear;
mod norm;
mod qgemv;
mod rope;
pub(crate) mod sgemm;
mod varlen;

pub use activation::Activation;
pub use attention::{attention, attention_gqa, causal_mask_from_positions, repeat_kv};
pub use kv_cache::{KvCache, LayerCache};
pub use linear::{Linear, Quantization};
pub use norm::{LayerNorm, RmsNorm};
pub use rope::{RopeScaling, RotaryEmbedding};
pub use varlen::{varlen_attention, varlen_attention_qkv, VarlenPlan};
