//! The image and video preprocessing of each model family, and stacking its outputs into the
//! tensors a [`crate::Prepared`] holds.

use std::path::Path;

use candle_core::{Device, Tensor};
use vlm_preprocess::anyres::AnyresImageProcessor;
use vlm_preprocess::idefics3::{Idefics3ImageProcessor, Idefics3Tiles};
use vlm_preprocess::qwen2vl::{Patches, Qwen2VlImageProcessor, Qwen2VlVideoProcessor};
use vlm_preprocess::{ImageProcessor, ImageProcessorConfig};
use vlm_prompt::{Idefics3PromptTokens, Tokenizer};

use crate::model::Model;
use crate::{LoadOptions, Prepared, Result};

/// The image and video preprocessing of a checkpoint.
#[derive(Debug, Clone)]
pub(crate) enum Processor {
    /// Fixed-resolution models (LLaVA): one pixel tensor per image.
    Fixed(ImageProcessor),
    /// Qwen2-VL: images and videos to flattened patches and grids.
    Qwen {
        image: Qwen2VlImageProcessor,
        video: Qwen2VlVideoProcessor,
    },
    /// LLaVA-NeXT / OneVision: a base view plus tiles of the best-fitting resolution.
    Anyres(AnyresImageProcessor),
    /// Idefics3: tiles plus a global view per image; the prompt is expanded as text.
    Idefics3 {
        image: Idefics3ImageProcessor,
        tokens: Idefics3PromptTokens,
    },
}

/// Concatenates the flattened patches of several images (or videos) into one
/// `(patches, patch_dim)` tensor, with their grids; `None` when there are none.
pub(crate) fn stack_patches<'a>(
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

/// All tiles of all images as `(tiles, 3, h, w)` pixel values and the `(tiles, h, w)` mask.
pub(crate) fn stack_tiles(
    tiles: &[Idefics3Tiles],
    device: &Device,
    into: &mut Prepared,
) -> Result<()> {
    let Some(first) = tiles.first() else {
        return Ok(());
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
    into.pixel_values = Some(Tensor::from_vec(pixels, (n, c, h, w), device)?);
    into.pixel_attention_mask = Some(Tensor::from_vec(mask, (n, h, w), device)?);
    Ok(())
}

/// The processor matching the architecture, with the caller's pixel budget applied.
pub(crate) fn load_processor(
    model: &Model,
    tokenizer: &Tokenizer,
    dir: &Path,
    options: &LoadOptions,
) -> Result<Processor> {
    if model.tokens_per_image().is_some() {
        return Ok(Processor::Fixed(ImageProcessor::from_config(
            &ImageProcessorConfig::from_dir(dir)?,
        )?));
    }
    if let Model::LlavaNext(_) = model {
        return Ok(Processor::Anyres(AnyresImageProcessor::from_dir(dir)?));
    }
    if let Model::Idefics3(_) = model {
        let mut image = Idefics3ImageProcessor::from_dir(dir)?;
        if let Some(split) = options.image_splitting {
            image = image.with_image_splitting(split);
        }
        return Ok(Processor::Idefics3 {
            image,
            tokens: Idefics3PromptTokens::from_dir(dir, tokenizer)?,
        });
    }
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
    Ok(Processor::Qwen { image, video })
}
