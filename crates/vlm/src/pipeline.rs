//! [`Vlm`]: a loaded checkpoint with its tokenizer, chat template and image processor, and the
//! generation loop.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use vlm_core::nn::{KvCache, Quantization};
use vlm_core::text::QuantizeReport;
use vlm_preprocess::idefics3::Idefics3ImageProcessor;
use vlm_preprocess::image::RgbImage;
use vlm_preprocess::qwen2vl::{FrameSampling, Qwen2VlImageProcessor, Qwen2VlVideoProcessor};
use vlm_preprocess::{DecodeLimits, ImageProcessor, Video, VideoLimits};
use vlm_prompt::{
    expand_idefics3_prompt, expand_image_tokens, expand_video_tokens, ChatTemplate, ChatTemplates,
    Message, SpecialTokens, TemplateContext, Tokenizer,
};

use crate::generate::{GenerateParams, Generation, Generator, TokenEvent};
use crate::media::{load_processor, stack_patches, stack_tiles, Processor};
use crate::model::{Model, ModelConfig, Positions};
use crate::source::{read_json, Fetcher, ModelSource};
use crate::{weights, Error, Result};

/// Files fetched besides config and weights when they exist (for a Hub source; a local folder
/// is read in place).
const OPTIONAL_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
];

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where tensors live.
    pub device: Device,
    /// Weight and activation dtype. `None`: f32 on CPU (the fast path there), the checkpoint's
    /// own dtype on GPUs.
    pub dtype: Option<DType>,
    /// Largest image (in pixels, from its header) that will be decoded.
    pub image_limits: DecodeLimits,
    /// Quantize the language model's linear layers at load time (`None`: keep `dtype`).
    /// Activations of quantized layers run in f32.
    pub quantization: Option<Quantization>,
    /// Tiling models (Idefics3 / SmolVLM): split images into tiles plus a global view
    /// (`do_image_splitting`); `None` keeps the checkpoint's setting.
    pub image_splitting: Option<bool>,
    /// Native-resolution models (Qwen2-VL): the fewest pixels an image is resized to
    /// (`min_pixels`); `None` keeps the checkpoint's setting.
    pub min_pixels: Option<u64>,
    /// Native-resolution models: the most pixels an image is resized to (`max_pixels`), which
    /// bounds its token count (one token per 28 x 28 pixels); `None` keeps the checkpoint's.
    pub max_pixels: Option<u64>,
    /// Native-resolution models: the pixel bounds of each video frame (`None`: the
    /// checkpoint's video processor settings).
    pub video_min_pixels: Option<u64>,
    /// See [`LoadOptions::video_min_pixels`].
    pub video_max_pixels: Option<u64>,
    /// Native-resolution models: which frames of a video are used (`None`: the checkpoint's
    /// setting, by default every frame).
    pub video_sampling: Option<FrameSampling>,
    /// Native-resolution models: a total token budget per video (transformers'
    /// `cap_pixels_per_frame` with `max_video_tokens`): each frame is also capped at an even
    /// share of it, so a long video cannot exhaust memory. `None`: no total budget, as
    /// transformers 5.23 defaults to.
    pub max_video_tokens: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            image_limits: DecodeLimits::default(),
            quantization: None,
            image_splitting: None,
            min_pixels: None,
            max_pixels: None,
            video_min_pixels: None,
            video_max_pixels: None,
            video_sampling: None,
            max_video_tokens: None,
        }
    }
}

/// A conversation and its media, in the order their placeholders appear.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The chat messages (text, image and video parts).
    pub messages: Vec<Message>,
    /// Decoded images, one per image part, in order.
    pub images: Vec<RgbImage>,
    /// Videos, one per video part, in order (models that take videos only).
    pub videos: Vec<Video>,
}

impl Request {
    /// One user turn: the images first, then `prompt` (how a plain prompt with N images is laid
    /// out).
    pub fn new(prompt: impl Into<String>, images: Vec<RgbImage>) -> Self {
        Self::with_videos(prompt, images, Vec::new())
    }

    /// One user turn: the images, then the videos, then `prompt`.
    pub fn with_videos(
        prompt: impl Into<String>,
        images: Vec<RgbImage>,
        videos: Vec<Video>,
    ) -> Self {
        Self {
            messages: vec![Message::user_with_media(images.len(), videos.len(), prompt)],
            images,
            videos,
        }
    }
}

