//! Idefics3 (SmolVLM-256M/500M/2.2B-Instruct, Idefics3-8B): tiles through a SigLIP tower, a
//! pixel-shuffle connector, and a Llama decoder.
//!
//! Mirrors `transformers/models/idefics3/{configuration_idefics3,modeling_idefics3}.py`
//! (`Idefics3ForConditionalGeneration`, transformers 5.23). Weight names are the ones
//! transformers uses in memory **and** the ones the published SmolVLM / Idefics3 repositories
//! ship (transformers 5.23 has no conversion rule for this architecture, and its
//! `save_pretrained` writes them unchanged): `model.vision_model.*`,
//! `model.connector.modality_projection.proj.weight`, `model.text_model.*`, `lm_head.weight`.
//!
//! `config.json` dialects: the published one (transformers 4.4x: `text_config` with `rope_theta`,
//! `torch_dtype`, extra keys such as `pixel_shuffle_factor`; `vision_config` with `model_type`
//! `idefics3` and keys the tower ignores) and transformers 5 (`rope_parameters`, `dtype`,
//! `vision_config.model_type: idefics3_vision`) both parse. As in transformers 5, the LM head is
//! tied only by the **top-level** `tie_word_embeddings` (default false); the one inside
//! `text_config` is ignored.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::interface::{media_of, MediaInputs, VisionLanguageModel};
use crate::nn::{Linear, Quantization};
use crate::text::{Decoder, TextConfig};
use crate::vision::idefics3::patch_attention_mask;
use crate::vision::{Idefics3VisionConfig, Idefics3VisionTransformer};
use crate::{Error, Result};

fn d_image_token() -> u32 {
    128257
}
fn d_scale() -> usize {
    2
}

/// `text_config` without a `model_type` is a Llama config (`SubConfigSpec(model_type="llama")`);
/// `null` is no text config.
fn text_config<'de, D: Deserializer<'de>>(
    de: D,
) -> std::result::Result<Option<TextConfig>, D::Error> {
    let mut value = Value::deserialize(de)?;
    match &mut value {
        Value::Null => return Ok(None),
        Value::Object(map) => {
            map.entry("model_type")
                .or_insert_with(|| Value::from("llama"));
        }
        _ => {}
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `Idefics3Config` (`model_type: idefics3`), both dialects.
#[derive(Debug, Clone, Deserialize)]
pub struct Idefics3Config {
    /// The vision tower.
    #[serde(default)]
    pub vision_config: Idefics3VisionConfig,
    /// The decoder (Llama for every published checkpoint); see [`Self::text`] for a missing one.
    #[serde(default, deserialize_with = "text_config")]
    pub text_config: Option<TextConfig>,
    /// Id of the `<image>` placeholder token.
    #[serde(default = "d_image_token")]
    pub image_token_id: u32,
    /// Side of the square of patches the connector folds into one token.
    #[serde(default = "d_scale")]
    pub scale_factor: usize,
    /// Tie the LM head to the token embeddings (top level only, as transformers 5 reads it).
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

impl Idefics3Config {
    /// Parses a `config.json` value.
    pub fn from_json(json: &Value) -> Result<Self> {
        Self::deserialize(json).map_err(|e| Error::Config(format!("idefics3 config.json: {e}")))
    }

    /// The decoder config; without `text_config`, `LlamaConfig(rms_norm_eps=1e-5)` (the
    /// reference's `sub_configs_defaults`).
    pub fn text(&self) -> Result<TextConfig> {
        match &self.text_config {
            Some(t) => Ok(t.clone()),
            None => serde_json::from_value(serde_json::json!({
                "model_type": "llama", "rms_norm_eps": 1e-5
            }))
            .map_err(|e| Error::Config(format!("default idefics3 text_config: {e}"))),
        }
    }

    /// Placeholder tokens (= connector rows) per tile:
    /// `int((image_size // patch_size) ** 2 / scale_factor ** 2)`.
    pub fn image_seq_len(&self) -> usize {
        let n = self.vision_config.num_patches_per_side();
        (n * n) / (self.scale_factor * self.scale_factor).max(1)
    }
}

/// `Idefics3Connector`: pixel shuffle by `scale_factor`, then `modality_projection.proj`
/// (a linear layer without bias).
#[derive(Debug, Clone)]
pub struct Idefics3Connector {
    proj: Linear,
    scale_factor: usize,
}

impl Idefics3Connector {
    /// Loads `modality_projection.proj.weight` `(text_hidden, vision_hidden * scale^2)`.
    pub fn new(
        vision_hidden: usize,
        text_hidden: usize,
        scale_factor: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let in_dim = vision_hidden * scale_factor * scale_factor;
        Ok(Self {
            proj: Linear::new(
                in_dim,
                text_hidden,
                false,
                vb.pp("modality_projection").pp("proj"),
            )?,
            scale_factor,
        })
    }

    /// `Idefics3Connector.pixel_shuffle`: `(b, seq, d)` with `seq = side^2` patches in row-major
    /// order into `(b, seq / s^2, d * s^2)`. Output row `r * (side / s) + c` concatenates the
    /// `s x s` block of patches at rows `r * s ..` and columns `c * s ..`, row by row.
    pub fn pixel_shuffle(xs: &Tensor, scale_factor: usize) -> Result<Tensor> {
        let (b, seq, d) = xs.dims3()?;
        let s = scale_factor;
        let side = (seq as f64).sqrt() as usize;
        if s == 0 || side * side != seq || !side.is_multiple_of(s) {
            return Err(Error::Shape(format!(
                "pixel shuffle: expected a square grid of patches whose side is a multiple of \
                 scale_factor {s}, found {seq} patches"
            )));
        }
        Ok(xs
            .reshape((b, side, side / s, d * s))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, side / s, side / s, d * s * s))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, seq / (s * s), d * s * s))?)
    }

    /// Pixel shuffle then projection: `(b, seq, vision_hidden)` -> `(b, seq / s^2, text_hidden)`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self
            .proj
            .forward(&Self::pixel_shuffle(xs, self.scale_factor)?)?)
    }
}

