//! Splicing image features into the token embeddings at the image-placeholder positions.

use candle_core::Tensor;

use crate::{Error, Result};

/// Replaces each `image_token_id` position of `ids` `(1, s)` with the next row of `features`
/// `(n, h)`, in order, on top of the text embeddings `text_embeds` `(1, s, h)`.
///
/// The number of placeholders must equal the number of feature rows; both numbers are
/// reported otherwise, before anything is merged.
pub fn merge_image_features(
    ids: &[u32],
    image_token_id: u32,
    text_embeds: &Tensor,
    features: &Tensor,
) -> Result<Tensor> {
    let (b, s, h) = text_embeds.dims3()?;
    let (n, fh) = features.dims2()?;
    if b != 1 || s != ids.len() {
        return Err(Error::Shape(format!(
            "merge_image_features: expected embeddings (1, {}, h), found {:?}",
            ids.len(),
            text_embeds.dims()
        )));
    }
    if fh != h {
        return Err(Error::Shape(format!(
            "image features have width {fh} but the text embeddings have width {h}"
        )));
    }
    let placeholders = ids.iter().filter(|&&t| t == image_token_id).count();
    if placeholders != n {
        return Err(Error::ImageTokenMismatch {
            placeholders,
            features: n,
        });
    }
    if n == 0 {
        return Ok(text_embeds.clone());
    }
    // Gather from [text rows; image rows]: position i takes text row i, or image row k for the
    // k-th placeholder.
    let mut k = 0u32;
    let index: Vec<u32> = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if t == image_token_id {
                k += 1;
                s as u32 + k - 1
            } else {
                i as u32
            }
        })
        .collect();
    let table = Tensor::cat(
        &[
            &text_embeds.squeeze(0)?,
            &features.to_dtype(text_embeds.dtype())?,
        ],
        0,
    )?;
    let index = Tensor::from_vec(index, s, text_embeds.device())?;
    Ok(table.index_select(&index, 0)?.unsqueeze(0)?)
}
