//! The crate's single error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading a tokenizer or chat template, rendering a prompt or
/// assembling its chunks. Each message says what was expected, what was found and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// A file could not be read.
    #[error("could not read {path}: {source}")]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// A file is not valid JSON.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// The file that was being parsed.
        path: PathBuf,
        /// The parse error, with line and column.
        source: serde_json::Error,
    },

    /// A configuration file holds a value of the wrong shape.
    #[error("unexpected value for `{key}` in {path}: expected {expected}, found {found}")]
    Config {
        /// The file holding the value.
        path: PathBuf,
        /// The JSON key (or key path) of the value.
        key: String,
        /// What the key should hold.
        expected: &'static str,
        /// What it holds instead (abbreviated JSON).
        found: String,
    },

    /// `tokenizer.json` could not be loaded by the `tokenizers` crate.
    #[error("could not load tokenizer from {path}: {message}")]
    TokenizerLoad {
        /// The `tokenizer.json` file.
        path: PathBuf,
        /// The message of the `tokenizers` error.
        message: String,
    },

    /// Encoding or decoding failed inside the `tokenizers` crate.
    #[error("tokenizer could not {operation}: {message}")]
    Tokenizer {
        /// What was being done (`"encode the text"`, `"decode ids"`, ...).
        operation: &'static str,
        /// The message of the `tokenizers` error.
        message: String,
    },

    /// A token that must be in the vocabulary is not.
    #[error("token `{token}` is not in the tokenizer's vocabulary (needed for {purpose})")]
    UnknownToken {
        /// The missing token.
        token: String,
        /// Why it was looked up.
        purpose: &'static str,
    },

    /// No chat template was found in a model directory.
    #[error(
        "no chat template in {dir}: expected chat_template.json, chat_template.jinja, \
         chat_templates/*.jinja or a `chat_template` key in tokenizer_config.json"
    )]
    NoChatTemplate {
        /// The directory that was searched.
        dir: PathBuf,
    },

    /// A named template was requested but the model does not provide it.
    #[error("no chat template named `{name}`: expected one of {available:?}")]
    UnknownTemplateName {
        /// The requested name.
        name: String,
        /// The names the model provides.
        available: Vec<String>,
    },

    /// The chat template's Jinja source does not compile.
    #[error("chat template `{name}` does not compile: {source:#}")]
    TemplateSyntax {
        /// The template's name (`default`, `tool_use`, ...).
        name: String,
        /// The minijinja error, with line information.
        source: minijinja::Error,
    },

    /// The template called `raise_exception(message)`: the conversation is not one the model
    /// supports (wrong role order, unsupported content, ...).
    #[error("chat template `{name}` rejected the conversation: {message}")]
    TemplateRaised {
        /// The template's name.
        name: String,
        /// The message the template passed to `raise_exception`.
        message: String,
    },

    /// Rendering the chat template failed for another reason.
    #[error("chat template `{name}` failed to render: {source:#}")]
    TemplateRender {
        /// The template's name.
        name: String,
        /// The minijinja error, with line information.
        source: minijinja::Error,
    },

    /// The messages or template arguments could not be turned into template values.
    #[error("invalid template input `{what}`: expected {expected}, found {found}")]
    TemplateInput {
        /// Which input (`messages`, a keyword argument name, ...).
        what: String,
        /// The expected shape.
        expected: &'static str,
        /// What was given (abbreviated JSON).
        found: String,
    },

    /// The number of image markers in a prompt differs from the number of images.
    #[error(
        "image count mismatch: the prompt has {markers} image marker(s) (token id {image_token_id}) \
         but {images} image(s) were given"
    )]
    ImageCountMismatch {
        /// Image marker tokens found in the prompt.
        markers: usize,
        /// Images (or feature counts) given.
        images: usize,
        /// The id of the image marker token.
        image_token_id: u32,
    },

    /// The number of video markers in a prompt differs from the number of videos.
    #[error(
        "video count mismatch: the prompt has {markers} video marker(s) (token id {video_token_id}) \
         but {videos} video(s) were given"
    )]
    VideoCountMismatch {
        /// Video marker tokens found in the prompt.
        markers: usize,
        /// Videos given.
        videos: usize,
        /// The id of the video marker token.
        video_token_id: u32,
    },
}

/// `Result` with [`PromptError`].
pub type Result<T, E = PromptError> = std::result::Result<T, E>;

/// Abbreviates a JSON value for error messages.
pub(crate) fn abbreviate(value: &serde_json::Value) -> String {
    const MAX: usize = 80;
    let text = value.to_string();
    if text.chars().count() <= MAX {
        text
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}...")
    }
}
