//! Tiles of one image and the padded batch the model receives.
//!
//! Mirrors the `do_pad` step of `Idefics3ImageProcessorPil._preprocess`: every tile of the batch
//! is padded with zeros at the bottom and right to the largest tile size, `pixel_attention_mask`
//! is 1 over the original pixels, and samples with fewer tiles are filled with all-zero tiles
//! (mask 0), which `Idefics3Model.get_image_features` later drops.

use crate::error::{PreprocessError, Result};
use crate::transforms::PixelValues;

/// The tiles of one image: `pixel_values` `(n_tiles, 3, height, width)` in the reference's
/// order (row-major tiles, then the global view; a single tile when the image was not split),
/// `pixel_attention_mask` `(n_tiles, height, width)`, and the grid the prompt needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Idefics3Tiles {
    /// `f32` values, row-major over `shape`.
    pub pixel_values: Vec<f32>,
    /// 1 where a pixel is part of the image, 0 where it is padding; row-major over
    /// `[shape[0], shape[2], shape[3]]`.
    pub pixel_attention_mask: Vec<u8>,
    /// `[n_tiles, channels, height, width]`.
    pub shape: [usize; 4],
    /// Tile rows, 0 when the image was not split.
    pub rows: usize,
    /// Tile columns, 0 when the image was not split.
    pub cols: usize,
}

impl Idefics3Tiles {
    /// Number of tiles (`rows * cols + 1` when split, else 1).
    pub fn n_tiles(&self) -> usize {
        self.shape[0]
    }

    /// `(rows, cols)` for the prompt expansion; `(0, 0)` means one tile without a grid.
    pub fn grid(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Packs equally sized tiles, padding them to the largest size in the list.
    pub(crate) fn from_tiles(tiles: &[PixelValues], rows: usize, cols: usize) -> Result<Self> {
        let (height, width) = tiles
            .iter()
            .fold((0, 0), |(h, w), t| (h.max(t.height()), w.max(t.width())));
        let mut pixel_values = Vec::with_capacity(tiles.len() * 3 * height * width);
        let mut pixel_attention_mask = Vec::with_capacity(tiles.len() * height * width);
        let mut channels = None;
        for tile in tiles {
            match channels {
                None => channels = Some(tile.channels()),
                Some(c) if c != tile.channels() => {
                    return Err(PreprocessError::InvalidArgument {
                        name: "tiles",
                        expected: "tiles with the same number of channels",
                        found: format!("{c} and {} channels", tile.channels()),
                    })
                }
                Some(_) => {}
            }
            push_padded(
                tile,
                height,
                width,
                &mut pixel_values,
                &mut pixel_attention_mask,
            );
        }
        Ok(Self {
            pixel_values,
            pixel_attention_mask,
            shape: [tiles.len(), channels.unwrap_or(3), height, width],
            rows,
            cols,
        })
    }
}

/// Appends `tile` zero-padded to `height x width`, and its mask.
fn push_padded(
    tile: &PixelValues,
    height: usize,
    width: usize,
    values: &mut Vec<f32>,
    mask: &mut Vec<u8>,
) {
    let [c, h, w] = tile.shape;
    for ci in 0..c {
        for y in 0..height {
            if y < h {
                let row = &tile.data[(ci * h + y) * w..(ci * h + y + 1) * w];
                values.extend_from_slice(row);
                values.extend(std::iter::repeat_n(0.0, width - w));
            } else {
                values.extend(std::iter::repeat_n(0.0, width));
            }
        }
    }
    for y in 0..height {
        let real = if y < h { w } else { 0 };
        mask.extend(std::iter::repeat_n(1u8, real));
        mask.extend(std::iter::repeat_n(0u8, width - real));
    }
}

/// `pixel_values` `(samples, max_tiles, 3, H, W)` and `pixel_attention_mask`
/// `(samples, max_tiles, H, W)` as the processor returns them for a batch of prompts.
///
/// One prompt with several images is **one** sample whose tiles are those of all its images,
/// concatenated in prompt order (`Idefics3Processor` groups images per prompt); only a batch of
/// several prompts gets all-zero padding tiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Idefics3Batch {
    /// `f32` values, row-major over `shape`.
    pub pixel_values: Vec<f32>,
    /// 1 = real pixel, 0 = padding (inside a tile or a whole padding tile); row-major over
    /// `[shape[0], shape[1], shape[3], shape[4]]`.
    pub pixel_attention_mask: Vec<u8>,
    /// `[samples, max_tiles, channels, height, width]`.
    pub shape: [usize; 5],
    /// `(rows, cols)` of every image of every sample, for the prompt expansion.
    pub grids: Vec<Vec<(usize, usize)>>,
    /// Real tiles per sample; the rest of each sample's `max_tiles` are all-zero padding.
    pub tiles_per_sample: Vec<usize>,
}

impl Idefics3Batch {
    /// The tiles flattened to `(samples * max_tiles, 3, H, W)`, what the model's vision tower
    /// takes (it drops the all-zero padding tiles itself).
    pub fn flat_shape(&self) -> [usize; 4] {
        let [b, n, c, h, w] = self.shape;
        [b * n, c, h, w]
    }
}

