//! Idefics3 / SmolVLM prompt expansion: every `<image>` of the rendered prompt becomes the
//! image's tile blocks.
//!
//! Mirrors `Idefics3Processor.replace_image_token` and the placeholder replacement of
//! `ProcessorMixin.get_text_with_replacements` (transformers 5.23,
//! `models/idefics3/processing_idefics3.py`, `processing_utils.py`). For an image cut into
//! `rows x cols` tiles (`S` = `image_seq_len`, `<fake>` = `<fake_token_around_image>`):
//!
//! ```text
//! <fake><row_1_col_1><image>*S<fake><row_1_col_2><image>*S...\n     one line per tile row
//! ...
//! \n<fake><global-img><image>*S<fake>                                   the global view
//! ```
//!
//! and for an image that is a single tile (grid `(0, 0)`: splitting off, or a small image)
//! `<fake><global-img><image>*S<fake>`. The `<row_r_col_c>` markers are text in the prompt
//! (SmolVLM's tokenizer has single tokens for `r, c <= 6`; beyond that the reference writes them
//! anyway and they tokenize as text). The token strings are constants in the reference (its
//! `__init__` hard-codes them, they are not read from the tokenizer config); `image_seq_len`
//! comes from `processor_config.json` (the class default is 169).
//!
//! As in the reference, the markers are counted in the rendered text and must equal the number
//! of images; a prompt without `<image>` and no images is returned unchanged. A chat message's
//! `{"type": "image"}` part is rendered by SmolVLM's template as a literal `<image>`, so chat
//! prompts always have one marker per image part.
//!
//! ```
//! use vlm_prompt::{expand_idefics3_prompt, Idefics3PromptTokens};
//!
//! # fn main() -> Result<(), vlm_prompt::PromptError> {
//! let tokens = Idefics3PromptTokens::new(49190, 2);
//! let text = expand_idefics3_prompt("User:<image>Hi", &[(0, 0)], &tokens)?;
//! assert_eq!(
//!     text,
//!     "User:<fake_token_around_image><global-img><image><image><fake_token_around_image>Hi"
//! );
//! assert_eq!(tokens.placeholder_count(&[(0, 0), (2, 3)]), 2 + 7 * 2);
//! assert!(expand_idefics3_prompt("User:<image>Hi", &[], &tokens).is_err());
//! # Ok(())
//! # }
//! ```

use std::path::Path;

use serde_json::Value;

use crate::error::{abbreviate, PromptError, Result};
use crate::special::read_json;
use crate::tokenizer::Tokenizer;

/// The image placeholder (`Idefics3Processor.image_token`).
pub const IDEFICS3_IMAGE_TOKEN: &str = "<image>";
/// The token around every tile block (`fake_image_token`).
pub const IDEFICS3_FAKE_IMAGE_TOKEN: &str = "<fake_token_around_image>";
/// The tag of the global view (`global_image_tag`).
pub const IDEFICS3_GLOBAL_IMAGE_TOKEN: &str = "<global-img>";
/// The end of a turn in SmolVLM's chat template, and its EOS.
pub const IDEFICS3_END_OF_UTTERANCE_TOKEN: &str = "<end_of_utterance>";
/// `Idefics3Processor`'s `image_seq_len` when `processor_config.json` names none.
pub const IDEFICS3_DEFAULT_IMAGE_SEQ_LEN: usize = 169;

/// The strings and counts the expansion writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idefics3PromptTokens {
    /// `<image>`.
    pub image: String,
    /// The id of `image` (named in count errors).
    pub image_token_id: u32,
    /// `<fake_token_around_image>`.
    pub fake_image: String,
    /// `<global-img>`.
    pub global_image: String,
    /// Placeholders per tile (`image_seq_len`): the model's
    /// `(image_size / patch_size)^2 / scale_factor^2`.
    pub image_seq_len: usize,
}

impl Idefics3PromptTokens {
    /// The reference's token strings with `image_token_id` and `image_seq_len`.
    pub fn new(image_token_id: u32, image_seq_len: usize) -> Self {
        Self {
            image: IDEFICS3_IMAGE_TOKEN.to_string(),
            image_token_id,
            fake_image: IDEFICS3_FAKE_IMAGE_TOKEN.to_string(),
            global_image: IDEFICS3_GLOBAL_IMAGE_TOKEN.to_string(),
            image_seq_len,
        }
    }

