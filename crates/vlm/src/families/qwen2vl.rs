//! Qwen2-VL (`qwen2_vl`) and Qwen2.5-VL (`qwen2_5_vl`): images and videos at their native
//! resolution (`smart_resize`), flattened into patches with one `(t, h, w)` grid each.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde_json::Value;
use vlm_core::models::{Qwen2Vl, Qwen2VlConfig, QwenMedia, VisionLanguageModel};
use vlm_preprocess::image::RgbImage;
use vlm_preprocess::qwen2vl::{Patches, Qwen2VlImageProcessor, Qwen2VlVideoProcessor};
use vlm_preprocess::Video;
use vlm_prompt::{expand_image_tokens, expand_video_tokens};

use super::{
    each_image, finish, weights_error, Expanded, FamilyConfig, LoadParts, Loaded, MediaProcessor,
    PromptText,
};
use crate::options::{MediaOption, MediaOptions};
use crate::weights::PrefixRule;
use crate::{Error, Result};

/// The published layout (`visual.*`, `model.*`), as in transformers' conversion mapping for
/// `qwen2_vl`.
const LAYOUT: &[PrefixRule] = &[
    PrefixRule::new("model.visual.", &["visual."]),
    PrefixRule::new("model.language_model.", &["model."]),
];

pub(super) fn parse(json: &Value) -> std::result::Result<Box<dyn FamilyConfig>, String> {
    let config = Qwen2VlConfig::from_json(json).map_err(|e| e.to_string())?;
    Ok(Box::new(config))
}

impl FamilyConfig for Qwen2VlConfig {
    fn layout(&self) -> &'static [PrefixRule] {
        LAYOUT
    }

    fn media_options(&self) -> &'static [MediaOption] {
        &[
            MediaOption::MinPixels,
            MediaOption::MaxPixels,
            MediaOption::VideoMinPixels,
            MediaOption::VideoMaxPixels,
            MediaOption::VideoSampling,
            MediaOption::MaxVideoTokens,
        ]
    }

    fn load(&self, parts: LoadParts<'_>) -> Result<Loaded> {
        let model = Qwen2Vl::new(self, parts.vb, parts.quantization).map_err(weights_error)?;
        let (image, video) = processors(parts.dir, parts.media)?;
        let processor = QwenProcessor {
            image,
            video,
            image_token: model.image_token_id(),
            video_token: self.video_token_id,
        };
        let (model, quantized) = finish(model, parts.quantization)?;
        Ok(Loaded {
            model,
            processor: Box::new(processor),
            quantized,
        })
    }
}

/// The checkpoint's image and video processors with the caller's pixel bounds and sampling.
fn processors(
    dir: &std::path::Path,
    options: &MediaOptions,
) -> Result<(Qwen2VlImageProcessor, Qwen2VlVideoProcessor)> {
    let mut image = Qwen2VlImageProcessor::from_dir(dir)?;
    if options.min_pixels.is_some() || options.max_pixels.is_some() {
        let min = options.min_pixels.unwrap_or(image.min_pixels());
        let max = options.max_pixels.unwrap_or(image.max_pixels());
        image = image.with_pixel_bounds(min, max)?;
    }
    let mut video = Qwen2VlVideoProcessor::from_dir(dir)?;
    if options.video_min_pixels.is_some() || options.video_max_pixels.is_some() {
        let min = options.video_min_pixels.unwrap_or(video.min_pixels());
        let max = options.video_max_pixels.unwrap_or(video.max_pixels());
        video = video.with_pixel_bounds(min, max)?;
    }
    if let Some(sampling) = options.video_sampling {
        video = video.with_sampling(sampling);
    }
    if options.max_video_tokens.is_some() {
        video = video.with_video_token_budget(options.max_video_tokens);
    }
    Ok((image, video))
}

#[derive(Debug)]
struct QwenProcessor {
    image: Qwen2VlImageProcessor,
    video: Qwen2VlVideoProcessor,
    image_token: u32,
    video_token: u32,
}

impl MediaProcessor for QwenProcessor {
    fn prepare(
        &self,
        prompt: &PromptText<'_>,
        images: &[RgbImage],
        videos: &[Video],
        device: &Device,
    ) -> Result<Expanded> {
        let ids = prompt.encode(prompt.text)?;
        let image_patches = each_image(images, |img| self.image.process(img))?;
        let processed_videos = videos
            .iter()
            .enumerate()
            .map(|(index, v)| {
                self.video
                    .process(v)
                    .map_err(|source| Error::Video { index, source })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut media = QwenMedia {
            // transformers stores `second_per_grid_ts` as a float32 tensor.
            video_seconds_per_grid: processed_videos
                .iter()
                .map(|v| Some(v.second_per_grid_t as f32))
                .collect(),
            ..QwenMedia::default()
        };
        (media.pixel_values, media.image_grids) = stack_patches(&image_patches, device)?;
        (media.video_pixel_values, media.video_grids) =
            stack_patches(processed_videos.iter().map(|v| &v.patches), device)?;
        let merge = self.image.merge_size().pow(2).max(1);
        let tokens = |grids: &[[usize; 3]]| -> Vec<usize> {
            grids.iter().map(|g| g[0] * g[1] * g[2] / merge).collect()
        };
        let ids = expand_image_tokens(&ids, self.image_token, &tokens(&media.image_grids))?;
        let input_ids = expand_video_tokens(&ids, self.video_token, &tokens(&media.video_grids))?;
        Ok(Expanded {
            input_ids,
            media: Arc::new(media),
        })
    }
}

/// Concatenates the flattened patches of several images (or videos) into one
/// `(patches, patch_dim)` tensor, with their grids; `None` when there are none.
fn stack_patches<'a>(
    items: impl IntoIterator<Item = &'a Patches>,
    device: &Device,
) -> Result<(Option<Tensor>, Vec<[usize; 3]>)> {
    let mut data = Vec::new();
    let mut grids = Vec::new();
    let mut patch_dim = 0;
    for p in items {
        patch_dim = p.patch_dim;
        grids.push(p.grid_thw);
        data.extend_from_slice(&p.data);
    }
    if grids.is_empty() {
        return Ok((None, grids));
    }
    let rows = data.len() / patch_dim.max(1);
    Ok((
        Some(Tensor::from_vec(data, (rows, patch_dim), device)?),
        grids,
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::LAYOUT;
    use crate::weights::canonical_to_stored;

    #[test]
    fn published_layout_maps_to_canonical() {
        let keys: BTreeSet<String> = ["visual.blocks.0.attn.qkv.weight", "model.norm.weight"]
            .into_iter()
            .map(String::from)
            .collect();
        let m = canonical_to_stored(&keys, LAYOUT);
        assert_eq!(
            m.get("model.visual.blocks.0.attn.qkv.weight")
                .map(String::as_str),
            Some("visual.blocks.0.attn.qkv.weight")
        );
        assert_eq!(
            m.get("model.language_model.norm.weight")
                .map(String::as_str),
            Some("model.norm.weight")
        );
    }
}
