//! LLaVA-NeXT (1.6) and LLaVA-OneVision, image path: LLaVA's tower, projector and decoder, with
//! each image seen as a low-resolution base view plus a grid of full-resolution tiles
//! ("anyres") whose features are stitched back into one map, cut to the image's aspect ratio,
//! and fed to the decoder row by row with a learned `image_newline` after each row.
//!
//! Mirrors transformers 5.23 `models/llava_next/{configuration,modeling}_llava_next.py`
//! (`LlavaNextForConditionalGeneration`) and `models/llava_onevision/` (the same model plus an
//! `anyres_max_N` budget); the token counts mirror `_get_number_of_features` of
//! `processing_llava_next.py` / `processing_llava_onevision.py`.
//!
//! # Packing one image (`pack_image_features`)
//!
//! Given the projected features of its views `(1 + tiles, tokens, hidden)`:
//! 1. the grid is `select_best_resolution(image size, image_grid_pinpoints) / image_size` tiles;
//! 2. the tiles' `side x side` patch maps are laid out as one `(rows * side, cols * side)` map;
//! 3. `unpad_image` removes the rows (or columns) that only saw the processor's black padding,
//!    `(current - int(round(side * scale, 7))) // 2` from each end;
//! 4. OneVision only: when the map holds more than 1.1 x the budget's worth of tokens
//!    (`sqrt(h * w / (N * side^2)) > 1.1` for `anyres_max_N`), it is shrunk by bilinear
//!    interpolation to `(int(h // ratio), int(w // ratio))` (torch's `interpolate(...,
//!    mode="bilinear")`, `align_corners=False`, no antialias);
//! 5. `image_newline` is appended to every row; the base view's tokens come first.
//!
//! A single view (OneVision's images in a multi-image prompt, which its processor leaves
//! untiled) becomes its tokens plus one `image_newline`.
//!
//! # Weights
//!
//! Canonical names are transformers 5's: `model.vision_tower.*`, `model.multi_modal_projector.*`,
//! `model.image_newline`, `model.language_model.*`, `lm_head.*`. Published llava-hf repos store
//! `vision_tower.vision_model.*`, `multi_modal_projector.*`, `image_newline`,
//! `language_model.model.*` and `language_model.lm_head.*`; the caller renames at load time.
//!
//! # Config dialects
//!
//! Published configs (transformers 4.39-4.45) spell `image_token_index`, `rope_theta` and
//! `torch_dtype` and carry `use_image_newline_parameter`; transformers 5 writes
//! `rope_parameters` and `dtype` (and still `image_token_index`); `image_token_id` is accepted
//! too. LLaVA-NeXT ties the LM head only on the top-level `tie_word_embeddings`, as transformers
//! 5 does; OneVision also honours `text_config.tie_word_embeddings` (its config class forwards
//! it).

mod config;
mod geometry;

pub use config::{
    llava_onevision_pinpoints, LlavaNextConfig, LlavaOnevisionConfig, LLAVA_NEXT_PINPOINTS,
};

use candle_core::{Device, Module, Tensor};
use candle_nn::VarBuilder;

use self::geometry::{bilinear_resize, Geometry};
use super::interface::{media_of, MediaInputs, VisionLanguageModel};
use super::llava::{select_vision_features, FeatureLayer, FeatureSelect};
use crate::nn::{Activation, Quantization};
use crate::projector::LlavaProjector;
use crate::text::{Decoder, TextConfig};
use crate::vision::{VisionConfig, VisionTower};
use crate::{Error, Result};

/// Which of the two architectures a [`LlavaNext`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnyresVariant {
    /// LLaVA-NeXT: every image is tiled; no token budget.
    Next,
    /// LLaVA-OneVision: only a prompt's single image is tiled; `anyres_max_N` budget.
    Onevision,
}

/// `LlavaNextForConditionalGeneration` / `LlavaOnevisionForConditionalGeneration` (images).
#[derive(Debug, Clone)]
pub struct LlavaNext {
    vision_tower: VisionTower,
    projector: LlavaProjector,
    decoder: Decoder,
    image_newline: Tensor,
    /// Indices into the tower's hidden-state list.
    layers: Vec<usize>,
    select: FeatureSelect,
    image_token_id: u32,
    geometry: Geometry,
    variant: AnyresVariant,
}