/// Model inputs after templating, tokenization and preprocessing.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// The rendered prompt text.
    pub prompt: String,
    /// Token ids with every image and video placeholder expanded to its feature count.
    pub input_ids: Vec<u32>,
    /// Image pixels, or `None` without images: `(n_images, 3, h, w)` for fixed-resolution
    /// models (LLaVA), flattened patches `(patches, 3 * t * p * p)` of all images for
    /// native-resolution ones (Qwen2-VL).
    pub pixel_values: Option<Tensor>,
    /// Native-resolution models: the `(t, h, w)` patch grid of each image.
    pub image_grids: Vec<[usize; 3]>,
    /// Tiling models (Idefics3): which pixels of each tile are image, `(tiles, h, w)` (u8,
    /// 1 = image); `pixel_values` then holds every tile of every image, `(tiles, 3, h, w)`.
    pub pixel_attention_mask: Option<Tensor>,
    /// Tiling models: the `(rows, cols)` tile grid of each image (`(0, 0)`: not split).
    pub tile_grids: Vec<(usize, usize)>,
    /// Anyres models (LLaVA-NeXT / OneVision): how many views (base view + tiles) of
    /// `pixel_values` belong to each image, in order.
    pub views_per_image: Vec<usize>,
    /// Anyres models: each image's original `(height, width)`.
    pub image_sizes: Vec<(usize, usize)>,
    /// Flattened patches of all videos (native-resolution models), or `None`.
    pub video_pixel_values: Option<Tensor>,
    /// The `(t, h, w)` patch grid of each video.
    pub video_grids: Vec<[usize; 3]>,
    /// Seconds per temporal patch of each video (`temporal_patch_size / fps`; Qwen2.5-VL
    /// spaces video positions by it).
    pub video_seconds_per_grid: Vec<Option<f32>>,
}

/// A loaded vision-language model, ready to answer requests. Stateless between calls: every
/// [`Vlm::generate`] call owns its KV cache.
#[derive(Debug)]
pub struct Vlm {
    model: Model,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    special_tokens: SpecialTokens,
    processor: Processor,
    eos_ids: Vec<u32>,
    device: Device,
    dtype: DType,
    image_limits: DecodeLimits,
    dir: PathBuf,
    load_ms: f64,
    quantized: Option<QuantizeReport>,
}

