//! LLaVA (`llava`): one fixed-size pixel tensor per image, a fixed number of placeholder tokens
//! per image.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use serde_json::Value;
use vlm_core::models::{Llava, LlavaConfig, LlavaImages, VisionLanguageModel};
use vlm_preprocess::image::RgbImage;
use vlm_preprocess::{ImageProcessor, ImageProcessorConfig, Video};
use vlm_prompt::expand_image_tokens;

use super::{
    each_image, finish, weights_error, Expanded, FamilyConfig, LoadParts, Loaded, MediaProcessor,
    PromptText,
};
use crate::options::MediaOption;
use crate::weights::PrefixRule;
use crate::Result;

/// The language model, tower and projector prefixes published LLaVA checkpoints use, as
/// transformers' conversion mapping accepts them.
const LAYOUT: &[PrefixRule] = &[
    PrefixRule::new("model.language_model.", &["language_model.model."]),
    PrefixRule::new("lm_head.", &["language_model.lm_head."]),
    PrefixRule::new(
        "model.vision_tower.",
        &["vision_tower.vision_model.", "vision_tower."],
    ),
    PrefixRule::new("model.multi_modal_projector.", &["multi_modal_projector."]),
];

pub(super) fn parse(json: &Value) -> std::result::Result<Box<dyn FamilyConfig>, String> {
    let config = LlavaConfig::deserialize(json).map_err(|e| e.to_string())?;
    Ok(Box::new(config))
}

impl FamilyConfig for LlavaConfig {
    fn layout(&self) -> &'static [PrefixRule] {
        LAYOUT
    }

    fn media_options(&self) -> &'static [MediaOption] {
        &[]
    }

    fn load(&self, parts: LoadParts<'_>) -> Result<Loaded> {
        let model = Llava::new(self, parts.vb, parts.quantization).map_err(weights_error)?;
        let processor = FixedProcessor {
            image: ImageProcessor::from_config(&ImageProcessorConfig::from_dir(parts.dir)?)?,
            image_token: model.image_token_id(),
            tokens_per_image: model.tokens_per_image(),
        };
        let (model, quantized) = finish(model, parts.quantization)?;
        Ok(Loaded {
            model,
            processor: Box::new(processor),
            quantized,
        })
    }
}

/// Each image resized and cropped to the tower's input; `tokens_per_image` placeholders each.
#[derive(Debug)]
struct FixedProcessor {
    image: ImageProcessor,
    image_token: u32,
    tokens_per_image: usize,
}

impl MediaProcessor for FixedProcessor {
    fn prepare(
        &self,
        prompt: &PromptText<'_>,
        images: &[RgbImage],
        _videos: &[Video],
        device: &Device,
    ) -> Result<Expanded> {
        let ids = prompt.encode(prompt.text)?;
        let counts = vec![self.tokens_per_image; images.len()];
        let input_ids = expand_image_tokens(&ids, self.image_token, &counts)?;
        let pixels = each_image(images, |img| self.image.process(img))?;
        let pixel_values = match pixels.is_empty() {
            true => None,
            false => {
                let rows = pixels
                    .into_iter()
                    .map(|px| {
                        let [c, h, w] = px.shape;
                        Tensor::from_vec(px.data, (c, h, w), device)
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Some(Tensor::stack(&rows, 0)?)
            }
        };
        Ok(Expanded {
            input_ids,
            media: Arc::new(LlavaImages { pixel_values }),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::LAYOUT;
    use crate::weights::canonical_to_stored;

    #[test]
    fn published_layout_maps_to_canonical() {
        let keys: BTreeSet<String> = [
            "language_model.model.embed_tokens.weight",
            "language_model.lm_head.weight",
            "vision_tower.vision_model.embeddings.class_embedding",
            "multi_modal_projector.linear_1.weight",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let m = canonical_to_stored(&keys, LAYOUT);
        assert_eq!(
            m.get("model.language_model.embed_tokens.weight")
                .map(String::as_str),
            Some("language_model.model.embed_tokens.weight")
        );
        assert_eq!(
            m.get("lm_head.weight").map(String::as_str),
            Some("language_model.lm_head.weight")
        );
        assert_eq!(
            m.get("model.vision_tower.embeddings.class_embedding")
                .map(String::as_str),
            Some("vision_tower.vision_model.embeddings.class_embedding")
        );
        assert_eq!(
            m.get("model.multi_modal_projector.linear_1.weight")
                .map(String::as_str),
            Some("multi_modal_projector.linear_1.weight")
        );
    }
}
