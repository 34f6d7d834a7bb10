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

/// Grouped-query attention without materializing repeated key/value heads: `q` `(b, h, s, d)`
/// with `h = kv * n_rep` (query head `j` uses key/value head `j / n_rep`, the order of
/// `repeat_kv`), `k`/`v` `(b, kv, t, d)` (may be strided views, e.g. of the KV cache), `mask`
/// `(b, 1, s, t)` or `None`. Same result as [`repeat_kv`] + [`attention`], with the n_rep query
/// heads of a group stacked as rows of one matmul against their shared keys.
pub fn attention_gqa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_rep: usize,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let kv = k.dim(1)?;
    if kv * n_rep != h {
        candle_core::bail!("attention_gqa: {h} query heads is not {kv} key/value heads x {n_rep}");
    }
    let dtype = q.dtype();
    if super::gemv::widen_on_cpu(q.device(), dtype) {
        let wide = |t: &Tensor| t.to_dtype(DType::F32);
        let mask = mask.map(wide).transpose()?;
        let out = attention_gqa(&wide(q)?, &wide(k)?, &wide(v)?, n_rep, mask.as_ref(), scale)?;
        return out.to_dtype(dtype);
    }
    if let Some(out) = super::cpu_attention::attention_gqa(q, k, v, n_rep, mask, scale)? {
        return Ok(out);
    }
    let q = q.contiguous()?.reshape((b, kv, n_rep * s, d))?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(m) if n_rep > 1 => scores.broadcast_add(&m.repeat((1, 1, n_rep, 1))?)?,
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
    probs.matmul(v)?.reshape((b, h, s, d))
}

/// `softmax(q k^T * scale + mask) v` with the softmax in f32, as transformers' eager path does.
///
/// On CPU, bf16/f16 inputs are computed in f32 (candle's reduced-precision CPU matmul is slow) and
/// the output is rounded back.
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
    if super::gemv::widen_on_cpu(q.device(), dtype) {
        let wide = |t: &Tensor| t.to_dtype(DType::F32);
        let mask = mask.map(wide).transpose()?;
        return attention(&wide(q)?, &wide(k)?, &wide(v)?, mask.as_ref(), scale)?.to_dtype(dtype);
    }
    // The fused CPU kernel takes no mask or a `(b, 1, s, t)` one; other shapes stay below.
    if let Some(out) = super::cpu_attention::attention_gqa(q, k, v, 1, mask, scale)? {
        return Ok(out);
    }
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
    fn gqa_matches_repeated_heads_with_strided_kv() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 6, 3, 8), &dev)?;
        // keys/values as strided views of a larger buffer, like the KV cache returns
        let kbuf = Tensor::randn(0f32, 1.0, (1, 2, 10, 8), &dev)?;
        let vbuf = Tensor::randn(0f32, 1.0, (1, 2, 10, 8), &dev)?;
        let (k, v) = (kbuf.narrow(2, 0, 5)?, vbuf.narrow(2, 0, 5)?);
        let qp = Tensor::new(&[[2u32, 3, 4]], &dev)?;
        let kp = Tensor::new(&[[0u32, 1, 2, 3, 4]], &dev)?;
        let mask = causal_mask_from_positions(&qp, &kp, DType::F32)?;
        let want = attention(
            &q,
            &repeat_kv(k.contiguous()?, 3)?,
            &repeat_kv(v.contiguous()?, 3)?,
            mask.as_ref(),
            0.35,
        )?;
        let got = attention_gqa(&q, &k, &v, 3, mask.as_ref(), 0.35)?;
        let diff = (want - got)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        Ok(())
    }

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
