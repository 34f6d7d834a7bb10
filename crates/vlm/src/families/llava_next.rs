//! LLaVA-NeXT (`llava_next`) and LLaVA-OneVision (`llava_onevision`): a base view plus tiles of
//! the best-fitting resolution per image, placeholders counted from each image's size.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use serde_json::Value;
use vlm_core::models::{
    AnyresImages, LlavaNext, LlavaNextConfig, LlavaOnevisionConfig, VisionLanguageModel,
};
use vlm_preprocess::anyres::AnyresImageProcessor;
use vlm_preprocess::image::RgbImage;
use vlm_preprocess::Video;
use vlm_prompt::expand_image_tokens;

use super::{
    each_image, finish, weights_error, Expanded, FamilyConfig, LoadParts, Loaded, MediaProcessor,
    PromptText,
};
use crate::options::MediaOption;
use crate::weights::PrefixRule;
use crate::Result;

/// The LLaVA layout plus the top-level `image_newline` parameter.
const LAYOUT: &[PrefixRule] = &[
    PrefixRule::new("model.language_model.", &["language_model.model."]),
    PrefixRule::new("lm_head.", &["language_model.lm_head."]),
    PrefixRule::new(
        "model.vision_tower.",
        &["vision_tower.vision_model.", "vision_tower."],
    ),
    PrefixRule::new("model.multi_modal_projector.", &["multi_modal_projector."]),
    PrefixRule::new("model.image_newline", &["image_newline"]),
];

pub(super) fn parse_next(json: &Value) -> std::result::Result<Box<dyn FamilyConfig>, String> {
    let config = LlavaNextConfig::deserialize(json).map_err(|e| e.to_string())?;
    Ok(Box::new(config))
}

pub(super) fn parse_onevision(json: &Value) -> std::result::Result<Box<dyn FamilyConfig>, String> {
    let config = LlavaOnevisionConfig::deserialize(json).map_err(|e| e.to_string())?;
    Ok(Box::new(config))
}

impl FamilyConfig for LlavaNextConfig {
    fn layout(&self) -> &'static [PrefixRule] {
        LAYOUT
    }

    fn media_options(&self) -> &'static [MediaOption] {
        &[]
    }

    fn load(&self, parts: LoadParts<'_>) -> Result<Loaded> {
        let model = LlavaNext::new(self, parts.vb.clone(), parts.quantization);
        load(model.map_err(weights_error)?, &parts)
    }
}

impl FamilyConfig for LlavaOnevisionConfig {
    fn layout(&self) -> &'static [PrefixRule] {
        LAYOUT
    }

    fn media_options(&self) -> &'static [MediaOption] {
        &[]
    }

    fn load(&self, parts: LoadParts<'_>) -> Result<Loaded> {
        let model = LlavaNext::new_onevision(self, parts.vb.clone(), parts.quantization);
        load(model.map_err(weights_error)?, &parts)
    }
}

fn load(model: LlavaNext, parts: &LoadParts<'_>) -> Result<Loaded> {
    let image = AnyresImageProcessor::from_dir(parts.dir)?;
    let (model, quantized) = finish(model, parts.quantization)?;
    Ok(Loaded {
        model: model.clone(),
        processor: Box::new(AnyresProcessor { image, model }),
        quantized,
    })
}

/// The processor's views, with the model's geometry for the placeholder counts.
#[derive(Debug)]
struct AnyresProcessor {
    image: AnyresImageProcessor,
    model: Arc<LlavaNext>,
}

impl MediaProcessor for AnyresProcessor {
    fn prepare(
        &self,
        prompt: &PromptText<'_>,
        images: &[RgbImage],
        _videos: &[Video],
        device: &Device,
    ) -> Result<Expanded> {
        let ids = prompt.encode(prompt.text)?;
        // OneVision tiles an image only when it is alone in the conversation.
        let tiled = self.image.tiles_in_prompt_of(images.len());
        let pixels = each_image(images, |img| match tiled {
            true => self.image.process(img),
            false => self.image.process_untiled(img),
        })?;
        let mut media = AnyresImages::default();
        let mut data = Vec::new();
        let mut view_shape = [0usize; 3];
        for px in pixels {
            let [views, c, h, w] = px.shape;
            view_shape = [c, h, w];
            media.views_per_image.push(views);
            let (ih, iw) = px.image_size;
            media.image_sizes.push((ih as usize, iw as usize));
            data.extend_from_slice(&px.data);
        }
        if !images.is_empty() {
            let total: usize = media.views_per_image.iter().sum();
            let [c, h, w] = view_shape;
            media.pixel_values = Some(Tensor::from_vec(data, (total, c, h, w), device)?);
        }
        let counts = self.model.image_token_counts(&media.image_sizes)?;
        Ok(Expanded {
            input_ids: expand_image_tokens(&ids, self.model.image_token_id(), &counts)?,
            media: Arc::new(media),
        })
    }
}
