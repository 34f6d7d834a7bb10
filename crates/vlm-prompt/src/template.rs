//! Hugging Face chat templates: finding them in a model directory and rendering them the way
//! transformers 5 does.
//!
//! Lookup mirrors `ProcessorMixin.from_pretrained` (`processing_utils.py`) followed by
//! `PreTrainedTokenizerBase._from_pretrained` (`tokenization_utils_base.py`):
//!
//! 1. `chat_template.json` (`{"chat_template": "..."}`), the legacy processor file; combining it
//!    with `chat_templates/*.jinja` is an error in transformers, and here too;
//! 2. `chat_template.jinja` (the `default` template) plus `chat_templates/<name>.jinja`;
//! 3. the `chat_template` key of `tokenizer_config.json`, a string or a list of
//!    `{"name": ..., "template": ...}`.
//!
//! The Jinja environment mirrors `_compile_jinja_template` (`utils/chat_template_utils.py`):
//! `trim_blocks` and `lstrip_blocks` on, `keep_trailing_newline` off (Jinja2's default), loop
//! controls, `raise_exception`, `strftime_now`, a `tojson` filter that is Python's `json.dumps`
//! with `ensure_ascii=False`, and Python string/dict methods (`.upper()`, `.items()`, ...).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::{Map, Value as Json};

use crate::error::{abbreviate, PromptError, Result};
use crate::message::Message;
use crate::python::{self, JsonOptions};
use crate::special::{read_json, SpecialTokens};

/// Name of the template used when none is requested.
pub const DEFAULT_TEMPLATE: &str = "default";
/// Name of the template transformers picks when tools are given and the model provides it.
pub const TOOL_USE_TEMPLATE: &str = "tool_use";

/// Where a model's chat templates were found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TemplateSource {
    /// The legacy processor file `chat_template.json`.
    ChatTemplateJson(PathBuf),
    /// `chat_template.jinja` and/or `chat_templates/*.jinja`.
    JinjaFiles(PathBuf),
    /// The `chat_template` key of `tokenizer_config.json`.
    TokenizerConfig(PathBuf),
    /// Given directly by the caller.
    Inline,
}

/// All chat templates of a model, by name (`default`, `tool_use`, ...).
#[derive(Debug, Clone)]
pub struct ChatTemplates {
    templates: BTreeMap<String, ChatTemplate>,
    source: TemplateSource,
}

impl ChatTemplates {
    /// Finds and compiles the chat templates of a model directory (see the module docs for the
    /// lookup order).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let named = read_named_jinja_files(&dir.join("chat_templates"))?;

        let legacy = dir.join("chat_template.json");
        if legacy.is_file() {
            if !named.is_empty() {
                return Err(PromptError::Config {
                    path: legacy,
                    key: "chat_template".into(),
                    expected: "either chat_template.json or chat_templates/*.jinja, not both",
                    found: format!(
                        "both, with templates {:?}",
                        named.keys().collect::<Vec<_>>()
                    ),
                });
            }
            let json = read_json(&legacy)?;
            let source = match json.get("chat_template") {
                Some(Json::String(s)) => s.clone(),
                other => {
                    return Err(PromptError::Config {
                        path: legacy,
                        key: "chat_template".into(),
                        expected: "a template string",
                        found: other.map(abbreviate).unwrap_or_else(|| "nothing".into()),
                    })
                }
            };
            return Self::from_sources(
                [(DEFAULT_TEMPLATE.to_string(), source)],
                TemplateSource::ChatTemplateJson(legacy),
            );
        }

        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() || !named.is_empty() {
            let mut sources = named;
            if jinja.is_file() {
                sources.insert(DEFAULT_TEMPLATE.to_string(), read_text(&jinja)?);
            }
            return Self::from_sources(sources, TemplateSource::JinjaFiles(dir.to_path_buf()));
        }