/// Pads the tiles of each sample (a sample = the images of one prompt, in order) into one batch,
/// as `Idefics3ImageProcessorPil` does with `do_pad`. Errors when there is no tile at all (the
/// reference raises "No images found in the batch").
pub fn pad_batch(samples: &[Vec<Idefics3Tiles>]) -> Result<Idefics3Batch> {
    let all = samples.iter().flatten();
    let channels =
        all.clone()
            .map(|t| t.shape[1])
            .next()
            .ok_or_else(|| PreprocessError::InvalidArgument {
                name: "images",
                expected: "at least one image in the batch",
                found: format!("{} samples without images", samples.len()),
            })?;
    if let Some(t) = all.clone().find(|t| t.shape[1] != channels) {
        return Err(PreprocessError::InvalidArgument {
            name: "images",
            expected: "images with the same number of channels",
            found: format!("{channels} and {} channels", t.shape[1]),
        });
    }
    let height = all.clone().map(|t| t.shape[2]).max().unwrap_or(0);
    let width = all.clone().map(|t| t.shape[3]).max().unwrap_or(0);
    let tiles_per_sample: Vec<usize> = samples
        .iter()
        .map(|s| s.iter().map(Idefics3Tiles::n_tiles).sum())
        .collect();
    let max_tiles = tiles_per_sample.iter().copied().max().unwrap_or(0);
    let tile_len = channels * height * width;
    let mut pixel_values = Vec::with_capacity(samples.len() * max_tiles * tile_len);
    let mut pixel_attention_mask = Vec::with_capacity(samples.len() * max_tiles * height * width);
    for (sample, &n) in samples.iter().zip(&tiles_per_sample) {
        for image in sample {
            let [count, c, h, w] = image.shape;
            for i in 0..count {
                let tile = PixelValues {
                    data: image.pixel_values[i * c * h * w..(i + 1) * c * h * w].to_vec(),
                    shape: [c, h, w],
                };
                let mask_start = pixel_attention_mask.len();
                push_padded(
                    &tile,
                    height,
                    width,
                    &mut pixel_values,
                    &mut pixel_attention_mask,
                );
                // Keep the image's own mask (padding inside the tile stays padding).
                let own = &image.pixel_attention_mask[i * h * w..(i + 1) * h * w];
                for y in 0..h {
                    for x in 0..w {
                        pixel_attention_mask[mask_start + y * width + x] = own[y * w + x];
                    }
                }
            }
        }
        pixel_values.extend(std::iter::repeat_n(0.0, (max_tiles - n) * tile_len));
        pixel_attention_mask.extend(std::iter::repeat_n(0u8, (max_tiles - n) * height * width));
    }
    Ok(Idefics3Batch {
        pixel_values,
        pixel_attention_mask,
        shape: [samples.len(), max_tiles, channels, height, width],
        grids: samples
            .iter()
            .map(|s| s.iter().map(Idefics3Tiles::grid).collect())
            .collect(),
        tiles_per_sample,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiles(
        n: usize,
        h: usize,
        w: usize,
        value: f32,
        grid: (usize, usize),
    ) -> Result<Idefics3Tiles> {
        let tile = PixelValues {
            data: vec![value; 3 * h * w],
            shape: [3, h, w],
        };
        Idefics3Tiles::from_tiles(&vec![tile; n], grid.0, grid.1)
    }

    #[test]
    fn pads_tiles_and_samples() -> Result<()> {
        let a = tiles(3, 2, 2, 1.0, (1, 2))?;
        let b = tiles(1, 2, 3, 2.0, (0, 0))?;
        let batch = pad_batch(&[vec![a.clone()], vec![b]])?;
        assert_eq!(batch.shape, [2, 3, 3, 2, 3]);
        assert_eq!(batch.tiles_per_sample, [3, 1]);
        assert_eq!(batch.grids, [vec![(1, 2)], vec![(0, 0)]]);
        // First tile of sample 0: a 2x2 tile padded on the right.
        assert_eq!(&batch.pixel_values[..6], &[1.0, 1.0, 0.0, 1.0, 1.0, 0.0]);
        assert_eq!(&batch.pixel_attention_mask[..6], &[1, 1, 0, 1, 1, 0]);
        // Sample 1: one real tile, then two all-zero tiles with an all-zero mask.
        let tile = 3 * 2 * 3;
        let s1 = &batch.pixel_values[3 * tile..];
        assert!(s1[..tile].iter().all(|&v| v == 2.0));
        assert!(s1[tile..].iter().all(|&v| v == 0.0));
        assert!(batch.pixel_attention_mask[3 * 6 + 6..]
            .iter()
            .all(|&m| m == 0));
        assert_eq!(batch.flat_shape(), [6, 3, 2, 3]);
        // One prompt with two images: one sample, tiles concatenated.
        let one = pad_batch(&[vec![a.clone(), a]])?;
        assert_eq!(one.shape, [1, 6, 3, 2, 2]);
        assert!(pad_batch(&[vec![], vec![]]).is_err());
        Ok(())
    }
}