    /// The reference's token strings, checked against `tokenizer` (each must be one token).
    pub fn from_tokenizer(tokenizer: &Tokenizer, image_seq_len: usize) -> Result<Self> {
        let id = tokenizer.require_token(IDEFICS3_IMAGE_TOKEN, "Idefics3 image placeholders")?;
        tokenizer.require_token(IDEFICS3_FAKE_IMAGE_TOKEN, "Idefics3 image blocks")?;
        tokenizer.require_token(IDEFICS3_GLOBAL_IMAGE_TOKEN, "Idefics3 global image views")?;
        Ok(Self::new(id, image_seq_len))
    }

    /// [`Self::from_tokenizer`] with `image_seq_len` read from a model folder
    /// ([`idefics3_image_seq_len`], 169 when absent).
    pub fn from_dir(dir: impl AsRef<Path>, tokenizer: &Tokenizer) -> Result<Self> {
        let seq_len = idefics3_image_seq_len(dir)?.unwrap_or(IDEFICS3_DEFAULT_IMAGE_SEQ_LEN);
        Self::from_tokenizer(tokenizer, seq_len)
    }

    /// The text that replaces one `<image>` for an image with this grid (`(0, 0)` = one tile).
    pub fn image_prompt(&self, rows: usize, cols: usize) -> String {
        let images = self.image.repeat(self.image_seq_len);
        let global = format!(
            "{fake}{global}{images}{fake}",
            fake = self.fake_image,
            global = self.global_image
        );
        if rows == 0 && cols == 0 {
            return global;
        }
        let mut text = String::new();
        for r in 1..=rows {
            for c in 1..=cols {
                text.push_str(&self.fake_image);
                text.push_str(&format!("<row_{r}_col_{c}>"));
                text.push_str(&images);
            }
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&global);
        text
    }

    /// Number of `<image>` placeholders (= feature rows) the images with these grids need.
    pub fn placeholder_count(&self, grids: &[(usize, usize)]) -> usize {
        grids
            .iter()
            .map(|&(r, c)| if r == 0 && c == 0 { 1 } else { r * c + 1 })
            .sum::<usize>()
            * self.image_seq_len
    }
}

/// `image_seq_len` of `processor_config.json` in a model folder (the key sits at the top level
/// in both the published and the transformers 5 file); `None` when the file or the key is
/// absent.
pub fn idefics3_image_seq_len(dir: impl AsRef<Path>) -> Result<Option<usize>> {
    let path = dir.as_ref().join("processor_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let json = read_json(&path)?;
    match json.get("image_seq_len") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| Some(n as usize))
            .ok_or_else(|| PromptError::Config {
                path: path.clone(),
                key: "image_seq_len".to_string(),
                expected: "a positive integer",
                found: abbreviate(v),
            }),
    }
}

