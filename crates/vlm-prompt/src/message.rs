//! Chat messages with image placeholders, serialized the way Hugging Face processors expect.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

/// One part of a message's content.
///
/// Serialized to the template as transformers does: `{"type": "image"}`, `{"type": "video"}`
/// and `{"type": "text", "text": "..."}`. The media are not part of the message; the k-th
/// [`ContentPart::Image`] of a conversation refers to the k-th image given to the model, and
/// the k-th [`ContentPart::Video`] to the k-th video.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContentPart {
    /// An image placeholder.
    Image,
    /// A video placeholder (Qwen2-VL-style templates render it as the video marker).
    Video,
    /// A piece of text.
    Text(String),
}

impl Serialize for ContentPart {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ContentPart::Image => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("type", "image")?;
                map.end()
            }
            ContentPart::Video => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("type", "video")?;
                map.end()
            }
            ContentPart::Text(text) => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("type", "text")?;
                map.serialize_entry("text", text)?;
                map.end()
            }
        }
    }
}

/// A chat message: a role (`system`, `user`, `assistant`, ...) and its content parts.
///
/// Content is always passed to the template as a list of parts, as transformers' processors do
/// for multimodal chats. To pass a plain string as content (what text-only chats do), build the
/// messages as JSON and use [`crate::ChatTemplate::render_json`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The speaker. Templates usually accept `system`, `user` and `assistant`.
    pub role: String,
    /// The content parts, in order.
    pub content: Vec<ContentPart>,
}

impl Message {
    /// A message from parts.
    pub fn new(role: impl Into<String>, content: Vec<ContentPart>) -> Self {
        Self {
            role: role.into(),
            content,
        }
    }

    /// A message with a single text part.
    pub fn text(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self::new(role, vec![ContentPart::Text(text.into())])
    }

    /// A user message with `n_images` image placeholders followed by `text`: the layout used
    /// when the caller gives a plain prompt and N images, and the one LLaVA-style models were
    /// trained on. An empty `text` adds no text part.
    pub fn user_with_images(n_images: usize, text: impl Into<String>) -> Self {
        let text = text.into();
        let mut content = vec![ContentPart::Image; n_images];
        if !text.is_empty() {
            content.push(ContentPart::Text(text));
        }
        Self::new("user", content)
    }

    /// A user message with `n_images` image placeholders, then `n_videos` video
    /// placeholders, then `text` (an empty `text` adds no text part).
    pub fn user_with_media(n_images: usize, n_videos: usize, text: impl Into<String>) -> Self {
        let mut message = Self::user_with_images(n_images, text);
        let at = n_images.min(message.content.len());
        message
            .content
            .splice(at..at, std::iter::repeat_n(ContentPart::Video, n_videos));
        message
    }

    /// The number of video placeholders in this message.
    pub fn video_count(&self) -> usize {
        self.content
            .iter()
            .filter(|part| matches!(part, ContentPart::Video))
            .count()
    }

    /// The number of image placeholders in this message.
    pub fn image_count(&self) -> usize {
        self.content
            .iter()
            .filter(|part| matches!(part, ContentPart::Image))
            .count()
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Parts<'a>(&'a [ContentPart]);
        impl Serialize for Parts<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
                for part in self.0 {
                    seq.serialize_element(part)?;
                }
                seq.end()
            }
        }
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("role", &self.role)?;
        map.serialize_entry("content", &Parts(&self.content))?;
        map.end()
    }
}
