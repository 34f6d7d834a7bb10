//! The key/value cache, owned by the caller and passed into every decoder forward.
//!
//! Besides keys and values per layer it records the position of every cached token, so the
//! attention mask is derived from positions (`key_pos <= query_pos`) rather than from a single
//! scalar offset: sequences of different lengths (left-padded, or at different steps) can then
//! share a batch without changing the decoder API.

use candle_core::{Result, Tensor};

/// Keys and values of one decoder layer, `(batch, kv_heads, tokens, head_dim)`.
///
/// Stored in buffers with spare room along the token axis that grow geometrically, so a
/// decoding step writes one token in place instead of copying the whole cache; what
/// [`LayerCache::append`] returns are views of the filled part (strided, which the attention
/// matmuls read without a copy).
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
    len: usize,
}

/// Smallest token capacity allocated, so short prompts do not regrow at every step.
const MIN_CAPACITY: usize = 256;

impl LayerCache {
    /// Appends new keys/values `(b, kv_heads, s, d)` and returns the full keys/values to
    /// attend over.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, h, s, d) = k.dims4()?;
        let needed = self.len + s;
        let capacity = self
            .kv
            .as_ref()
            .map(|(k, _)| k.dim(2))
            .transpose()?
            .unwrap_or(0);
        if needed > capacity {
            let new_cap = needed.max(capacity * 2).max(MIN_CAPACITY);
            let grow = |old: Option<&Tensor>, like: &Tensor| -> Result<Tensor> {
                let buf = Tensor::zeros((b, h, new_cap, d), like.dtype(), like.device())?;
                if let Some(old) = old {
                    if self.len > 0 {
                        buf.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    }
                }
                Ok(buf)
            };
            let old = self.kv.take();
            let nk = grow(old.as_ref().map(|(k, _)| k), k)?;
            let nv = grow(old.as_ref().map(|(_, v)| v), v)?;
            self.kv = Some((nk, nv));
        }
        let Some((kb, vb)) = &self.kv else {
            candle_core::bail!("KV cache buffers were not allocated");
        };
        kb.slice_set(&k.contiguous()?, 2, self.len)?;
        vb.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok((kb.narrow(2, 0, needed)?, vb.narrow(2, 0, needed)?))
    }

    /// Tokens cached in this layer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn growing_cache_returns_everything_appended() -> Result<()> {
        let dev = Device::Cpu;
        let mut cache = LayerCache::default();
        let mut all_k = Vec::new();
        // A prompt, then single tokens past the first capacity (256), then a chunk.
        for s in [200usize, 1, 1, 60, 1, 300] {
            let k = Tensor::randn(0f32, 1.0, (1, 2, s, 4), &dev)?;
            let v = (&k * 2.0)?;
            all_k.push(k.clone());
            let (ck, cv) = cache.append(&k, &v)?;
            let want = Tensor::cat(&all_k, 2)?;
            assert_eq!(ck.dims(), want.dims());
            let dk = (ck - &want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            let dv = (cv - (want * 2.0)?)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert_eq!((dk, dv), (0.0, 0.0));
        }
        assert_eq!(cache.len(), 563);
        Ok(())
    }
}
