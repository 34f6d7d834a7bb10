//! Scaled dot-product attention with grouped-query heads and position-derived masks.

use candle_core::{DType, Result, Tensor};

/// Repeats each key/value head `n_rep` times: `(b, kv, t, d)` -> `(b, kv * n_rep, t, d)`.
pub fn repeat_kv(xs: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(xs);
    }
    let (b, kv, t, d) = xs.dims4()?;
    xs.unsqueeze(2)?
        .expand((b, kv, n_rep, t, d))?
        .reshape((b, kv * n_rep, t, d))
}

/// Additive mask `(batch, 1, q, k)`: 0 where `key_pos <= query_pos`, `-inf` elsewhere.
///
/// Returns `None` when no query can see a future key (one query per sequence at the newest
/// position), which skips the mask entirely on the decode hot path.
pub fn causal_mask_from_positions(
    query_pos: &Tensor,
    key_pos: &Tensor,
    dtype: DType,
) -> Result<Option<Tensor>> {
    let (_, q_len) = query_pos.dims2()?;
    let (_, k_len) = key_pos.dims2()?;
    if q_len == 1 && k_len >= 1 {
        // A single new token is always the newest one of its sequence in our use; every cached
        // key is at or before it.
        return Ok(None);
    }
    let q = query_pos.to_dtype(DType::I64)?.unsqueeze(2)?;
    let k = key_pos.to_dtype(DType::I64)?.unsqueeze(1)?;
    let visible = k.broadcast_le(&q)?;
    let zeros = Tensor::zeros(visible.shape(), dtype, visible.device())?;
    let neg =
        Tensor::full(f32::NEG_INFINITY, visible.shape(), visible.device())?.to_dtype(dtype)?;
    Ok(Some(visible.where_cond(&zeros, &neg)?.unsqueeze(1)?))
}

/// `softmax(q k^T * scale + mask) v` with the softmax in f32, as transformers' eager path does.
///
/// `q`: `(b, h, s, d)`, `k`/`v`: `(b, h, t, d)` (heads already repeated), `mask`: broadcastable to
/// `(b, h, s, t)`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let scores = (q.contiguous()?.matmul(&k.contiguous()?.t()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
    probs.matmul(&v.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn mask_follows_positions_not_offsets() -> Result<()> {
        let dev = Device::Cpu;
        // Two cached keys at 0,1 and two new queries at 2,3.
        let q = Tensor::new(&[[2u32, 3]], &dev)?;
        let k = Tensor::new(&[[0u32, 1, 2, 3]], &dev)?;
        let m = causal_mask_from_positions(&q, &k, DType::F32)?
            .ok_or_else(|| candle_core::Error::Msg("expected a mask".into()))?;
        let m = m.squeeze(0)?.squeeze(0)?.to_vec2::<f32>()?;
        assert_eq!(m[0], vec![0.0, 0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[1], vec![0.0, 0.0, 0.0, 0.0]);
        Ok(())
    }
}
