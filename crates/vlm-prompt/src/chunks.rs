//! Turning a tokenized prompt with image markers into ordered chunks.
//!
//! A rendered prompt holds one image marker token (`<image>`) per image. Before the model runs,
//! each marker either becomes an image chunk (whose features are spliced into the embeddings) or
//! is expanded into as many marker tokens as the image has feature vectors. Both steps check that
//! the number of markers equals the number of images, so a mismatch is an error here and not a
//! shape error inside the model.

use crate::error::{PromptError, Result};

/// A run of text tokens or one image, in prompt order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Token ids between images (never empty).
    Text(Vec<u32>),
    /// The `index`-th image of the prompt (0-based).
    Image {
        /// Position of the image among the prompt's images.
        index: usize,
    },
}

/// The number of `image_token_id` markers in `ids`.
pub fn count_image_markers(ids: &[u32], image_token_id: u32) -> usize {
    ids.iter().filter(|&&id| id == image_token_id).count()
}

/// Splits `ids` at each `image_token_id` into ordered chunks; every marker is one image, so two
/// adjacent markers give two image chunks.
pub fn split_chunks(ids: &[u32], image_token_id: u32) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut index = 0;
    for piece in ids.split_inclusive(|&id| id == image_token_id) {
        let (text, is_image) = match piece.split_last() {
            Some((&last, text)) if last == image_token_id => (text, true),
            _ => (piece, false),
        };
        if !text.is_empty() {
            chunks.push(Chunk::Text(text.to_vec()));
        }
        if is_image {
            chunks.push(Chunk::Image { index });
            index += 1;
        }
    }
    chunks
}

/// Like [`split_chunks`], but checks that the prompt has exactly `n_images` markers.
pub fn split_chunks_checked(
    ids: &[u32],
    image_token_id: u32,
    n_images: usize,
) -> Result<Vec<Chunk>> {
    check_count(ids, image_token_id, n_images)?;
    Ok(split_chunks(ids, image_token_id))
}

/// Replaces the k-th `image_token_id` in `ids` with `counts[k]` copies of it (the number of
/// feature vectors of image k), as transformers' processors do before the model merges image
/// features at the marker positions.
///
/// Errors when the number of markers differs from `counts.len()`.
pub fn expand_image_tokens(ids: &[u32], image_token_id: u32, counts: &[usize]) -> Result<Vec<u32>> {
    check_count(ids, image_token_id, counts.len())?;
    let extra: usize = counts.iter().map(|c| c.saturating_sub(1)).sum();
    let mut out = Vec::with_capacity(ids.len() + extra);
    let mut counts = counts.iter();
    for &id in ids {
        if id == image_token_id {
            // check_count guarantees one count per marker.
            let n = counts.next().copied().unwrap_or(1);
            out.extend(std::iter::repeat_n(image_token_id, n));
        } else {
            out.push(id);
        }
    }
    Ok(out)
}

/// [`expand_image_tokens`] for video markers (`<|video_pad|>`): the k-th marker becomes
/// `counts[k]` copies; a count mismatch is a [`PromptError::VideoCountMismatch`].
pub fn expand_video_tokens(ids: &[u32], video_token_id: u32, counts: &[usize]) -> Result<Vec<u32>> {
    expand_image_tokens(ids, video_token_id, counts).map_err(|e| match e {
        PromptError::ImageCountMismatch {
            markers, images, ..
        } => PromptError::VideoCountMismatch {
            markers,
            videos: images,
            video_token_id,
        },
        other => other,
    })
}

fn check_count(ids: &[u32], image_token_id: u32, images: usize) -> Result<()> {
    let markers = count_image_markers(ids, image_token_id);
    if markers == images {
        Ok(())
    } else {
        Err(PromptError::ImageCountMismatch {
            markers,
            images,
            image_token_id,
        })
    }
}