/// The parts both configs share.
struct Parts<'a> {
    vision: &'a VisionConfig,
    text: &'a TextConfig,
    layer: &'a FeatureLayer,
    select: FeatureSelect,
    act: Activation,
    bias: bool,
    tie: Option<bool>,
    image_token_id: u32,
}

impl LlavaNext {
    /// Builds LLaVA-NeXT from weights named as transformers 5 names them, rooted at `vb`;
    /// `quantization`, if any, applies to the language model's linear layers as they load
    /// (see [`Decoder::load`]).
    pub fn new(
        cfg: &LlavaNextConfig,
        vb: VarBuilder,
        quantization: Option<Quantization>,
    ) -> Result<Self> {
        let parts = Parts {
            vision: &cfg.vision_config,
            text: &cfg.text_config,
            layer: &cfg.vision_feature_layer,
            select: cfg.vision_feature_select_strategy,
            act: cfg.projector_hidden_act,
            bias: cfg.multimodal_projector_bias,
            // transformers 5 reads only the top-level key for LLaVA-NeXT.
            tie: Some(cfg.tie_word_embeddings),
            image_token_id: cfg.image_token_index,
        };
        Self::build(
            parts,
            cfg.geometry()?,
            AnyresVariant::Next,
            vb,
            quantization,
        )
    }

    /// Builds LLaVA-OneVision from weights named as transformers 5 names them, rooted at
    /// `vb`, quantizing as [`LlavaNext::new`] does.
    pub fn new_onevision(
        cfg: &LlavaOnevisionConfig,
        vb: VarBuilder,
        quantization: Option<Quantization>,
    ) -> Result<Self> {
        let parts = Parts {
            vision: &cfg.vision_config,
            text: &cfg.text_config,
            layer: &cfg.vision_feature_layer,
            select: cfg.vision_feature_select_strategy,
            act: cfg.projector_hidden_act,
            bias: cfg.multimodal_projector_bias,
            // `LlavaOnevisionConfig` forwards `text_config.tie_word_embeddings`: OR them.
            tie: cfg.tie_word_embeddings.then_some(true),
            image_token_id: cfg.image_token_index,
        };
        Self::build(
            parts,
            cfg.geometry()?,
            AnyresVariant::Onevision,
            vb,
            quantization,
        )
    }

    fn build(
        p: Parts,
        geometry: Geometry,
        variant: AnyresVariant,
        vb: VarBuilder,
        quantization: Option<Quantization>,
    ) -> Result<Self> {
        let mut text = p.text.resolve()?;
        if let Some(tie) = p.tie {
            text.tie_word_embeddings = tie;
        }
        let layers = p.layer.resolve(p.vision.num_hidden_layers())?;
        let in_dim = p.vision.hidden_size() * layers.len();
        let model = vb.pp("model");
        Ok(Self {
            vision_tower: VisionTower::new(p.vision, model.pp("vision_tower"))?,
            projector: LlavaProjector::new(
                in_dim,
                text.hidden_size,
                p.act,
                p.bias,
                model.pp("multi_modal_projector"),
            )?,
            image_newline: model.get(text.hidden_size, "image_newline")?,
            decoder: Decoder::load(
                &text,
                model.pp("language_model"),
                vb.pp("lm_head"),
                quantization,
            )?,
            layers,
            select: p.select,
            image_token_id: p.image_token_id,
            geometry,
            variant,
        })
    }

    /// LLaVA-NeXT or LLaVA-OneVision.
    pub fn variant(&self) -> AnyresVariant {
        self.variant
    }

    /// Side of a view, the vision tower's input (pixels).
    pub fn view_size(&self) -> usize {
        self.geometry.image_size
    }

    /// Placeholder tokens (= feature rows) of a tiled image of `height x width` (the
    /// processor's `_get_number_of_features`).
    pub fn num_image_tokens(&self, height: usize, width: usize) -> Result<usize> {
        self.geometry.num_image_tokens(height, width)
    }

    /// Placeholder tokens of an untiled image (one view): its tokens plus one newline.
    pub fn num_image_tokens_untiled(&self) -> usize {
        self.geometry.num_image_tokens_untiled()
    }

    /// Whether the images of a prompt holding `images_in_prompt` of them are tiled: always for
    /// LLaVA-NeXT, only a lone image for OneVision (whose processor pads the images of a
    /// multi-image prompt to squares instead).
    pub fn tiles_in_prompt_of(&self, images_in_prompt: usize) -> bool {
        self.variant == AnyresVariant::Next || images_in_prompt == 1
    }

