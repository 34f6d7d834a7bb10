//! Model families: what the facade needs from each one, and the registry that maps a
//! checkpoint's `model_type` to its family.
//!
//! A family parses its `config.json` ([`FamilyConfig`]), says how published checkpoints name
//! their weights and which [`MediaOption`]s it reads, and loads its model (a
//! [`VisionLanguageModel`] from `vlm-core`) with the [`MediaProcessor`] that turns a rendered
//! prompt and its images and videos into expanded token ids and the family's own
//! [`MediaInputs`]. Loading, generation and streaming only see these interfaces; [`REGISTRY`]
//! is the one table that names families.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use candle_nn::VarBuilder;
use serde_json::Value;
use vlm_core::models::{MediaInputs, VisionLanguageModel};
use vlm_core::nn::Quantization;
use vlm_core::text::QuantizeReport;
use vlm_preprocess::image::RgbImage;
use vlm_preprocess::Video;
use vlm_prompt::Tokenizer;

use crate::options::{MediaOption, MediaOptions};
use crate::weights::PrefixRule;
use crate::{Error, Result};

mod idefics3;
mod llava;
mod llava_next;
mod qwen2vl;

/// Parses a `config.json` of one `model_type` (the error: what serde or the family's checks
/// reported).
type ParseConfig = fn(&Value) -> std::result::Result<Box<dyn FamilyConfig>, String>;

/// `model_type` -> the family that loads it. Adding a family is one line here and a file in
/// this folder (see "Adding a model family" in the README).
const REGISTRY: &[(&str, ParseConfig)] = &[
    ("llava", llava::parse),
    ("llava_next", llava_next::parse_next),
    ("llava_onevision", llava_next::parse_onevision),
    ("qwen2_vl", qwen2vl::parse),
    ("qwen2_5_vl", qwen2vl::parse),
    ("idefics3", idefics3::parse),
];

/// The `model_type` values this crate can load, in the registry's order.
pub fn supported_model_types() -> impl ExactSizeIterator<Item = &'static str> {
    REGISTRY.iter().map(|(model_type, _)| *model_type)
}

/// Picks the family from `config`'s `model_type` and parses the config; `path` is for errors.
pub(crate) fn parse_config(config: &Value, path: &Path) -> Result<Box<dyn FamilyConfig>> {
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("<missing model_type>");
    let Some((_, parse)) = REGISTRY.iter().find(|(t, _)| *t == model_type) else {
        return Err(Error::UnsupportedArchitecture {
            found: model_type.to_string(),
            path: path.to_path_buf(),
            supported: supported_model_types().collect::<Vec<_>>().join(", "),
        });
    };
    parse(config).map_err(|message| Error::InvalidJson {
        path: path.to_path_buf(),
        message,
    })
}

/// A parsed `config.json` of one family.
pub(crate) trait FamilyConfig: Debug {
    /// How published checkpoints of this family name their weights, relative to the
    /// transformers 5 names the model code reads.
    fn layout(&self) -> &'static [PrefixRule];

    /// The media options this family reads; any other one given at load is an error.
    fn media_options(&self) -> &'static [MediaOption];

    /// Builds the model from `parts.vb` and its processor.
    fn load(&self, parts: LoadParts<'_>) -> Result<Loaded>;
}

/// What a family loads from.
pub(crate) struct LoadParts<'a> {
    /// The weights, renamed to transformers 5's layout.
    pub vb: VarBuilder<'a>,
    /// Load-time quantization of the language model's linear layers.
    pub quantization: Option<Quantization>,
    /// The checkpoint folder (processor configs).
    pub dir: &'a Path,
    /// The checkpoint's tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The caller's media options (only those in [`FamilyConfig::media_options`] are set).
    pub media: &'a MediaOptions,
}

/// A loaded family: its model and processor.
pub(crate) struct Loaded {
    pub model: Arc<dyn VisionLanguageModel>,
    pub processor: Box<dyn MediaProcessor>,
    /// What load-time quantization did.
    pub quantized: Option<QuantizeReport>,
}

/// A rendered prompt and how to tokenize it.
pub(crate) struct PromptText<'a> {
    pub text: &'a str,
    pub tokenizer: &'a Tokenizer,
    /// False when the template already starts with BOS (transformers' processors then skip
    /// the tokenizer's own special tokens, so BOS is never doubled).
    pub add_special_tokens: bool,
}

impl PromptText<'_> {
    /// Token ids of `text` (the prompt, or a family's expansion of it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text, self.add_special_tokens)?)
    }
}

/// A prompt ready for the model: placeholders expanded, media preprocessed.
pub(crate) struct Expanded {
    pub input_ids: Vec<u32>,
    pub media: Arc<dyn MediaInputs>,
}

/// A family's image (and video) preprocessing and placeholder expansion.
pub(crate) trait MediaProcessor: Debug + Send + Sync {
    /// The ids of `prompt` with every image and video marker expanded to its feature count,
    /// and the media as the family's model takes them. Images and videos are given in marker
    /// order; a family that takes no videos is never given any.
    fn prepare(
        &self,
        prompt: &PromptText<'_>,
        images: &[RgbImage],
        videos: &[Video],
        device: &Device,
    ) -> Result<Expanded>;
}

/// Wraps a freshly built model: the quantization report (quantizing again only counts, since
/// the layers were quantized as they loaded) and a shared handle.
fn finish<M: VisionLanguageModel>(
    mut model: M,
    quantization: Option<Quantization>,
) -> Result<(Arc<M>, Option<QuantizeReport>)> {
    let report = match quantization {
        Some(kind) => Some(model.decoder_mut().quantize(kind)?),
        None => None,
    };
    Ok((Arc::new(model), report))
}

/// Weight problems while building a model become [`Error::Weights`].
fn weights_error(e: vlm_core::Error) -> Error {
    match e {
        vlm_core::Error::Candle(c) => Error::Weights(c.to_string()),
        other => Error::Model(other),
    }
}

/// Preprocesses every image, numbering failures by the image's place in the prompt.
fn each_image<T>(
    images: &[RgbImage],
    mut f: impl FnMut(&RgbImage) -> vlm_preprocess::Result<T>,
) -> Result<Vec<T>> {
    images
        .iter()
        .enumerate()
        .map(|(index, img)| f(img).map_err(|source| Error::Image { index, source }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_and_supported_list_agree() {
        let listed: Vec<&str> = supported_model_types().collect();
        assert_eq!(listed.len(), REGISTRY.len());
        let mut unique = listed.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), listed.len(), "a model_type registered twice");
        for model_type in listed {
            // Every registered type reaches a family's parser (which may refuse a config that
            // holds nothing else), never the unsupported-architecture error.
            let config = serde_json::json!({ "model_type": model_type });
            let parsed = parse_config(&config, Path::new("config.json"));
            assert!(
                !matches!(parsed, Err(Error::UnsupportedArchitecture { .. })),
                "{model_type}: {parsed:?}"
            );
        }
        let config = serde_json::json!({ "model_type": "gpt2" });
        match parse_config(&config, Path::new("config.json")) {
            Err(Error::UnsupportedArchitecture {
                found, supported, ..
            }) => {
                assert_eq!(found, "gpt2");
                assert_eq!(
                    supported,
                    supported_model_types().collect::<Vec<_>>().join(", ")
                );
            }
            other => panic!("expected an unsupported architecture, got {other:?}"),
        }
    }
}