/// Replaces the k-th `<image>` of the rendered `prompt` with the blocks of image k, whose tile
/// grid is `grids[k]` (`(rows, cols)` from the image processor). Errors, naming both numbers,
/// when the prompt's markers and the images differ in number.
pub fn expand_idefics3_prompt(
    prompt: &str,
    grids: &[(usize, usize)],
    tokens: &Idefics3PromptTokens,
) -> Result<String> {
    let markers = if tokens.image.is_empty() {
        0
    } else {
        prompt.matches(tokens.image.as_str()).count()
    };
    if markers != grids.len() {
        return Err(PromptError::ImageCountMismatch {
            markers,
            images: grids.len(),
            image_token_id: tokens.image_token_id,
        });
    }
    if markers == 0 {
        return Ok(prompt.to_string());
    }
    let extra: usize = tokens.placeholder_count(grids) * tokens.image.len();
    let mut out = String::with_capacity(prompt.len() + extra);
    let mut pieces = prompt.split(tokens.image.as_str());
    out.push_str(pieces.next().unwrap_or_default());
    for (piece, &(rows, cols)) in pieces.zip(grids) {
        out.push_str(&tokens.image_prompt(rows, cols));
        out.push_str(piece);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Option<Value> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/reference/idefics3-tiny.json"
        );
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    #[test]
    fn grids_expand_in_row_major_order() {
        let t = Idefics3PromptTokens::new(7, 1);
        assert_eq!(
            t.image_prompt(1, 2),
            "<fake_token_around_image><row_1_col_1><image>\
             <fake_token_around_image><row_1_col_2><image>\n\n\
             <fake_token_around_image><global-img><image><fake_token_around_image>"
        );
        assert_eq!(t.placeholder_count(&[(1, 2)]), 3);
    }

    #[test]
    fn marker_count_mismatch_names_both_numbers() {
        let t = Idefics3PromptTokens::new(404, 3);
        let err = expand_idefics3_prompt("<image><image>x", &[(0, 0)], &t)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("2 image marker") && err.contains("1 image(s)"),
            "{err}"
        );
        assert!(expand_idefics3_prompt("no image", &[(0, 0)], &t).is_err());
        assert_eq!(
            expand_idefics3_prompt("no image", &[], &t).ok().as_deref(),
            Some("no image")
        );
    }

    /// The expanded prompts transformers produced (`tests/scripts/make_idefics3_fixtures.py`).
    #[test]
    fn matches_the_reference_processor() -> Result<()> {
        let Some(fixture) = fixture() else {
            return Err(PromptError::TemplateInput {
                what: "tests/fixtures/reference/idefics3-tiny.json".into(),
                expected: "the Idefics3 reference fixture",
                found: "nothing readable".into(),
            });
        };
        let seq_len = fixture["image_seq_len"].as_u64().unwrap_or(0) as usize;
        let t = Idefics3PromptTokens::new(0, seq_len);
        let mut checked = 0;
        for case in fixture["cases"].as_array().into_iter().flatten() {
            let grids: Vec<(usize, usize)> =
                serde_json::from_value(case["grids"].clone()).unwrap_or_default();
            let prompt = case["prompt"].as_str().unwrap_or_default();
            let want = case["expanded_prompt"].as_str().unwrap_or_default();
            assert_eq!(
                expand_idefics3_prompt(prompt, &grids, &t)?,
                want,
                "{}",
                case["case"]
            );
            checked += 1;
        }
        for ex in fixture["expansions"].as_array().into_iter().flatten() {
            let (rows, cols) = (
                ex["rows"].as_u64().unwrap_or(0) as usize,
                ex["cols"].as_u64().unwrap_or(0) as usize,
            );
            let t =
                Idefics3PromptTokens::new(0, ex["image_seq_len"].as_u64().unwrap_or(0) as usize);
            assert_eq!(
                t.image_prompt(rows, cols),
                ex["text"].as_str().unwrap_or_default()
            );
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} reference strings");
        Ok(())
    }

    /// Render (SmolVLM's template), expand and tokenize every case as the reference processor
    /// did, from the fixture model folders.
    #[test]
    fn rendered_expanded_and_tokenized_like_the_reference() -> Result<()> {
        use crate::{ChatTemplate, SpecialTokens, TemplateContext};
        let Some(fixture) = fixture() else {
            return Err(PromptError::TemplateInput {
                what: "tests/fixtures/reference/idefics3-tiny.json".into(),
                expected: "the Idefics3 reference fixture",
                found: "nothing readable".into(),
            });
        };
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/");
        for case in fixture["cases"].as_array().into_iter().flatten() {
            let dir = format!("{root}{}", case["model"].as_str().unwrap_or_default());
            let tokenizer = Tokenizer::from_dir(&dir)?;
            let tokens = Idefics3PromptTokens::from_dir(&dir, &tokenizer)?;
            assert_eq!(tokens.image_seq_len, 9);
            assert_eq!(
                Some(tokens.image_token_id),
                fixture["image_token_id"].as_u64().map(|v| v as u32)
            );
            let template = ChatTemplate::from_dir(&dir)?;
            let context =
                TemplateContext::new(SpecialTokens::from_dir(&dir)?).with_generation_prompt(true);
            let prompt = template.render_json(&case["messages"], &context)?;
            assert_eq!(prompt, case["prompt"].as_str().unwrap_or_default());
            let grids: Vec<(usize, usize)> =
                serde_json::from_value(case["grids"].clone()).unwrap_or_default();
            let expanded = expand_idefics3_prompt(&prompt, &grids, &tokens)?;
            let ids = tokenizer.encode(&expanded, false)?;
            let want: Vec<u32> =
                serde_json::from_value(case["input_ids"].clone()).unwrap_or_default();
            assert_eq!(ids, want, "case {}", case["case"]);
            assert_eq!(
                ids.iter().filter(|&&t| t == tokens.image_token_id).count(),
                tokens.placeholder_count(&grids)
            );
        }
        Ok(())
    }
}