    /// Placeholder tokens of each image of one prompt, `image_sizes` `(height, width)` in
    /// order, following [`Self::tiles_in_prompt_of`].
    pub fn image_token_counts(&self, image_sizes: &[(usize, usize)]) -> Result<Vec<usize>> {
        let tiled = self.tiles_in_prompt_of(image_sizes.len());
        image_sizes
            .iter()
            .map(|&(h, w)| {
                if tiled {
                    self.num_image_tokens(h, w)
                } else {
                    Ok(self.num_image_tokens_untiled())
                }
            })
            .collect()
    }

    /// Checks, before any vision work, that `ids` holds exactly as many placeholders as the
    /// images of `image_sizes` will produce feature rows.
    pub fn check_image_tokens(&self, ids: &[u32], image_sizes: &[(usize, usize)]) -> Result<()> {
        let placeholders = ids.iter().filter(|&&t| t == self.image_token_id).count();
        let features: usize = self.image_token_counts(image_sizes)?.iter().sum();
        if placeholders != features {
            return Err(Error::ImageTokenMismatch {
                placeholders,
                features,
            });
        }
        Ok(())
    }

    /// The selected vision hidden states before the projector, `(views, tokens, dim * layers)`,
    /// for views `(views, 3, S, S)`.
    pub fn vision_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        select_vision_features(&self.vision_tower, pixel_values, &self.layers, self.select)
    }

    /// Packed image features `(rows, hidden)`, all images concatenated in placeholder order.
    ///
    /// `pixel_values[i]` holds image `i`'s views `(1 + tiles, 3, S, S)` (base view first, as the
    /// processor returns them) or a single view `(1, 3, S, S)` for an untiled image;
    /// `image_sizes[i]` is its original `(height, width)`. Each image's row count is checked
    /// against [`Self::num_image_tokens`] (or the untiled count).
    pub fn image_features(
        &self,
        pixel_values: &[Tensor],
        image_sizes: &[(usize, usize)],
    ) -> Result<Tensor> {
        if pixel_values.len() != image_sizes.len() {
            return Err(Error::Shape(format!(
                "{} pixel tensors but {} image sizes; give one (height, width) per image",
                pixel_values.len(),
                image_sizes.len()
            )));
        }
        let hidden = self.decoder.config().hidden_size;
        if pixel_values.is_empty() {
            return Ok(Tensor::zeros(
                (0, hidden),
                self.decoder.dtype(),
                self.decoder.device(),
            )?);
        }
        let s = self.geometry.image_size;
        let mut views = Vec::with_capacity(pixel_values.len());
        for (i, (px, &(h, w))) in pixel_values.iter().zip(image_sizes).enumerate() {
            let (n, c, ph, pw) = px.dims4()?;
            if (c, ph, pw) != (3, s, s) {
                return Err(Error::Shape(format!(
                    "image {i}: expected views of shape (3, {s}, {s}), found ({c}, {ph}, {pw})"
                )));
            }
            let (gh, gw) = self.geometry.grid(h, w)?;
            if n != 1 && n != 1 + gh * gw {
                return Err(Error::Shape(format!(
                    "image {i} ({h}x{w}): expected 1 + {gh}x{gw} views (base view and tile grid) \
                     or 1 untiled view, found {n}"
                )));
            }
            views.push(n);
        }
        let all = Tensor::cat(pixel_values, 0)?;
        let projected = self.projector.forward(&self.vision_features(&all)?)?;
        let mut packed = Vec::with_capacity(views.len());
        let mut offset = 0;
        for (i, (&n, &(h, w))) in views.iter().zip(image_sizes).enumerate() {
            let rows = self.pack(&projected.narrow(0, offset, n)?, (h, w))?;
            offset += n;
            let expected = if n == 1 {
                self.num_image_tokens_untiled()
            } else {
                self.num_image_tokens(h, w)?
            };
            if rows.dim(0)? != expected {
                return Err(Error::Shape(format!(
                    "image {i} ({h}x{w}): packing produced {} feature rows but the processor's \
                     token count is {expected}",
                    rows.dim(0)?
                )));
            }
            packed.push(rows);
        }
        Ok(Tensor::cat(&packed, 0)?)
    }

    /// `pack_image_features` for one image: `(views, tokens, hidden)` -> `(rows, hidden)`.
    fn pack(&self, features: &Tensor, (height, width): (usize, usize)) -> Result<Tensor> {
        let (n, t, d) = features.dims3()?;
        let newline = self.image_newline.to_dtype(features.dtype())?;
        let base = features.get(0)?;
        if n == 1 {
            return Ok(Tensor::cat(&[&base, &newline.reshape((1, d))?], 0)?);
        }
        let side = self.geometry.side;
        if t != side * side {
            return Err(Error::Shape(format!(
                "a view gives {t} feature tokens but tiling needs a {side}x{side} patch map; \
                 use vision_feature_select_strategy \"default\" with CLIP and \"full\" with SigLIP"
            )));
        }
        let plan = self.geometry.plan(height, width)?;
        let (gh, gw) = plan.grid;
        // (tile row, tile col, patch row, patch col) -> (tile row, patch row, tile col, patch col)
        let map = features
            .narrow(0, 1, n - 1)?
            .reshape((gh, gw, side, side, d))?
            .permute((0, 2, 1, 3, 4))?
            .reshape((gh * side, gw * side, d))?
            .narrow(0, plan.rows.0, plan.rows.1)?
            .narrow(1, plan.cols.0, plan.cols.1)?;
        let map = match plan.downscale {
            Some((oh, ow)) => bilinear_resize(&map, oh, ow)?,
            None => map,
        };
        let (rows, cols, _) = map.dims3()?;
        let newlines = newline.reshape((1, 1, d))?.broadcast_as((rows, 1, d))?;
        let map = Tensor::cat(&[&map, &newlines], 1)?.reshape((rows * (cols + 1), d))?;
        Ok(Tensor::cat(&[&base, &map], 0)?)
    }

    /// Embeds `ids` and splices `image_features` (`(rows, hidden)` from
    /// [`Self::image_features`], in placeholder order) in. The number of placeholders must equal
    /// the number of rows ([`Error::ImageTokenMismatch`] otherwise).
    pub fn embed_with_images(
        &self,
        ids: &[u32],
        image_features: Option<&Tensor>,
    ) -> Result<Tensor> {
        let device: &Device = self.decoder.device();
        // Placeholder ids may lie outside the embedding table; they are overwritten anyway.
        let safe: Vec<u32> = ids
            .iter()
            .map(|&t| if t == self.image_token_id { 0 } else { t })
            .collect();
        let t = Tensor::from_vec(safe, (1, ids.len()), device)?;
        let embeds = self.decoder.embed(&t)?;
        let features = match image_features {
            Some(f) if f.rank() == 3 => {
                let (n, k, h) = f.dims3()?;
                f.reshape((n * k, h))?
            }
            Some(f) => f.clone(),
            None => Tensor::zeros((0, embeds.dim(2)?), embeds.dtype(), device)?,
        };
        super::merge_image_features(ids, self.image_token_id, &embeds, &features)
    }
}