        let config = dir.join("tokenizer_config.json");
        if config.is_file() {
            let json = read_json(&config)?;
            match json.get("chat_template") {
                None | Some(Json::Null) => {}
                Some(value) => {
                    let sources = parse_config_templates(value, &config)?;
                    return Self::from_sources(sources, TemplateSource::TokenizerConfig(config));
                }
            }
        }
        Err(PromptError::NoChatTemplate {
            dir: dir.to_path_buf(),
        })
    }

    /// Compiles templates given as `(name, source)` pairs.
    pub fn from_sources(
        sources: impl IntoIterator<Item = (String, String)>,
        source: TemplateSource,
    ) -> Result<Self> {
        let templates = sources
            .into_iter()
            .map(|(name, text)| Ok((name.clone(), ChatTemplate::with_name(name, text)?)))
            .collect::<Result<_>>()?;
        Ok(Self { templates, source })
    }

    /// Where the templates were found.
    pub fn source(&self) -> &TemplateSource {
        &self.source
    }

    /// The template names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.templates.keys().map(String::as_str)
    }

    /// The template called `name`.
    pub fn get(&self, name: &str) -> Result<&ChatTemplate> {
        self.templates
            .get(name)
            .ok_or_else(|| PromptError::UnknownTemplateName {
                name: name.to_string(),
                available: self.templates.keys().cloned().collect(),
            })
    }

    /// Picks a template as transformers' `get_chat_template` does: the named one if `name` is
    /// given, else `tool_use` when tools are passed and it exists, else `default`.
    pub fn select(&self, name: Option<&str>, with_tools: bool) -> Result<&ChatTemplate> {
        match name {
            Some(name) => self.get(name),
            None if with_tools && self.templates.contains_key(TOOL_USE_TEMPLATE) => {
                self.get(TOOL_USE_TEMPLATE)
            }
            None => self.get(DEFAULT_TEMPLATE),
        }
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| PromptError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_named_jinja_files(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    let entries = std::fs::read_dir(dir).map_err(|source| PromptError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let path = entry
            .map_err(|source| PromptError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jinja"));
        if let Some(name) = name {
            out.insert(name.to_string(), read_text(&path)?);
        }
    }
    Ok(out)
}

fn parse_config_templates(value: &Json, path: &Path) -> Result<Vec<(String, String)>> {
    let bad = |found: &Json| PromptError::Config {
        path: path.to_path_buf(),
        key: "chat_template".into(),
        expected: "a template string or a list of {\"name\": ..., \"template\": ...}",
        found: abbreviate(found),
    };
    match value {
        Json::String(s) => Ok(vec![(DEFAULT_TEMPLATE.to_string(), s.clone())]),
        Json::Array(items) => items
            .iter()
            .map(|item| match (item.get("name"), item.get("template")) {
                (Some(Json::String(name)), Some(Json::String(template))) => {
                    Ok((name.clone(), template.clone()))
                }
                _ => Err(bad(item)),
            })
            .collect(),
        other => Err(bad(other)),
    }
}

/// Everything besides the messages that a chat template sees.
#[derive(Debug, Clone, Default)]
pub struct TemplateContext {
    /// Append the header that starts the assistant's answer.
    pub add_generation_prompt: bool,
    /// `bos_token`, `eos_token`, `pad_token` and `unk_token`; absent ones stay undefined.
    pub special_tokens: SpecialTokens,
    /// Tool JSON schemas (`tools`); `None` renders as Python `None`.
    pub tools: Option<Vec<Json>>,
    /// Retrieval documents (`documents`); `None` renders as Python `None`.
    pub documents: Option<Vec<Json>>,
    /// Further keyword arguments (`enable_thinking`, ...). They override the special tokens, as
    /// in transformers.
    pub kwargs: Map<String, Json>,
}

impl TemplateContext {
    /// A context with the given special tokens and no generation prompt.
    pub fn new(special_tokens: SpecialTokens) -> Self {
        Self {
            special_tokens,
            ..Self::default()
        }
    }

    /// Sets `add_generation_prompt`.
    pub fn with_generation_prompt(mut self, yes: bool) -> Self {
        self.add_generation_prompt = yes;
        self
    }

    /// Sets the tool schemas.
    pub fn with_tools(mut self, tools: Vec<Json>) -> Self {
        self.tools = Some(tools);
        self
    }

    /// Adds one keyword argument.
    pub fn with_kwarg(mut self, key: impl Into<String>, value: Json) -> Self {
        self.kwargs.insert(key.into(), value);
        self
    }
}

/// One compiled chat template.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    name: String,
    source: String,
    env: Arc<Environment<'static>>,
}

/// The error `raise_exception` attaches, so that rendering can tell it from other failures.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

impl ChatTemplate {
    /// Compiles a template source; its name is `default`.
    pub fn new(source: impl Into<String>) -> Result<Self> {
        Self::with_name(DEFAULT_TEMPLATE, source)
    }

    /// Compiles a template source under a name (used in error messages).
    pub fn with_name(name: impl Into<String>, source: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let source = source.into();
        let mut env = environment();
        env.add_template_owned(name.clone(), rewrite_generation_tags(&source))
            .map_err(|source| PromptError::TemplateSyntax {
                name: name.clone(),
                source,
            })?;
        Ok(Self {
            name,
            source,
            env: Arc::new(env),
        })
    }

    /// The default template of a model directory (see [`ChatTemplates::from_dir`]).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        ChatTemplates::from_dir(dir)?.select(None, false).cloned()
    }

    /// The template's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The template's Jinja source, as found in the model files.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders typed messages: `apply_chat_template(messages, tokenize=False, ...)`.
    pub fn render(&self, messages: &[Message], context: &TemplateContext) -> Result<String> {
        let messages = serde_json::to_value(messages).map_err(|e| PromptError::TemplateInput {
            what: "messages".into(),
            expected: "serializable messages",
            found: e.to_string(),
        })?;
        self.render_json(&messages, context)
    }

    /// Renders messages given as Hugging Face JSON (`[{"role": ..., "content": ...}]`, content a
    /// string or a list of parts, with any extra keys such as `tool_calls`).
    ///
    /// As transformers does, keys whose value is `null` are dropped from each message and the
    /// reasoning fields are aliased (`reasoning_content`, `thinking`, `reasoning`).
    pub fn render_json(&self, messages: &Json, context: &TemplateContext) -> Result<String> {
        let messages = normalize_messages(messages)?;
        let mut ctx = Map::new();
        let special = &context.special_tokens;
        for (key, token) in [
            ("bos_token", &special.bos),
            ("eos_token", &special.eos),
            ("unk_token", &special.unk),
            ("pad_token", &special.pad),
        ] {
            if let Some(token) = token {
                ctx.insert(key.into(), Json::String(token.clone()));
            }
        }
        for (key, value) in &context.kwargs {
            ctx.insert(key.clone(), value.clone());
        }
        ctx.insert("messages".into(), Json::Array(messages));
        ctx.insert(
            "tools".into(),
            context.tools.clone().map(Json::Array).unwrap_or(Json::Null),
        );
        ctx.insert(
            "documents".into(),
            context
                .documents
                .clone()
                .map(Json::Array)
                .unwrap_or(Json::Null),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(context.add_generation_prompt),
        );

        let template = self
            .env
            .get_template(&self.name)
            .map_err(|source| self.render_error(source))?;
        template
            .render(Value::from_serialize(&ctx))
            .map_err(|source| self.render_error(source))
    }

    fn render_error(&self, error: Error) -> PromptError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(err) = cause {
            if let Some(raised) = err.downcast_ref::<Raised>() {
                return PromptError::TemplateRaised {
                    name: self.name.clone(),
                    message: raised.0.clone(),
                };
            }
            cause = err.source();
        }
        PromptError::TemplateRender {
            name: self.name.clone(),
            source: error,
        }
    }
}

