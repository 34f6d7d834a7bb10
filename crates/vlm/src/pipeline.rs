//! [`Vlm`]: a loaded checkpoint with its tokenizer, chat template and image processor, and the
//! generation loop.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use vlm_core::nn::KvCache;
use vlm_preprocess::image::RgbImage;
use vlm_preprocess::{DecodeLimits, ImageProcessor, ImageProcessorConfig};
use vlm_prompt::{
    expand_image_tokens, ChatTemplate, ChatTemplates, Message, SpecialTokens, TemplateContext,
    Tokenizer,
};

use crate::generate::{GenerateParams, Generation, Generator, TokenEvent};
use crate::model::{Model, ModelConfig};
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
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            image_limits: DecodeLimits::default(),
        }
    }
}

/// A conversation and its images, in the order their placeholders appear.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The chat messages (text and image parts).
    pub messages: Vec<Message>,
    /// Decoded images, one per image part, in order.
    pub images: Vec<RgbImage>,
}

impl Request {
    /// One user turn: the images first, then `prompt` (how a plain prompt with N images is laid
    /// out).
    pub fn new(prompt: impl Into<String>, images: Vec<RgbImage>) -> Self {
        Self {
            messages: vec![Message::user_with_images(images.len(), prompt)],
            images,
        }
    }
}

/// Model inputs after templating, tokenization and preprocessing.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The rendered prompt text.
    pub prompt: String,
    /// Token ids with every image placeholder expanded to its feature count.
    pub input_ids: Vec<u32>,
    /// Pixel values `(n_images, 3, h, w)`, or `None` for a text-only prompt.
    pub pixel_values: Option<Tensor>,
}

/// A loaded vision-language model, ready to answer requests. Stateless between calls: every
/// [`Vlm::generate`] call owns its KV cache.
#[derive(Debug)]
pub struct Vlm {
    model: Model,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    special_tokens: SpecialTokens,
    processor: ImageProcessor,
    eos_ids: Vec<u32>,
    device: Device,
    dtype: DType,
    image_limits: DecodeLimits,
    dir: PathBuf,
    load_ms: f64,
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
        let vb = weights::var_builder(&weight_files, dtype, &options.device)?;
        let model = Model::new(&model_config, vb)?;

        let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
        let special_tokens = SpecialTokens::from_dir(&dir)?;
        let template = match ChatTemplates::from_dir(&dir) {
            Ok(t) => Some(t.select(None, false)?.clone()),
            Err(vlm_prompt::PromptError::NoChatTemplate { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let processor = ImageProcessor::from_config(&ImageProcessorConfig::from_dir(&dir)?)?;
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

    /// The image processor.
    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
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
        self.prepare_prompt(prompt, &request.images)
    }

    /// Like [`Vlm::prepare`] for an already-rendered prompt that contains the image markers.
    pub fn prepare_prompt(&self, prompt: String, images: &[RgbImage]) -> Result<Prepared> {
        // transformers' processor skips the tokenizer's own special tokens when the template
        // already starts with BOS, so BOS is never doubled.
        let starts_with_bos = self
            .special_tokens
            .bos
            .as_deref()
            .is_some_and(|b| prompt.starts_with(b));
        let ids = self.tokenizer.encode(&prompt, !starts_with_bos)?;
        let counts = vec![self.model.tokens_per_image(); images.len()];
        let input_ids = expand_image_tokens(&ids, self.model.image_token_id(), &counts)?;
        let context = self.model.decoder().config().max_position_embeddings;
        if input_ids.len() > context {
            return Err(Error::PromptTooLong {
                prompt_tokens: input_ids.len(),
                context,
            });
        }
        let pixel_values = if images.is_empty() {
            None
        } else {
            let mut rows = Vec::with_capacity(images.len());
            for (index, image) in images.iter().enumerate() {
                let px = self
                    .processor
                    .process(image)
                    .map_err(|source| Error::Image { index, source })?;
                let [c, h, w] = px.shape;
                rows.push(Tensor::from_vec(px.data, (c, h, w), &self.device)?);
            }
            Some(Tensor::stack(&rows, 0)?)
        };
        Ok(Prepared {
            prompt,
            input_ids,
            pixel_values,
        })
    }

    /// Input embeddings of a prepared request (runs the vision tower and projector).
    pub fn embed(&self, prepared: &Prepared) -> Result<Tensor> {
        let features = match &prepared.pixel_values {
            Some(px) => Some(self.model.image_features(&px.to_dtype(self.dtype)?)?),
            None => None,
        };
        self.model
            .embed_with_images(&prepared.input_ids, features.as_ref())
    }

    /// Logits `(seq, vocab)` in f32 for every prompt position (one forward, fresh cache).
    pub fn prompt_logits(&self, prepared: &Prepared) -> Result<Tensor> {
        let embeds = self.embed(prepared)?;
        let decoder = self.model.decoder();
        let mut cache = decoder.new_cache();
        let hidden = self.prefill(&embeds, &mut cache)?;
        Ok(decoder.logits(&hidden)?.squeeze(0)?.to_dtype(DType::F32)?)
    }

    /// Runs prompt embeddings `(1, s, h)` at positions `0..s` into an empty `cache` and returns
    /// the final hidden states.
    pub(crate) fn prefill(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let n = embeds.dim(1)? as u32;
        let positions = Tensor::arange(0u32, n, &self.device)?.unsqueeze(0)?;
        Ok(self
            .model
            .decoder()
            .forward_embeds(embeds, &positions, cache)?)
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
