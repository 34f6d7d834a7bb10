//! [`Vlm`]: a loaded checkpoint with its tokenizer, chat template and image processor, and the
//! generation loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use vlm_core::models::{MediaInputs, SequenceState, VisionLanguageModel};
use vlm_core::text::QuantizeReport;
use vlm_preprocess::image::RgbImage;
use vlm_preprocess::{DecodeLimits, Video, VideoLimits};
use vlm_prompt::{ChatTemplate, ChatTemplates, Message, SpecialTokens, TemplateContext, Tokenizer};

use crate::families::{self, LoadParts, MediaProcessor, PromptText};
use crate::generate::{GenerateParams, Generation, Generator, TokenEvent};
use crate::options::LoadOptions;
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
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The rendered prompt text.
    pub prompt: String,
    /// Token ids with every image and video placeholder expanded to its feature count.
    pub input_ids: Vec<u32>,
    /// The preprocessed images and videos in the loaded family's own form (pixel tensors and
    /// what its model needs with them: patch grids, tile masks, image sizes). Inspect them with
    /// `prepared.media.downcast_ref::<T>()` for the family's `T` (e.g.
    /// `vlm_core::models::QwenMedia`).
    pub media: Arc<dyn MediaInputs>,
}

/// A loaded vision-language model, ready to answer requests. Stateless between calls: every
/// [`Vlm::generate`] call owns its KV cache.
#[derive(Debug)]
pub struct Vlm {
    model: Arc<dyn VisionLanguageModel>,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    special_tokens: SpecialTokens,
    processor: Box<dyn MediaProcessor>,
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

        // Parsed once: the architecture and the media options are checked before any weight
        // file is opened.
        let config = read_json(&config_path)?;
        let family = families::parse_config(&config, &config_path)?;
        let model_type = config
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        options.media.check(model_type, family.media_options())?;
        let dtype = match options.dtype {
            Some(d) => d,
            None if options.device.is_cpu() => DType::F32,
            None => checkpoint_dtype(&config).unwrap_or(DType::BF16),
        };
        let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
        let special_tokens = SpecialTokens::from_dir(&dir)?;
        let template = match ChatTemplates::from_dir(&dir) {
            Ok(t) => Some(t.select(None, false)?.clone()),
            Err(vlm_prompt::PromptError::NoChatTemplate { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        // The language model's layers are quantized as they load.
        let vb = weights::var_builder(&weight_files, family.layout(), dtype, &options.device)?;
        let loaded = family.load(LoadParts {
            vb,
            quantization: options.quantization,
            dir: &dir,
            tokenizer: &tokenizer,
            media: &options.media,
        })?;
        let eos_ids = eos_token_ids(&dir, &config)?;
        Ok(Self {
            model: loaded.model,
            tokenizer,
            template,
            special_tokens,
            processor: loaded.processor,
            eos_ids,
            device: options.device.clone(),
            dtype,
            image_limits: options.image_limits,
            dir,
            load_ms: start.elapsed().as_secs_f64() * 1e3,
            quantized: loaded.quantized,
        })
    }

    /// The model. Its family's own type is reachable with `downcast_ref` (e.g. to run a vision
    /// tower alone); generation needs only the interface.
    pub fn model(&self) -> &dyn VisionLanguageModel {
        self.model.as_ref()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
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
        if self.model.video_token_id().is_none() && !videos.is_empty() {
            return Err(Error::InvalidOption(format!(
                "{} does not take videos ({} given)",
                self.model.architecture(),
                videos.len()
            )));
        }
        // transformers' processor skips the tokenizer's own special tokens when the template
        // already starts with BOS, so BOS is never doubled.
        let starts_with_bos = self
            .special_tokens
            .bos
            .as_deref()
            .is_some_and(|b| prompt.starts_with(b));
        let text = PromptText {
            text: &prompt,
            tokenizer: &self.tokenizer,
            add_special_tokens: !starts_with_bos,
        };
        let expanded = self
            .processor
            .prepare(&text, images, videos, &self.device)?;
        let context = self.model.context_length();
        if expanded.input_ids.len() > context {
            return Err(Error::PromptTooLong {
                prompt_tokens: expanded.input_ids.len(),
                context,
            });
        }
        Ok(Prepared {
            prompt,
            input_ids: expanded.input_ids,
            media: expanded.media,
        })
    }

    /// Input embeddings of a prepared request (runs the vision tower and projector).
    pub fn embed(&self, prepared: &Prepared) -> Result<Tensor> {
        Ok(self
            .model
            .embed(&prepared.input_ids, prepared.media.as_ref())?)
    }

    /// The empty decoding state of a prepared request. Created before [`Vlm::embed`]: a family
    /// whose positions depend on the media (Qwen2-VL) checks the placeholders against the
    /// grids here, before the vision tower runs.
    pub(crate) fn new_sequence(&self, prepared: &Prepared) -> Result<Box<dyn SequenceState>> {
        Ok(self
            .model
            .new_sequence(&prepared.input_ids, prepared.media.as_ref())?)
    }

    /// Logits `(seq, vocab)` in f32 for every prompt position (one forward, fresh state).
    pub fn prompt_logits(&self, prepared: &Prepared) -> Result<Tensor> {
        let mut sequence = self.new_sequence(prepared)?;
        let embeds = self.embed(prepared)?;
        let hidden = self.model.prefill(sequence.as_mut(), &embeds)?;
        Ok(self
            .model
            .logits(&hidden)?
            .squeeze(0)?
            .to_dtype(DType::F32)?)
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