/// Drops `null` keys and aliases reasoning fields, as `apply_chat_template` /
/// `render_jinja_template` do before rendering.
fn normalize_messages(messages: &Json) -> Result<Vec<Json>> {
    const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];
    let Json::Array(items) = messages else {
        return Err(PromptError::TemplateInput {
            what: "messages".into(),
            expected: "a list of messages",
            found: abbreviate(messages),
        });
    };
    if items.is_empty() {
        return Err(PromptError::TemplateInput {
            what: "messages".into(),
            expected: "at least one message",
            found: "an empty conversation".into(),
        });
    }
    items
        .iter()
        .enumerate()
        .map(|(i, message)| {
            let Json::Object(fields) = message else {
                return Err(PromptError::TemplateInput {
                    what: format!("messages[{i}]"),
                    expected: "an object with `role` and `content`",
                    found: abbreviate(message),
                });
            };
            let fields: Map<String, Json> = fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let reasoning = REASONING_FIELDS
                .iter()
                .find_map(|key| fields.get(*key))
                .cloned();
            let Some(reasoning) = reasoning else {
                return Ok(Json::Object(fields));
            };
            // {"thinking": reasoning, **message, "reasoning_content": reasoning}
            let mut aliased = Map::new();
            aliased.insert("thinking".into(), reasoning.clone());
            for (k, v) in fields {
                aliased.insert(k, v);
            }
            aliased.insert("reasoning_content".into(), reasoning);
            Ok(Json::Object(aliased))
        })
        .collect()
}

