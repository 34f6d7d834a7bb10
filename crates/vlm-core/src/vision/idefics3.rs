//! The Idefics3 / SmolVLM vision transformer: SigLIP with variable-resolution position ids and
//! padded patches masked out of attention.
//!
//! Mirrors `Idefics3VisionEmbeddings` and `Idefics3VisionTransformer` in
//! `transformers/models/idefics3/modeling_idefics3.py`; config `Idefics3VisionConfig` in
//! `configuration_idefics3.py` (its defaults, not SigLIP's, apply to missing keys). The encoder
//! layers are SigLIP's ([`super::VitEncoder`]); weights live under `embeddings.patch_embedding`,
//! `embeddings.position_embedding`, `encoder.layers.{i}` and `post_layernorm`.
//!
//! Position ids follow the reference's arithmetic bit for bit: each tile's real (unpadded) patch
//! grid is spread over the `image_size / patch_size` position table by bucketizing fractional
//! coordinates (`i * (1 / n)` in `f32`) against the boundaries `torch.arange(1/N, 1, 1/N)`.
//! That `arange` is not `k / N`: torch's CPU kernel writes vectors of 8 floats, each vector
//! `float(base) + j * step` in `f64` from a `base` rounded to `f32` (see [`arange_boundaries`]).
//! For some `N` (e.g. 3, 6, 7, 14, 24, 27) the list gets an extra element equal to 1.0, which the
//! clamped coordinates never reach; for others (e.g. 19, 25, 29, 31) rounding makes even a full
//! tile map to other positions than the identity. Both are reproduced.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::encoder::{EncoderDims, VitEncoder};
use crate::nn::{Activation, LayerNorm, Linear};

fn d_hidden() -> usize {
    1152
}
fn d_intermediate() -> usize {
    3072
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    16
}
fn d_channels() -> usize {
    3
}
fn d_image() -> usize {
    224
}
fn d_patch() -> usize {
    32
}
fn d_act() -> Activation {
    Activation::GeluTanh
}
fn d_eps() -> f64 {
    1e-6
}

/// `Idefics3VisionConfig` (the `vision_config` of an Idefics3 / SmolVLM `config.json`). Keys the
/// tower does not use (`model_type`, which published SmolVLM configs spell `idefics3` or
/// `siglip_vision_model`, `max_image_size`, `size`, `use_base_siglip`, ...) are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Idefics3VisionConfig {
    /// Width of the hidden states.
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    /// Number of encoder layers.
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// Input channels.
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    /// Side of the square the position table covers (`image_size / patch_size` patches a side).
    #[serde(default = "d_image")]
    pub image_size: usize,
    /// Patch side.
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
}

impl Default for Idefics3VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: d_hidden(),
            intermediate_size: d_intermediate(),
            num_hidden_layers: d_layers(),
            num_attention_heads: d_heads(),
            num_channels: d_channels(),
            image_size: d_image(),
            patch_size: d_patch(),
            hidden_act: d_act(),
            layer_norm_eps: d_eps(),
        }
    }
}