/// `Idefics3ForConditionalGeneration`.
#[derive(Debug, Clone)]
pub struct Idefics3 {
    vision: Idefics3VisionTransformer,
    connector: Idefics3Connector,
    decoder: Decoder,
    image_token_id: u32,
    image_seq_len: usize,
    patch_size: usize,
}

impl Idefics3 {
    /// Builds the model from weights named as transformers names them, rooted at `vb`
    /// (`model.vision_model`, `model.connector`, `model.text_model`, `lm_head`).
    /// `quantization`, if any, applies to the language model's linear layers as they load
    /// (see [`Decoder::load`]).
    pub fn new(
        cfg: &Idefics3Config,
        vb: VarBuilder,
        quantization: Option<Quantization>,
    ) -> Result<Self> {
        let mut text = cfg.text()?.resolve()?;
        text.tie_word_embeddings = cfg.tie_word_embeddings;
        if cfg.scale_factor == 0
            || !cfg
                .vision_config
                .num_patches_per_side()
                .is_multiple_of(cfg.scale_factor)
        {
            return Err(Error::Config(format!(
                "scale_factor {} must divide the {} patches per side of the vision tower \
                 (image_size {} / patch_size {})",
                cfg.scale_factor,
                cfg.vision_config.num_patches_per_side(),
                cfg.vision_config.image_size,
                cfg.vision_config.patch_size
            )));
        }
        let model = vb.pp("model");
        Ok(Self {
            vision: Idefics3VisionTransformer::new(&cfg.vision_config, model.pp("vision_model"))?,
            connector: Idefics3Connector::new(
                cfg.vision_config.hidden_size,
                text.hidden_size,
                cfg.scale_factor,
                model.pp("connector"),
            )?,
            decoder: Decoder::load(
                &text,
                model.pp("text_model"),
                vb.pp("lm_head"),
                quantization,
            )?,
            image_token_id: cfg.image_token_id,
            image_seq_len: cfg.image_seq_len(),
            patch_size: cfg.vision_config.patch_size,
        })
    }

    /// The vision tower.
    pub fn vision_model(&self) -> &Idefics3VisionTransformer {
        &self.vision
    }

    /// The connector.
    pub fn connector(&self) -> &Idefics3Connector {
        &self.connector
    }

    /// Placeholder tokens (and feature rows) per tile of `image_size` pixels.
    pub fn image_seq_len(&self) -> usize {
        self.image_seq_len
    }