/// Replaces `{% generation %}` / `{% endgeneration %}` (transformers' assistant-mask extension,
/// which minijinja does not know) by `{% if true %}` / `{% endif %}`, keeping the whitespace
/// control markers so that trimming around the tags stays the same.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..end];
        let (open, body) = split_marker_front(inner);
        let (body, close) = split_marker_back(body);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(keyword) => {
                out.push_str("{%");
                out.push_str(open);
                out.push(' ');
                out.push_str(keyword);
                out.push(' ');
                out.push_str(close);
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn split_marker_front(s: &str) -> (&str, &str) {
    match s.chars().next() {
        Some('-' | '+') => s.split_at(1),
        _ => ("", s),
    }
}

fn split_marker_back(s: &str) -> (&str, &str) {
    match s.chars().last() {
        Some('-' | '+') => s.split_at(s.len() - 1),
        _ => (s, ""),
    }
}

/// The Jinja environment of `_compile_jinja_template`.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, state, value| match python::python_str(value) {
        Some(text) => out.write_str(&text).map_err(Error::from),
        None => minijinja::escape_formatter(out, state, value),
    });
    env.add_filter("tojson", tojson);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message.clone())
                .with_source(Raised(message)))
        },
    );
    env.add_function("strftime_now", |format: String| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        python::strftime(&format, now)
    });
    env
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            format!(
                "tojson takes at most {} arguments, found {}",
                NAMES.len(),
                args.len()
            ),
        ));
    }
    let mut params: BTreeMap<&str, Value> = BTreeMap::new();
    for (name, arg) in NAMES.iter().zip(args.iter()) {
        params.insert(name, arg.clone());
    }
    for name in NAMES {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            params.insert(name, v);
        }
    }
    kwargs.assert_all_used()?;

    let mut options = JsonOptions::default();
    if let Some(v) = params.get("ensure_ascii") {
        options.ensure_ascii = v.is_true();
    }
    if let Some(v) = params.get("sort_keys") {
        options.sort_keys = v.is_true();
    }
    if let Some(v) = params.get("indent") {
        options.indent = match v.kind() {
            ValueKind::None | ValueKind::Undefined => None,
            ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
            ValueKind::Number => {
                let n = v.as_i64().unwrap_or(0).max(0);
                Some(" ".repeat(usize::try_from(n).unwrap_or(0)))
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: expected an int or string indent, found {kind}"),
                ))
            }
        };
    }
    if let Some(v) = params.get("separators") {
        if !v.is_none() && !v.is_undefined() {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] => {
                    options.item_separator = Some(item.to_string());
                    options.key_separator = Some(key.to_string());
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        format!("tojson: expected separators (item, key), found {v}"),
                    ))
                }
            }
        }
    }
    // Marked safe so that an auto-escaping caller does not escape the JSON again.
    Ok(Value::from_safe_string(python::json_dumps(
        value, &options,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_no_op_blocks() {
        assert_eq!(
            rewrite_generation_tags("a{%- generation -%}b{% endgeneration %}c{{ x }}{% if y %}"),
            "a{%- if true -%}b{% endif %}c{{ x }}{% if y %}"
        );
    }
}