impl Idefics3VisionConfig {
    /// Patches per side of the position table.
    pub fn num_patches_per_side(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    fn encoder_dims(&self) -> EncoderDims {
        EncoderDims {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            layer_norm_eps: self.layer_norm_eps,
            hidden_act: self.hidden_act,
        }
    }
}

/// `torch.arange(1 / n, 1.0, 1 / n)` (float32, CPU), element for element.
///
/// The length is `ceil((1 - 1/n) / (1/n))` in `f64`. Values come from torch's vectorized CPU
/// kernel: in chunks of two 8-float vectors, each vector starts at `base = f32(start + step *
/// idx)` and holds `f32(f64(base) + j * step)`; the tail after the last full pair of vectors is
/// `f32(start + step * idx)`. Checked against torch for every `n` up to 3000.
pub fn arange_boundaries(n: usize) -> Vec<f32> {
    const VEC: usize = 8;
    if n == 0 {
        return Vec::new();
    }
    let step = 1.0 / n as f64;
    let len = ((1.0 - step) / step).ceil().max(0.0) as usize;
    let mut out = Vec::with_capacity(len);
    let mut idx = 0;
    while idx + 2 * VEC <= len {
        for _ in 0..2 {
            let base = (step + step * idx as f64) as f32;
            out.extend((0..VEC).map(|j| (f64::from(base) + j as f64 * step) as f32));
            idx += VEC;
        }
    }
    out.extend((idx..len).map(|i| (step + step * i as f64) as f32));
    out
}

/// Bucket (row or column of the position table) of each of `max_patches` coordinates when the
/// tile has `real` unpadded patches along that axis: `bucketize(clamp(i * f32(1 / real),
/// max=1 - 1e-6), boundaries, right=True)`. Entries at or past `real` are padding and are not
/// used by the caller.
pub fn bucket_coords(real: usize, max_patches: usize, boundaries: &[f32]) -> Vec<usize> {
    // `1.0 / nb_patches` divides a Python float by an int64 tensor: a float32 division.
    let step = 1.0f32 / real as f32;
    let limit = 1.0f32 - 1e-6;
    (0..max_patches)
        .map(|i| {
            let frac = i as f32 * step;
            if frac.is_nan() {
                // 0 * inf when an axis has no real patch: torch.clamp keeps the NaN and
                // torch.bucketize puts it past the last boundary.
                return boundaries.len();
            }
            // right=True: the number of boundaries <= frac.
            boundaries.partition_point(|&b| b <= frac.min(limit))
        })
        .collect()
}

/// Position ids `(max_h * max_w,)` of one tile whose patch mask is `mask` (row-major
/// `max_h x max_w`, true = real patch), as `Idefics3VisionEmbeddings.forward` computes them:
/// real patches get `bucket_h * n + bucket_w`, padded ones 0. The real extent is counted along
/// the first column (rows) and the first row (columns), as the reference does.
pub fn tile_position_ids(mask: &[bool], max_h: usize, max_w: usize, n: usize) -> Vec<u32> {
    let boundaries = arange_boundaries(n);
    let rows = (0..max_h)
        .filter(|&y| mask.get(y * max_w) == Some(&true))
        .count();
    let cols = (0..max_w).filter(|&x| mask.get(x) == Some(&true)).count();
    let bh = bucket_coords(rows, max_h, &boundaries);
    let bw = bucket_coords(cols, max_w, &boundaries);
    let mut ids = Vec::with_capacity(max_h * max_w);
    for (y, by) in bh.iter().enumerate() {
        for (x, bx) in bw.iter().enumerate() {
            let real = mask.get(y * max_w + x) == Some(&true);
            ids.push(if real { (by * n + bx) as u32 } else { 0 });
        }
    }
    ids
}

/// `patch_attention_mask` from `pixel_attention_mask` `(b, H, W)` (any dtype, nonzero = real):
/// a `patch x patch` square is real when any of its pixels is (`unfold`, `sum > 0`); a trailing
/// partial patch is ignored. Returns `(b, H / patch, W / patch)` as `u8`.
pub fn patch_attention_mask(pixel_attention_mask: &Tensor, patch: usize) -> Result<Tensor> {
    let (b, h, w) = pixel_attention_mask.dims3()?;
    let (gh, gw) = (h / patch, w / patch);
    let m = pixel_attention_mask
        .ne(0f64)?
        .to_dtype(DType::U32)?
        .narrow(1, 0, gh * patch)?
        .narrow(2, 0, gw * patch)?
        .reshape((b, gh, patch, gw, patch))?
        .sum(4)?
        .sum(2)?;
    m.gt(0f64)
}

/// The Idefics3 vision transformer (`Idefics3VisionTransformer`).
#[derive(Debug, Clone)]
pub struct Idefics3VisionTransformer {
    patch_embedding: Linear,
    position_embedding: Tensor,
    encoder: VitEncoder,
    post_layernorm: LayerNorm,
    patch_size: usize,
    num_patches_per_side: usize,
}

impl Idefics3VisionTransformer {
    /// Loads the tower from `vb` (`embeddings.*`, `encoder.layers.*`, `post_layernorm.*`).
    pub fn new(cfg: &Idefics3VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (h, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let n = cfg.num_patches_per_side();
        if p == 0 || n == 0 || cfg.num_attention_heads == 0 || h % cfg.num_attention_heads != 0 {
            candle_core::bail!(
                "Idefics3 vision config: expected 0 < patch_size <= image_size and hidden_size \
                 divisible by num_attention_heads, found image_size {}, patch_size {p}, \
                 hidden_size {h}, num_attention_heads {}",
                cfg.image_size,
                cfg.num_attention_heads
            );
        }
        let emb = vb.pp("embeddings");
        let conv = emb.get((h, c, p, p), "patch_embedding.weight")?;
        let bias = emb.get(h, "patch_embedding.bias")?;
        Ok(Self {
            patch_embedding: Linear::from_weights(conv.reshape((h, c * p * p))?, Some(bias)),
            position_embedding: emb.get((n * n, h), "position_embedding.weight")?,
            encoder: VitEncoder::new(&cfg.encoder_dims(), vb.pp("encoder"))?,
            post_layernorm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("post_layernorm"))?,
            patch_size: p,
            num_patches_per_side: n,
        })
    }

    /// Patch side in pixels.
    pub fn patch_size(&self) -> usize {
        self.patch_size
    }

