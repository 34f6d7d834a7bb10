//! Idefics3 / SmolVLM (`idefics3`): each image split into tiles plus a global view, the prompt
//! expanded as text (row / column markers around each tile's placeholders) before tokenizing.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde_json::Value;
use vlm_core::models::{Idefics3, Idefics3Config, Idefics3Images};
use vlm_preprocess::idefics3::{Idefics3ImageProcessor, Idefics3Tiles};
use vlm_preprocess::image::RgbImage;
use vlm_preprocess::Video;
use vlm_prompt::{expand_idefics3_prompt, Idefics3PromptTokens};

use super::{
    each_image, finish, weights_error, Expanded, FamilyConfig, LoadParts, Loaded, MediaProcessor,
    PromptText,
};
use crate::options::MediaOption;
use crate::weights::PrefixRule;
use crate::Result;

pub(super) fn parse(json: &Value) -> std::result::Result<Box<dyn FamilyConfig>, String> {
    let config = Idefics3Config::from_json(json).map_err(|e| e.to_string())?;
    Ok(Box::new(config))
}

impl FamilyConfig for Idefics3Config {
    /// Published Idefics3 / SmolVLM checkpoints already use transformers 5's names.
    fn layout(&self) -> &'static [PrefixRule] {
        &[]
    }

    fn media_options(&self) -> &'static [MediaOption] {
        &[MediaOption::ImageSplitting]
    }

    fn load(&self, parts: LoadParts<'_>) -> Result<Loaded> {
        let model = Idefics3::new(self, parts.vb, parts.quantization).map_err(weights_error)?;
        let mut image = Idefics3ImageProcessor::from_dir(parts.dir)?;
        if let Some(split) = parts.media.image_splitting {
            image = image.with_image_splitting(split);
        }
        let processor = TilingProcessor {
            image,
            tokens: Idefics3PromptTokens::from_dir(parts.dir, parts.tokenizer)?,
        };
        let (model, quantized) = finish(model, parts.quantization)?;
        Ok(Loaded {
            model,
            processor: Box::new(processor),
            quantized,
        })
    }
}

#[derive(Debug)]
struct TilingProcessor {
    image: Idefics3ImageProcessor,
    tokens: Idefics3PromptTokens,
}

impl MediaProcessor for TilingProcessor {
    fn prepare(
        &self,
        prompt: &PromptText<'_>,
        images: &[RgbImage],
        _videos: &[Video],
        device: &Device,
    ) -> Result<Expanded> {
        let tiles = each_image(images, |img| self.image.process(img))?;
        let tile_grids: Vec<(usize, usize)> = tiles.iter().map(|t| (t.rows, t.cols)).collect();
        let text = expand_idefics3_prompt(prompt.text, &tile_grids, &self.tokens)?;
        let (pixel_values, pixel_attention_mask) = stack_tiles(&tiles, device)?.unzip();
        Ok(Expanded {
            input_ids: prompt.encode(&text)?,
            media: Arc::new(Idefics3Images {
                pixel_values,
                pixel_attention_mask,
                tile_grids,
            }),
        })
    }
}

/// All tiles of all images as `(tiles, 3, h, w)` pixel values and the `(tiles, h, w)` mask;
/// `None` without images.
fn stack_tiles(tiles: &[Idefics3Tiles], device: &Device) -> Result<Option<(Tensor, Tensor)>> {
    let Some(first) = tiles.first() else {
        return Ok(None);
    };
    let [_, c, h, w] = first.shape;
    let mut pixels = Vec::new();
    let mut mask = Vec::new();
    let mut n = 0;
    for t in tiles {
        pixels.extend_from_slice(&t.pixel_values);
        mask.extend_from_slice(&t.pixel_attention_mask);
        n += t.n_tiles();
    }
    Ok(Some((
        Tensor::from_vec(pixels, (n, c, h, w), device)?,
        Tensor::from_vec(mask, (n, h, w), device)?,
    )))
}