impl Vlm {
    /// Loads a checkpoint from a local folder or the Hub.
    pub fn load(source: &ModelSource, options: &LoadOptions) -> Result<Self> {
        let start = Instant::now();
        let fetcher = Fetcher::new(source)?;
        let config_path = fetcher.require("config.json")?;
        let tokenizer_path = fetcher.require("tokenizer.json")?;
        for f in OPTIONAL_FILES {
            fetcher.get(f)?;
        }
        let weight_files = weights::weight_files(&fetcher)?;
        // A Hub snapshot is a folder with the repository's layout, like a local checkout.
        let dir = config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();

        // Parsed once: the architecture is checked before any weight file is opened.
        let config = read_json(&config_path)?;
        let model_config = ModelConfig::parse(&config, &config_path)?;
        let dtype = match options.dtype {
            Some(d) => d,
            None if options.device.is_cpu() => DType::F32,
            None => checkpoint_dtype(&config).unwrap_or(DType::BF16),
        };
        let vb =
            weights::var_builder(&weight_files, model_config.layout(), dtype, &options.device)?;
        // Quantized as each decoder layer loads; the report then only counts (quantizing a
        // quantized layer is a no-op).
        let mut model = Model::new(&model_config, vb, options.quantization)?;
        let quantized = match options.quantization {
            Some(kind) => Some(model.quantize_decoder(kind)?),
            None => None,
        };

        let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
        let special_tokens = SpecialTokens::from_dir(&dir)?;
        let template = match ChatTemplates::from_dir(&dir) {
            Ok(t) => Some(t.select(None, false)?.clone()),
            Err(vlm_prompt::PromptError::NoChatTemplate { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let processor = load_processor(&model, &tokenizer, &dir, options)?;
        let eos_ids = eos_token_ids(&dir, &config)?;
        Ok(Self {
            model,
            tokenizer,
            template,
            special_tokens,
            processor,
            eos_ids,
            device: options.device.clone(),
            dtype,
            image_limits: options.image_limits,
            dir,
            load_ms: start.elapsed().as_secs_f64() * 1e3,
            quantized,
        })
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The image processor of a fixed-resolution model (LLaVA); `None` for the others, see
    /// [`Vlm::qwen_processors`] and [`Vlm::idefics3_processor`].
    pub fn processor(&self) -> Option<&ImageProcessor> {
        match &self.processor {
            Processor::Fixed(p) => Some(p),
            _ => None,
        }
    }

    /// The image and video processors of a Qwen2-VL-family model.
    pub fn qwen_processors(&self) -> Option<(&Qwen2VlImageProcessor, &Qwen2VlVideoProcessor)> {
        match &self.processor {
            Processor::Qwen { image, video } => Some((image, video)),
            _ => None,
        }
    }

    /// The image processor of an Idefics3 / SmolVLM model.
    pub fn idefics3_processor(&self) -> Option<&Idefics3ImageProcessor> {
        match &self.processor {
            Processor::Idefics3 { image, .. } => Some(image),
            _ => None,
        }
    }

    /// Token ids that end generation (from `generation_config.json` and `config.json`).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The activation dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The folder the checkpoint was read from (a Hub snapshot folder for Hub sources).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What load-time quantization did (`None` without [`LoadOptions::quantization`]).
    pub fn quantize_report(&self) -> Option<QuantizeReport> {
        self.quantized
    }

    /// Milliseconds spent in [`Vlm::load`].
    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    /// Decodes an image file with this model's decode limits.
    pub fn load_image(&self, path: impl AsRef<Path>) -> Result<RgbImage> {
        Ok(vlm_preprocess::load_image_with_limits(
            path.as_ref(),
            self.image_limits,
        )?)
    }

    /// Loads a video: one animated GIF, or its frames as image files in display order. `fps`
    /// overrides the GIF's timing; for frame files it is the only source (transformers assumes
    /// 24 when it is unknown). Decoding is bounded per frame by this model's image limits.
    pub fn load_video(&self, paths: &[impl AsRef<Path>], fps: Option<f64>) -> Result<Video> {
        let limits = VideoLimits {
            frame: self.image_limits,
            ..VideoLimits::default()
        };
        let is_gif = |p: &Path| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("gif"))
        };
        let mut video = match paths {
            [] => {
                return Err(Error::InvalidOption(
                    "a video needs at least one file (frames or a GIF)".into(),
                ))
            }
            [one] if is_gif(one.as_ref()) => Video::from_gif_with_limits(one.as_ref(), &limits)
                .map_err(|source| Error::Video { index: 0, source })?,
            many => Video::from_frame_files_with_limits(many, fps, &limits)
                .map_err(|source| Error::Video { index: 0, source })?,
        };
        if fps.is_some() {
            video.fps = fps;
        }
        Ok(video)
    }

    /// Renders `messages` with the chat template (with the assistant header appended).
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        let Some(template) = &self.template else {
            return Err(Error::InvalidOption(format!(
                "{} has no chat template; pass a pre-formatted prompt instead",
                self.dir.display()
            )));
        };
        let ctx = TemplateContext::new(self.special_tokens.clone()).with_generation_prompt(true);
        Ok(template.render(messages, &ctx)?)
    }

    /// Templating, tokenization, image-token expansion and image preprocessing.
    pub fn prepare(&self, request: &Request) -> Result<Prepared> {
        let prompt = self.render(&request.messages)?;
        self.prepare_prompt(prompt, &request.images, &request.videos)
    }

    /// Like [`Vlm::prepare`] for an already-rendered prompt that contains the media markers.
    pub fn prepare_prompt(
        &self,
        prompt: String,
        images: &[RgbImage],
        videos: &[Video],
    ) -> Result<Prepared> {
        let mut prepared_tiles = Prepared::default();
        // transformers' processor skips the tokenizer's own special tokens when the template
        // already starts with BOS, so BOS is never doubled.
        let starts_with_bos = self
            .special_tokens
            .bos
            .as_deref()
            .is_some_and(|b| prompt.starts_with(b));
        let image_token = self.model.image_token_id();
        let mut idefics3_text = None;
        if let Processor::Idefics3 { .. } = &self.processor {
            if !videos.is_empty() {
                return Err(Error::InvalidOption(format!(
                    "{} does not take videos ({} given)",
                    self.model.architecture(),
                    videos.len()
                )));
            }
        }
        if let Processor::Idefics3 { image, tokens } = &self.processor {
            let mut tiles = Vec::with_capacity(images.len());
            for (index, img) in images.iter().enumerate() {
                tiles.push(
                    image
                        .process(img)
                        .map_err(|source| Error::Image { index, source })?,
                );
            }
            let grids: Vec<(usize, usize)> = tiles.iter().map(|t| (t.rows, t.cols)).collect();
            idefics3_text = Some(expand_idefics3_prompt(&prompt, &grids, tokens)?);
            stack_tiles(&tiles, &self.device, &mut prepared_tiles)?;
            prepared_tiles.tile_grids = grids;
        }
        let text = idefics3_text.as_deref().unwrap_or(&prompt);
        let ids = self.tokenizer.encode(text, !starts_with_bos)?;
        let mut prepared = Prepared {
            prompt,
            ..prepared_tiles
        };
        let input_ids = match &self.processor {
            Processor::Fixed(processor) => {
                if !videos.is_empty() {
                    return Err(Error::InvalidOption(format!(
                        "{} does not take videos ({} given)",
                        self.model.architecture(),
                        videos.len()
                    )));
                }
                let per_image = self.model.tokens_per_image().unwrap_or(0);
                let input_ids =
                    expand_image_tokens(&ids, image_token, &vec![per_image; images.len()])?;
                if !images.is_empty() {
                    let mut rows = Vec::with_capacity(images.len());
                    for (index, image) in images.iter().enumerate() {
                        let px = processor
                            .process(image)
                            .map_err(|source| Error::Image { index, source })?;
                        let [c, h, w] = px.shape;
                        rows.push(Tensor::from_vec(px.data, (c, h, w), &self.device)?);
                    }
                    prepared.pixel_values = Some(Tensor::stack(&rows, 0)?);
                }
                input_ids
            }
            Processor::Qwen { image, video } => {
                let image_patches = images
                    .iter()
                    .enumerate()
                    .map(|(index, img)| {
                        image
                            .process(img)
                            .map_err(|source| Error::Image { index, source })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let processed_videos = videos
                    .iter()
                    .enumerate()
                    .map(|(index, v)| {
                        video
                            .process(v)
                            .map_err(|source| Error::Video { index, source })
                    })
                    .collect::<Result<Vec<_>>>()?;
                // transformers stores `second_per_grid_ts` as a float32 tensor.
                prepared.video_seconds_per_grid = processed_videos
                    .iter()
                    .map(|v| Some(v.second_per_grid_t as f32))
                    .collect();
                (prepared.pixel_values, prepared.image_grids) =
                    stack_patches(&image_patches, &self.device)?;
                (prepared.video_pixel_values, prepared.video_grids) =
                    stack_patches(processed_videos.iter().map(|v| &v.patches), &self.device)?;
                let merge = image.merge_size().pow(2).max(1);
                let tokens = |grids: &[[usize; 3]]| -> Vec<usize> {
                    grids.iter().map(|g| g[0] * g[1] * g[2] / merge).collect()
                };
                let ids = expand_image_tokens(&ids, image_token, &tokens(&prepared.image_grids))?;
                let video_token = self.model.video_token_id().unwrap_or(u32::MAX);
                expand_video_tokens(&ids, video_token, &tokens(&prepared.video_grids))?
            }
            // Expanded as text above.
            Processor::Idefics3 { .. } => ids,
            Processor::Anyres(processor) => {
                if !videos.is_empty() {
                    return Err(Error::InvalidOption(format!(
                        "{} does not take videos ({} given)",
                        self.model.architecture(),
                        videos.len()
                    )));
                }
                // OneVision tiles an image only when it is alone in the conversation.
                let tiled = processor.tiles_in_prompt_of(images.len());
                let mut data = Vec::new();
                let mut view_shape = [0usize; 3];
                for (index, img) in images.iter().enumerate() {
                    let px = if tiled {
                        processor.process(img)
                    } else {
                        processor.process_untiled(img)
                    }
                    .map_err(|source| Error::Image { index, source })?;
                    let [views, c, h, w] = px.shape;
                    view_shape = [c, h, w];
                    prepared.views_per_image.push(views);
                    let (ih, iw) = px.image_size;
                    prepared.image_sizes.push((ih as usize, iw as usize));
                    data.extend_from_slice(&px.data);
                }
                if !images.is_empty() {
                    let total: usize = prepared.views_per_image.iter().sum();
                    let [c, h, w] = view_shape;
                    prepared.pixel_values =
                        Some(Tensor::from_vec(data, (total, c, h, w), &self.device)?);
                }
                let counts = self.model.anyres_token_counts(&prepared.image_sizes)?;
                expand_image_tokens(&ids, image_token, &counts)?
            }
        };
        let context = self.model.decoder().config().max_position_embeddings;
        if input_ids.len() > context {
            return Err(Error::PromptTooLong {
                prompt_tokens: input_ids.len(),
                context,
            });
        }
        prepared.input_ids = input_ids;
        Ok(prepared)
    }

    /// Input embeddings of a prepared request (runs the vision tower and projector).
    pub fn embed(&self, prepared: &Prepared) -> Result<Tensor> {
        self.model.embed(prepared, self.dtype)
    }

    /// Logits `(seq, vocab)` in f32 for every prompt position (one forward, fresh cache).
    pub fn prompt_logits(&self, prepared: &Prepared) -> Result<Tensor> {
        // Positions first: for Qwen2-VL they check the placeholder runs against the grids
        // before the vision tower runs.
        let positions = self.model.prompt_positions(prepared)?;
        let embeds = self.embed(prepared)?;
        let decoder = self.model.decoder();
        let mut cache = decoder.new_cache();
        let hidden = self.prefill(&positions, &embeds, &mut cache)?;
        Ok(decoder.logits(&hidden)?.squeeze(0)?.to_dtype(DType::F32)?)
    }

    /// Runs prompt embeddings `(1, s, h)` into an empty `cache` at `positions` (from
    /// [`Model::prompt_positions`]) and returns the final hidden states.
    pub(crate) fn prefill(
        &self,
        positions: &Positions,
        embeds: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let n = embeds.dim(1)?;
        let tensor = positions.prompt_tensor(n, &self.device)?;
        let hidden = self
            .model
            .decoder()
            .forward_embeds(embeds, &tensor, cache)?;
        Ok(hidden)
    }

    /// Generates an answer, calling `on_token` for every new token (return `false` to stop).
    pub fn generate(
        &self,
        request: &Request,
        params: &GenerateParams,
        on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<Generation> {
        let prepared = self.prepare(request)?;
        self.generate_prepared(&prepared, params, on_token)
    }

    /// [`Vlm::generate`] for already-prepared inputs.
    pub fn generate_prepared(
        &self,
        prepared: &Prepared,
        params: &GenerateParams,
        on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<Generation> {
        let mut generator = Generator::new(self, params)?;
        generator.run(prepared, on_token)
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }
}

fn checkpoint_dtype(config: &Value) -> Option<DType> {
    let name = config
        .get("dtype")
        .or_else(|| config.get("torch_dtype"))
        .and_then(Value::as_str)?;
    match name {
        "float32" => Some(DType::F32),
        "float16" => Some(DType::F16),
        "bfloat16" => Some(DType::BF16),
        _ => None,
    }
}

fn ids_of(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// EOS ids: `generation_config.json` first (what `generate` uses), then `config.json` and its
/// `text_config`; duplicates removed, order kept.
fn eos_token_ids(dir: &Path, config: &Value) -> Result<Vec<u32>> {
    let gen = dir.join("generation_config.json");
    let gen = if gen.is_file() {
        Some(read_json(&gen)?)
    } else {
        None
    };
    let mut ids = Vec::new();
    for json in gen.iter().chain(std::iter::once(config)) {
        ids.extend(ids_of(json.get("eos_token_id")));
        ids.extend(ids_of(
            json.get("text_config").and_then(|t| t.get("eos_token_id")),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    Ok(ids)
}