    /// The post-layernormed last hidden state `(b, patches, hidden)` of pixels `(b, C, H, W)`.
    ///
    /// `patch_attention_mask` `(b, H / patch, W / patch)` (nonzero = real patch) drives the
    /// position ids and masks padded patches out of attention as keys; `None` means every patch
    /// is real (the reference's default).
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        patch_attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let dtype = self.position_embedding.dtype();
        let device = self.position_embedding.device();
        let (b, _, h, w) = pixel_values.dims4()?;
        let (gh, gw) = (h / self.patch_size, w / self.patch_size);
        let mask: Vec<bool> = match patch_attention_mask {
            None => vec![true; b * gh * gw],
            Some(m) => {
                if m.dims() != [b, gh, gw] {
                    candle_core::bail!(
                        "Idefics3 vision tower: expected a patch mask of shape ({b}, {gh}, {gw}) \
                         for pixels {:?}, found {:?}",
                        pixel_values.dims(),
                        m.dims()
                    );
                }
                m.ne(0f64)?
                    .flatten_all()?
                    .to_vec1::<u8>()?
                    .into_iter()
                    .map(|v| v != 0)
                    .collect()
            }
        };
        let mut ids = Vec::with_capacity(b * gh * gw);
        for tile in mask.chunks(gh * gw) {
            ids.extend(tile_position_ids(tile, gh, gw, self.num_patches_per_side));
        }
        let table = (self.num_patches_per_side * self.num_patches_per_side) as u32;
        if let Some(bad) = ids.iter().find(|&&id| id >= table) {
            // Only a mask whose first row or column is padding while other patches are real
            // gets here (the reference fails on it too); processors pad at the bottom right.
            candle_core::bail!(
                "Idefics3 vision tower: position id {bad} is outside the {table}-entry table; \
                 the patch mask must be a top-left rectangle of real patches"
            );
        }
        let ids = Tensor::from_vec(ids, b * gh * gw, device)?;
        let positions = self
            .position_embedding
            .index_select(&ids, 0)?
            .reshape((b, gh * gw, ()))?;
        let patches = super::patchify(&pixel_values.to_dtype(dtype)?, self.patch_size)?;
        let xs = (self.patch_embedding.forward(&patches)? + positions)?;
        // Padded patches are hidden as keys with the dtype's most negative value (what
        // transformers' eager bidirectional mask adds); no mask at all when every patch is real.
        let attn_mask = if mask.iter().all(|&m| m) {
            None
        } else {
            let min = dtype_min(dtype);
            let values: Vec<f64> = mask.iter().map(|&m| if m { 0.0 } else { min }).collect();
            Some(Tensor::from_vec(values, (b, 1, 1, gh * gw), device)?.to_dtype(dtype)?)
        };
        let xs = self.encoder.forward_masked(xs, attn_mask.as_ref())?;
        self.post_layernorm.forward(&xs)
    }
}

/// `torch.finfo(dtype).min`, exactly representable in `dtype`.
fn dtype_min(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        // bfloat16's largest finite magnitude: 0x7f7f.
        DType::BF16 => -f64::from(f32::from_bits(0x7f7f_0000)),
        DType::F64 => f64::MIN,
        _ => f64::from(f32::MIN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_follow_torch_arange() {
        // Exact multiples: 1/4 steps.
        assert_eq!(arange_boundaries(4), vec![0.25, 0.5, 0.75]);
        // n = 6: torch's length computation gives six elements, the last exactly 1.0.
        let b6 = arange_boundaries(6);
        assert_eq!((b6.len(), b6[5]), (6, 1.0));
        assert_eq!(arange_boundaries(1), Vec::<f32>::new());
    }

    #[test]
    fn full_tiles_map_to_the_identity_for_common_sizes() {
        for n in [1usize, 2, 4, 8, 16, 26, 27, 32] {
            let boundaries = arange_boundaries(n);
            assert_eq!(
                bucket_coords(n, n, &boundaries),
                (0..n).collect::<Vec<_>>(),
                "{n}"
            );
        }
    }

    #[test]
    fn partial_tiles_spread_over_the_table() {
        // torch: a 6-patch table, 4 real rows of 6 -> [0, 1, 3, 4].
        let boundaries = arange_boundaries(6);
        assert_eq!(&bucket_coords(4, 6, &boundaries)[..4], &[0, 1, 3, 4]);
        assert_eq!(&bucket_coords(3, 6, &boundaries)[..3], &[0, 2, 4]);
        assert_eq!(&bucket_coords(2, 6, &boundaries)[..2], &[0, 3]);
        let mask = [true, true, false, true, true, false, false, false, false];
        assert_eq!(
            tile_position_ids(&mask, 3, 3, 6),
            vec![0, 3, 0, 18, 21, 0, 0, 0, 0]
        );
    }
}