    /// Indices of the tiles that are not entirely 0.0, as `get_image_features` keeps them (the
    /// processor's padding tiles are all zeros; a real tile never is, since normalization maps
    /// black to -1).
    pub fn real_tiles(pixel_values: &Tensor) -> Result<Vec<u32>> {
        let n = pixel_values.dim(0)?;
        let nonzero = pixel_values
            .ne(0f64)?
            .to_dtype(DType::U32)?
            .reshape((n, ()))?
            .sum(1)?
            .to_vec1::<u32>()?;
        Ok((0..n as u32)
            .filter(|&i| nonzero.get(i as usize).is_some_and(|&c| c > 0))
            .collect())
    }

    /// The vision tower's output `(real_tiles, patches, vision_hidden)` for tiles
    /// `(n, 3, H, W)` (a processor batch flattened over samples and tiles) and their
    /// `pixel_attention_mask` `(n, H, W)` (`None`: every pixel is real).
    ///
    /// As `Idefics3Model.get_image_features` does, tiles whose values are all 0.0 (padding) are
    /// dropped first, and the patch mask is derived from the pixel mask (a patch is real when any
    /// of its pixels is).
    pub fn vision_features(
        &self,
        pixel_values: &Tensor,
        pixel_attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (n, _, h, w) = pixel_values.dims4()?;
        let dtype = self.decoder.dtype();
        // The reference casts to the model dtype before looking for padding tiles.
        let pixel_values = pixel_values.to_dtype(dtype)?;
        let keep = Self::real_tiles(&pixel_values)?;
        if keep.is_empty() {
            return Err(Error::Shape(format!(
                "all {n} tiles are padding (all zeros); there is no image to encode"
            )));
        }
        let index = Tensor::new(keep.as_slice(), pixel_values.device())?;
        let subset = |t: &Tensor| -> Result<Tensor> {
            Ok(if keep.len() == n {
                t.clone()
            } else {
                t.index_select(&index, 0)?
            })
        };
        let patch_mask = match pixel_attention_mask {
            None => None,
            Some(m) => {
                if m.dims() != [n, h, w] {
                    return Err(Error::Shape(format!(
                        "pixel_attention_mask: expected ({n}, {h}, {w}) for pixel values {:?}, \
                         found {:?}",
                        pixel_values.dims(),
                        m.dims()
                    )));
                }
                Some(patch_attention_mask(&subset(m)?, self.patch_size)?)
            }
        };
        Ok(self
            .vision
            .forward(&subset(&pixel_values)?, patch_mask.as_ref())?)
    }

    /// Connector output for the real tiles, flattened in placeholder order:
    /// `(real_tiles * image_seq_len, text_hidden)`.
    pub fn image_features(
        &self,
        pixel_values: &Tensor,
        pixel_attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let states = self.vision_features(pixel_values, pixel_attention_mask)?;
        let features = self.connector.forward(&states)?;
        let (t, k, d) = features.dims3()?;
        Ok(features.reshape((t * k, d))?)
    }

    /// Embeds `ids` `(s,)` into `(1, s, hidden)` and splices `image_features` (rows in
    /// placeholder order, from [`Self::image_features`]) in at the `<image>` positions. The
    /// number of placeholders must equal the number of feature rows
    /// ([`Error::ImageTokenMismatch`] otherwise, before anything is merged): a prompt expanded
    /// with another `image_seq_len` or grid than the one the tiles produced fails here.
    pub fn embed_with_images(
        &self,
        ids: &[u32],
        image_features: Option<&Tensor>,
    ) -> Result<Tensor> {
        let device = self.decoder.device();
        let safe: Vec<u32> = ids
            .iter()
            .map(|&t| if t == self.image_token_id { 0 } else { t })
            .collect();
        let t = Tensor::from_vec(safe, (1, ids.len()), device)?;
        let embeds = self.decoder.embed(&t)?;
        let features = match image_features {
            Some(f) => f.clone(),
            None => Tensor::zeros((0, embeds.dim(2)?), embeds.dtype(), device)?,
        };
        super::merge_image_features(ids, self.image_token_id, &embeds, &features)
    }
}

/// The images of one Idefics3 prompt, as its processor prepares them.
#[derive(Debug, Clone, Default)]
pub struct Idefics3Images {
    /// Every tile of every image (global view last), `(tiles, 3, h, w)`; `None` without images.
    pub pixel_values: Option<Tensor>,
    /// Which pixels of each tile are image, `(tiles, h, w)` (u8, 1 = image).
    pub pixel_attention_mask: Option<Tensor>,
    /// The `(rows, cols)` tile grid of each image (`(0, 0)`: not split).
    pub tile_grids: Vec<(usize, usize)>,
}

impl MediaInputs for Idefics3Images {}

