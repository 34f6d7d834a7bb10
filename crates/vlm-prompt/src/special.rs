//! Special tokens from `tokenizer_config.json` / `special_tokens_map.json`.
//!
//! Mirrors `PreTrainedTokenizerBase._from_pretrained` in transformers 5
//! (`src/transformers/tokenization_utils_base.py`): the special tokens come from
//! `tokenizer_config.json`; only when that file has no `added_tokens_decoder` (very old
//! checkpoints) does the legacy `special_tokens_map.json` override them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{abbreviate, PromptError, Result};

/// One entry of `added_tokens_decoder`: an added token and how it is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedTokenInfo {
    /// The token text, e.g. `<image>`.
    pub content: String,
    /// Whether it is a special token (skipped by `decode(skip_special_tokens = true)`).
    pub special: bool,
    /// Whether whitespace on the left is absorbed into the token.
    pub lstrip: bool,
    /// Whether whitespace on the right is absorbed into the token.
    pub rstrip: bool,
    /// Whether the token only matches a whole word.
    pub single_word: bool,
    /// Whether the token is matched after normalization.
    pub normalized: bool,
}

/// The named special tokens a chat template sees, plus the added-token table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning-of-sequence token (`bos_token`).
    pub bos: Option<String>,
    /// End-of-sequence token (`eos_token`).
    pub eos: Option<String>,
    /// Padding token (`pad_token`).
    pub pad: Option<String>,
    /// Unknown token (`unk_token`).
    pub unk: Option<String>,
    /// Further special tokens (`extra_special_tokens`, formerly `additional_special_tokens`).
    pub extra: Vec<String>,
    /// `added_tokens_decoder`: id to added token.
    pub added_tokens: BTreeMap<u32, AddedTokenInfo>,
}

impl SpecialTokens {
    /// Reads `tokenizer_config.json` (and `special_tokens_map.json` when it applies) from a model
    /// directory. Missing files give empty special tokens, as transformers does.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let mut tokens = match read_json_if_exists(&config_path)? {
            Some(config) => Self::from_config_json(&config, &config_path)?,
            None => Self::default(),
        };
        if tokens.added_tokens.is_empty() {
            let map_path = dir.join("special_tokens_map.json");
            if let Some(map) = read_json_if_exists(&map_path)? {
                tokens.merge_special_tokens_map(&map, &map_path)?;
            }
        }
        Ok(tokens)
    }

    /// Parses the contents of a `tokenizer_config.json`; `path` is only used in error messages.
    pub fn from_config_json(config: &Value, path: &Path) -> Result<Self> {
        let Some(obj) = config.as_object() else {
            return Err(config_error(path, "<root>", "a JSON object", config));
        };
        let mut tokens = Self {
            bos: token_field(obj.get("bos_token"), path, "bos_token")?,
            eos: token_field(obj.get("eos_token"), path, "eos_token")?,
            pad: token_field(obj.get("pad_token"), path, "pad_token")?,
            unk: token_field(obj.get("unk_token"), path, "unk_token")?,
            ..Self::default()
        };
        for key in ["extra_special_tokens", "additional_special_tokens"] {
            tokens.add_extra(obj.get(key), path, key)?;
        }
        if let Some(decoder) = obj.get("added_tokens_decoder") {
            let Some(decoder) = decoder.as_object() else {
                return Err(config_error(
                    path,
                    "added_tokens_decoder",
                    "an object mapping ids to added tokens",
                    decoder,
                ));
            };
            for (id, entry) in decoder {
                let key = format!("added_tokens_decoder.{id}");
                let id: u32 = id.parse().map_err(|_| {
                    config_error(path, &key, "a token id as key", &Value::from(id.as_str()))
                })?;
                tokens
                    .added_tokens
                    .insert(id, added_token(entry, path, &key)?);
            }
        }
        Ok(tokens)
    }

    fn merge_special_tokens_map(&mut self, map: &Value, path: &Path) -> Result<()> {
        let Some(obj) = map.as_object() else {
            return Err(config_error(path, "<root>", "a JSON object", map));
        };
        for (key, slot) in [
            ("bos_token", &mut self.bos),
            ("eos_token", &mut self.eos),
            ("pad_token", &mut self.pad),
            ("unk_token", &mut self.unk),
        ] {
            if let Some(token) = token_field(obj.get(key), path, key)? {
                *slot = Some(token);
            }
        }
        for key in ["extra_special_tokens", "additional_special_tokens"] {
            self.add_extra(obj.get(key), path, key)?;
        }
        Ok(())
    }

    fn add_extra(&mut self, value: Option<&Value>, path: &Path, key: &str) -> Result<()> {
        let tokens: Vec<&Value> = match value {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Array(items)) => items.iter().collect(),
            // Model-specific named tokens, e.g. {"image_token": "<image>"}.
            Some(Value::Object(named)) => named.values().collect(),
            Some(other) => {
                return Err(config_error(path, key, "a list or object of tokens", other));
            }
        };
        for token in tokens {
            if let Some(token) = token_field(Some(token), path, key)? {
                if !self.extra.contains(&token) {
                    self.extra.push(token);
                }
            }
        }
        Ok(())
    }

    /// The id of the token whose content is `content`, looked up in `added_tokens_decoder`.
    pub fn added_token_id(&self, content: &str) -> Option<u32> {
        self.added_tokens
            .iter()
            .find(|(_, info)| info.content == content)
            .map(|(id, _)| *id)
    }
}

fn read_json_if_exists(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PromptError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| PromptError::Json {
            path: path.to_path_buf(),
            source,
        })
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| PromptError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| PromptError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn config_error(path: &Path, key: &str, expected: &'static str, found: &Value) -> PromptError {
    PromptError::Config {
        path: PathBuf::from(path),
        key: key.to_string(),
        expected,
        found: abbreviate(found),
    }
}

/// A special token given either as a string or as an AddedToken object `{"content": ...}`.
fn token_field(value: Option<&Value>, path: &Path, key: &str) -> Result<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v @ Value::Object(obj)) => match obj.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(config_error(
                path,
                key,
                "a string or an AddedToken object with a string `content`",
                v,
            )),
        },
        Some(other) => Err(config_error(
            path,
            key,
            "a string or an AddedToken object",
            other,
        )),
    }
}

fn added_token(entry: &Value, path: &Path, key: &str) -> Result<AddedTokenInfo> {
    let Some(content) = entry.get("content").and_then(Value::as_str) else {
        return Err(config_error(
            path,
            key,
            "an AddedToken object with a string `content`",
            entry,
        ));
    };
    let flag =
        |name: &str, default: bool| entry.get(name).and_then(Value::as_bool).unwrap_or(default);
    Ok(AddedTokenInfo {
        content: content.to_string(),
        special: flag("special", false),
        lstrip: flag("lstrip", false),
        rstrip: flag("rstrip", false),
        single_word: flag("single_word", false),
        normalized: flag("normalized", true),
    })
}
