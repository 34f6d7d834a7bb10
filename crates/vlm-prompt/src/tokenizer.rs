//! A thin wrapper over [`tokenizers::Tokenizer`] and an incremental detokenizer.

use std::path::Path;

use crate::error::{PromptError, Result};

/// A Hugging Face fast tokenizer loaded from `tokenizer.json`.
///
/// Encoding splits added tokens (`<image>`, `<|im_start|>`, ...) out of raw text exactly as the
/// Python `tokenizer(text)` call does, so a rendered chat prompt can be encoded directly.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| PromptError::TokenizerLoad {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Self { inner })
    }

    /// Loads `tokenizer.json` from a model directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("tokenizer.json"))
    }

    /// Parses a `tokenizer.json` document held in memory; `origin` names it in errors.
    pub fn from_json_bytes(bytes: &[u8], origin: impl AsRef<Path>) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| PromptError::TokenizerLoad {
                path: origin.as_ref().to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Self { inner })
    }

    /// Wraps an already built [`tokenizers::Tokenizer`].
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Self {
        Self { inner }
    }

    /// The wrapped [`tokenizers::Tokenizer`].
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encodes `text` into token ids.
    ///
    /// `add_special_tokens` runs the post-processor (e.g. prepends `<s>` for Llama-style
    /// tokenizers). A prompt rendered by a chat template usually already contains its BOS token;
    /// transformers' `apply_chat_template(tokenize=True)` encodes it with `add_special_tokens =
    /// false`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding =
            self.inner
                .encode(text, add_special_tokens)
                .map_err(|e| PromptError::Tokenizer {
                    operation: "encode the text",
                    message: e.to_string(),
                })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes token ids into text; `skip_special_tokens` drops special tokens such as `</s>`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| PromptError::Tokenizer {
                operation: "decode ids",
                message: e.to_string(),
            })
    }

    /// The id of `token`, if it is in the vocabulary (added tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The id of `token`, or an error naming the token and why it was needed.
    pub fn require_token(&self, token: &str, purpose: &'static str) -> Result<u32> {
        self.token_to_id(token)
            .ok_or_else(|| PromptError::UnknownToken {
                token: token.to_string(),
                purpose,
            })
    }

    /// The token string of `id`, if the id is in the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The number of tokens including added tokens: Python's `len(tokenizer)`.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Starts an incremental detokenizer over this tokenizer.
    pub fn stream(&self, skip_special_tokens: bool) -> TokenStream<'_> {
        TokenStream::new(self, skip_special_tokens)
    }
}

/// Incremental detokenizer: push generated ids one at a time, get back only newly completed text.
///
/// Decoding ids one by one is wrong for two reasons: a byte-level token may hold only part of a
/// UTF-8 character (emoji are often split over several tokens), and some decoders change a
/// token's text depending on its neighbours (SentencePiece's leading-space handling). So, as
/// text-generation-inference does, the stream keeps two offsets into the ids: it decodes the window
/// `ids[prefix_offset..]`, compares it with the already emitted `ids[prefix_offset..read_offset]`,
/// and emits the difference only when the window does not end in U+FFFD (an incomplete
/// character). The window then slides forward, so each push decodes a few tokens, not the whole
/// sequence.
#[derive(Debug)]
pub struct TokenStream<'a> {
    tokenizer: &'a Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl<'a> TokenStream<'a> {
    /// A new, empty stream.
    pub fn new(tokenizer: &'a Tokenizer, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one token id; returns the text it completes, if any.
    ///
    /// The returned text never contains a partial UTF-8 character.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let window = self.decode(self.prefix_offset, self.ids.len())?;
        if window.len() > prefix.len() && !window.ends_with('\u{FFFD}') {
            // The decoder may rewrite the prefix's last character once more bytes arrive; emit
            // only when the window really extends what was emitted.
            if let Some(new) = window.strip_prefix(prefix.as_str()) {
                let new = new.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                return Ok(Some(new));
            }
        }
        Ok(None)
    }

    /// Flushes what is still held back (an incomplete character at the very end of generation is
    /// emitted as U+FFFD, as a full decode would show it).
    pub fn finish(&mut self) -> Result<Option<String>> {
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let window = self.decode(self.prefix_offset, self.ids.len())?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        let new = match window.strip_prefix(prefix.as_str()) {
            Some(new) => new.to_string(),
            // The held-back tokens changed how the prefix decodes; what was already emitted cannot
            // be taken back, so emit the part after the longest common prefix.
            None => {
                let common = common_prefix_len(&prefix, &window);
                window[common..].to_string()
            }
        };
        Ok((!new.is_empty()).then_some(new))
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    fn decode(&self, start: usize, end: usize) -> Result<String> {
        match self.ids.get(start..end) {
            Some(ids) if !ids.is_empty() => self.tokenizer.decode(ids, self.skip_special_tokens),
            _ => Ok(String::new()),
        }
    }
}

/// Byte length of the longest common prefix of `a` and `b` that ends on a character boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| a.len().min(b.len()))
}
