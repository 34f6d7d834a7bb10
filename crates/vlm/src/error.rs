//! The facade's error type.

use std::path::PathBuf;

/// Everything that can fail while loading a model or generating with it.
///
/// Each variant says what was expected, what was found, and where (file, tensor key, image
/// index).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A required file is missing from the model folder or Hub repository.
    #[error("missing file `{file}` in {location}")]
    MissingFile {
        /// The file name looked for.
        file: String,
        /// The folder or Hub repository searched.
        location: String,
    },
    /// A file could not be read.
    #[error("could not read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file is malformed or has unexpected content.
    #[error("invalid {path}: {message}")]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The checkpoint's architecture is not one this crate implements.
    #[error("unsupported architecture `{found}` in {path}; supported: {supported}")]
    UnsupportedArchitecture {
        /// The `model_type` / architecture found.
        found: String,
        /// The config file.
        path: PathBuf,
        /// Comma-separated list of supported values.
        supported: String,
    },
    /// A safetensors file is unreadable (truncated, corrupt header, ...).
    #[error("invalid safetensors file {path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        message: String,
    },
    /// A GGUF file that cannot be used (unsupported architecture or tokenizer, bad metadata).
    #[error("GGUF file {path}: {message}")]
    Gguf {
        /// The file.
        path: String,
        /// What was expected and what was found.
        message: String,
    },
    /// Building the model from its weights failed (missing tensor, wrong shape, ...).
    #[error("loading weights: {0}")]
    Weights(String),
    /// Downloading from, or looking up, the Hugging Face Hub failed.
    #[error("Hugging Face Hub ({repo}): {message}")]
    Hub {
        /// `owner/name@revision`.
        repo: String,
        /// The hub-hub error.
        message: String,
    },
    /// An image could not be decoded or preprocessed.
    #[error("image {index}: {source}")]
    Image {
        /// Index of the image in the request.
        index: usize,
        /// The preprocessing error.
        source: vlm_preprocess::PreprocessError,
    },
    /// A video could not be decoded or preprocessed.
    #[error("video {index}: {source}")]
    Video {
        /// Index of the video in the request.
        index: usize,
        /// The preprocessing error.
        source: vlm_preprocess::PreprocessError,
    },
    /// The image processor config is invalid.
    #[error(transparent)]
    Preprocess(#[from] vlm_preprocess::PreprocessError),
    /// Tokenization or chat-template rendering failed.
    #[error(transparent)]
    Prompt(#[from] vlm_prompt::PromptError),
    /// The model itself failed (including image placeholder / feature count mismatches).
    #[error(transparent)]
    Model(#[from] vlm_core::Error),
    /// The prompt does not fit the model's context.
    #[error(
        "the prompt takes {prompt_tokens} tokens (with image tokens) but the model's context is \
         {context} tokens"
    )]
    PromptTooLong {
        /// Prompt length after image-token expansion.
        prompt_tokens: usize,
        /// `max_position_embeddings`.
        context: usize,
    },
    /// An invalid option value (dtype, device, sampling parameter, ...).
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(vlm_core::Error::Candle(e))
    }
}

/// Result with the facade's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
