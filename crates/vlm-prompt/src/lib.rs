//! Tokenizers, Hugging Face chat templates and media-marker prompt assembly for
//! vision-language models.
//!
//! The path from a conversation to model inputs has four steps, one module each:
//!
//! 1. [`ChatTemplate`] renders [`Message`]s (text and image placeholders) into a prompt string
//!    with the model's own Jinja chat template, found and rendered as transformers 5 does;
//! 2. [`Tokenizer`] encodes the prompt; image placeholders become image marker tokens;
//! 3. [`split_chunks`] turns the ids into ordered [`Chunk`]s of text and images, or
//!    [`expand_image_tokens`] repeats each marker once per image feature vector; both check that
//!    the prompt has exactly one marker per image;
//! 4. [`TokenStream`] turns generated ids back into text, one token at a time.
//!
//! # Design decisions
//!
//! * **Byte-for-byte parity with transformers.** A chat template is a program written for Jinja2
//!   in Python; one differing space changes the token ids. The environment therefore copies
//!   transformers' `_compile_jinja_template` (trim/lstrip blocks, `raise_exception`,
//!   `strftime_now`, Python's `json.dumps` as `tojson`) and prints values as Python's `str()`
//!   (`None`, `True`, `['a']`). `{% generation %}` blocks (used for assistant masks) render their
//!   body unchanged. The integration tests compare against renderings and ids produced by
//!   transformers (`tests/scripts/make_tokenizer.py`).
//! * **Stateless core.** Rendering, encoding and chunking are pure functions of their inputs;
//!   only [`TokenStream`] holds state, for one generation.
//! * **Mismatches are errors, early.** A prompt whose image markers do not match the images
//!   fails in [`split_chunks_checked`] / [`expand_image_tokens`] with both counts, not later as a
//!   tensor shape error.
//!
//! # Example
//!
//! ```
//! use vlm_prompt::{expand_image_tokens, ChatTemplate, Message, SpecialTokens, TemplateContext, Tokenizer};
//!
//! # fn main() -> Result<(), vlm_prompt::PromptError> {
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tokenizer/llava");
//! let tokenizer = Tokenizer::from_dir(dir)?;
//! let template = ChatTemplate::from_dir(dir)?;
//! let context = TemplateContext::new(SpecialTokens::from_dir(dir)?).with_generation_prompt(true);
//!
//! let messages = [Message::user_with_images(1, "What is shown in this image?")];
//! let prompt = template.render(&messages, &context)?;
//! assert_eq!(prompt, "<s>USER: <image>\nWhat is shown in this image? ASSISTANT:");
//!
//! // The template already wrote <s>, so do not let the post-processor add another.
//! let ids = tokenizer.encode(&prompt, false)?;
//! let image_token = tokenizer.require_token("<image>", "image markers")?;
//! // The vision tower gives 4 feature vectors for this image.
//! let expanded = expand_image_tokens(&ids, image_token, &[4])?;
//! assert_eq!(expanded.len(), ids.len() + 3);
//!
//! let mut stream = tokenizer.stream(true);
//! let mut text = String::new();
//! for id in tokenizer.encode("A cat 🐱.", false)? {
//!     text.extend(stream.push(id)?);
//! }
//! text.extend(stream.finish()?);
//! assert_eq!(text, "A cat 🐱.");
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod chunks;
mod error;
mod idefics3;
mod message;
mod python;
mod special;
mod template;
mod tokenizer;

pub use chunks::{
    count_image_markers, expand_image_tokens, expand_video_tokens, split_chunks,
    split_chunks_checked, Chunk,
};
pub use error::{PromptError, Result};
pub use idefics3::{
    expand_idefics3_prompt, idefics3_image_seq_len, Idefics3PromptTokens,
    IDEFICS3_DEFAULT_IMAGE_SEQ_LEN, IDEFICS3_END_OF_UTTERANCE_TOKEN, IDEFICS3_FAKE_IMAGE_TOKEN,
    IDEFICS3_GLOBAL_IMAGE_TOKEN, IDEFICS3_IMAGE_TOKEN,
};
pub use message::{ContentPart, Message};
pub use special::{AddedTokenInfo, SpecialTokens};
pub use template::{
    ChatTemplate, ChatTemplates, TemplateContext, TemplateSource, DEFAULT_TEMPLATE,
    TOOL_USE_TEMPLATE,
};
pub use tokenizer::{TokenStream, Tokenizer};
