//! The key/value cache, owned by the caller and passed into every decoder forward.
//!
//! Besides keys and values per layer it records the position of every cached token, so the
//! attention mask is derived from positions (`key_pos <= query_pos`) rather than from a single
//! scalar offset: sequences of different lengths (left-padded, or at different steps) can then
//! share a batch without changing the decoder API.

use candle_core::{Result, Tensor};

/// Keys and values of one decoder layer, `(batch, kv_heads, tokens, head_dim)`.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerCache {
    /// Appends new keys/values and returns the full keys/values to attend over.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match &self.kv {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
        };
        self.kv = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

/// The cache of a whole decoder for one batch of sequences.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Positions of the cached tokens, `(batch, tokens)`.
    positions: Option<Tensor>,
}

impl KvCache {
    /// An empty cache for a decoder with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
            positions: None,
        }
    }

    /// Number of tokens cached so far.
    pub fn len(&self) -> usize {
        self.positions
            .as_ref()
            .and_then(|p| p.dims().get(1).copied())
            .unwrap_or(0)
    }

    /// True when nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records the positions of tokens about to be appended and returns the positions of all
    /// keys (cached and new), `(batch, tokens)`.
    pub fn extend_positions(&mut self, new: &Tensor) -> Result<Tensor> {
        let all = match &self.positions {
            None => new.clone(),
            Some(p) => Tensor::cat(&[p, new], 1)?,
        };
        self.positions = Some(all.clone());
        Ok(all)
    }

    /// The cache of layer `i`.
    pub fn layer_mut(&mut self, i: usize) -> Option<&mut LayerCache> {
        self.layers.get_mut(i)
    }

    /// Drops everything cached.
    pub fn clear(&mut self) {
        let n = self.layers.len();
        *self = Self::new(n);
    }
}