impl VisionLanguageModel for Idefics3 {
    fn architecture(&self) -> &'static str {
        "idefics3"
    }

    fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    fn decoder_mut(&mut self) -> &mut Decoder {
        &mut self.decoder
    }

    fn image_token_id(&self) -> u32 {
        self.image_token_id
    }

    fn embed(&self, ids: &[u32], media: &dyn MediaInputs) -> Result<Tensor> {
        let images: &Idefics3Images = media_of(media, self.architecture())?;
        let features = match &images.pixel_values {
            Some(px) => Some(self.image_features(
                &px.to_dtype(self.decoder.dtype())?,
                images.pixel_attention_mask.as_ref(),
            )?),
            None => None,
        };
        self.embed_with_images(ids, features.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn pixel_shuffle_orders_blocks_row_major() -> Result<()> {
        // A 4x4 grid of 1-channel patches valued by their index; scale 2.
        let xs = Tensor::arange(0f32, 16.0, &Device::Cpu)?.reshape((1, 16, 1))?;
        let out = Idefics3Connector::pixel_shuffle(&xs, 2)?;
        assert_eq!(out.dims(), &[1, 4, 4]);
        let rows = out.squeeze(0)?.to_vec2::<f32>()?;
        assert_eq!(rows[0], vec![0.0, 1.0, 4.0, 5.0]);
        assert_eq!(rows[1], vec![2.0, 3.0, 6.0, 7.0]);
        assert_eq!(rows[2], vec![8.0, 9.0, 12.0, 13.0]);
        assert!(Idefics3Connector::pixel_shuffle(&xs.narrow(1, 0, 12)?, 2).is_err());
        assert!(Idefics3Connector::pixel_shuffle(&xs, 3).is_err());
        Ok(())
    }

    #[test]
    fn configs_in_both_dialects() -> Result<()> {
        // The published SmolVLM-256M-Instruct layout (abridged).
        let published = serde_json::json!({
            "architectures": ["Idefics3ForConditionalGeneration"], "image_token_id": 49190,
            "model_type": "idefics3", "scale_factor": 4, "tie_word_embeddings": false,
            "text_config": {"head_dim": 64, "hidden_size": 576, "intermediate_size": 1536,
                "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
                "num_key_value_heads": 3, "pixel_shuffle_factor": 4, "rms_norm_eps": 1e-05,
                "rope_theta": 100000, "torch_dtype": "bfloat16", "vocab_size": 49280,
                "tie_word_embeddings": true},
            "vision_config": {"hidden_size": 768, "image_size": 512, "intermediate_size": 3072,
                "max_image_size": {"longest_edge": 512}, "model_type": "idefics3",
                "num_attention_heads": 12, "patch_size": 16, "size": {"longest_edge": 2048}}
        });
        let cfg = Idefics3Config::from_json(&published)?;
        assert_eq!((cfg.image_token_id, cfg.scale_factor), (49190, 4));
        assert_eq!(cfg.image_seq_len(), 64);
        assert!(!cfg.tie_word_embeddings);
        let text = cfg.text()?.resolve()?;
        assert_eq!(
            (text.head_dim, text.num_key_value_heads, text.rope_theta),
            (64, 3, 1e5)
        );
        assert_eq!(cfg.vision_config.layer_norm_eps, 1e-6);
        assert_eq!(cfg.vision_config.num_hidden_layers, 12);

        // transformers 5, text_config without model_type, defaults elsewhere.
        let t5 = serde_json::json!({"model_type": "idefics3",
            "text_config": {"hidden_size": 64, "num_attention_heads": 4,
                "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}},
            "vision_config": {"model_type": "idefics3_vision", "image_size": 24, "patch_size": 4}});
        let cfg = Idefics3Config::from_json(&t5)?;
        assert_eq!((cfg.image_token_id, cfg.scale_factor), (128257, 2));
        assert_eq!(cfg.image_seq_len(), 9);
        assert_eq!(cfg.text()?.model_type(), "llama");
        assert_eq!(cfg.vision_config.hidden_size, 1152);
        // No text_config at all: Llama defaults with rms_norm_eps 1e-5.
        let none = Idefics3Config::from_json(&serde_json::json!({}))?;
        assert_eq!(none.text()?.resolve()?.rms_norm_eps, 1e-5);
        assert!(Idefics3Config::from_json(&serde_json::json!({"scale_factor": "x"})).is_err());
        Ok(())
    }
}