/// The images of one LLaVA-NeXT / OneVision prompt, as its processor prepares them.
#[derive(Debug, Clone, Default)]
pub struct AnyresImages {
    /// The views (base view, then tiles) of every image, `(views, 3, S, S)`; `None` without
    /// images.
    pub pixel_values: Option<Tensor>,
    /// How many of those views belong to each image, in order.
    pub views_per_image: Vec<usize>,
    /// Each image's original `(height, width)`.
    pub image_sizes: Vec<(usize, usize)>,
}

impl MediaInputs for AnyresImages {}

impl VisionLanguageModel for LlavaNext {
    fn architecture(&self) -> &'static str {
        match self.variant {
            AnyresVariant::Next => "llava_next",
            AnyresVariant::Onevision => "llava_onevision",
        }
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
        let images: &AnyresImages = media_of(media, self.architecture())?;
        let features = match &images.pixel_values {
            Some(px) => {
                let px = px.to_dtype(self.decoder.dtype())?;
                let mut per_image = Vec::with_capacity(images.views_per_image.len());
                let mut start = 0;
                for &views in &images.views_per_image {
                    per_image.push(px.narrow(0, start, views)?);
                    start += views;
                }
                Some(self.image_features(&per_image, &images.image_sizes)?)
            }
            None => None,
        };
        self.embed_with_images(ids, features.as_ref())
    }
}
