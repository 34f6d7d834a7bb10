//! The Qwen2-VL and Qwen2.5-VL vision towers, from flattened patches through the patch merger.
//!
//! Mirrors `Qwen2VisionTransformerPretrainedModel` in
//! `transformers/models/qwen2_vl/modeling_qwen2_vl.py` and
//! `Qwen2_5_VisionTransformerPretrainedModel` in
//! `transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py` (transformers 5.23).
//!
//! Input is the processor's `pixel_values`, `(patches, C * T * P * P)`, with each frame's
//! patches in merge-square order, plus one `[t, h, w]` patch grid per image or video. Images of
//! any size are packed into one sequence and never attend to each other: attention runs per frame
//! (and, in most Qwen2.5-VL blocks, per window) through [`crate::nn::varlen_attention`], which
//! batches equal-length segments instead of masking an `(N, N)` matrix.
//!
//! - Patch embedding: the bias-free `Conv3d` with stride = kernel is one matmul against its
//!   weight flattened at load time.
//! - Rotary embedding: 2-D, a quarter of each head for the row and a quarter for the column,
//!   repeated for the rotate-half pairs; cos/sin are computed once per forward and shared by all
//!   blocks; q/k are rotated in f32 like the reference.
//! - Qwen2.5-VL reorders the patches into window order (whole merge units at a time) before the
//!   blocks, runs full-frame attention in `fullatt_block_indexes` and window attention elsewhere,
//!   and undoes the order after the merger. Frames stay contiguous in window order, so the
//!   full-attention segments are still one frame each.
//!
//! Weights are read relative to the tower root (`patch_embed.proj.weight`, `blocks.{i}.*`,
//! `merger.*`); the caller positions the `VarBuilder` (`visual.` in published checkpoints,
//! `model.visual.` in transformers 5 saves).

mod config;
mod grid;
mod layers;

pub use config::{
    Qwen25VlVisionConfig, Qwen2VlVisionConfig, QwenVisionConfig, VisionRopeParameters,
    VisionRopeType,
};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use self::config::{TowerKind, TowerSpec};
use self::layers::{Block, PatchMerger, RotaryTable};
use crate::nn::{Linear, VarlenPlan};
use crate::{Error, Result};

/// The Qwen2-VL / Qwen2.5-VL vision transformer and patch merger.
#[derive(Debug, Clone)]
pub struct QwenVisionTower {
    patch_embed: Linear,
    blocks: Vec<Block>,
    merger: PatchMerger,
    inv_freq: Tensor,
    spec: TowerSpec,
}

impl QwenVisionTower {
    /// Loads the tower described by `cfg` from `vb`, positioned at the tower root.
    pub fn new(cfg: &QwenVisionConfig, vb: VarBuilder) -> Result<Self> {
        let spec = cfg.spec()?;
        let (w, c, t, p) = (
            spec.width,
            spec.in_channels,
            spec.temporal_patch_size,
            spec.patch_size,
        );
        let conv = vb
            .pp("patch_embed")
            .pp("proj")
            .get((w, c, t, p, p), "weight")?;
        let patch_embed = Linear::from_weights(conv.reshape((w, spec.patch_dim()))?, None);
        let blocks = (0..spec.depth)
            .map(|i| Block::new(&spec, vb.pp("blocks").pp(i)))
            .collect::<candle_core::Result<_>>()?;
        let merger = PatchMerger::new(&spec, vb.pp("merger"))?;
        let inv_freq = layers::rotary_inv_freq(spec.head_dim, spec.rope_theta, vb.device())?;
        Ok(Self {
            patch_embed,
            blocks,
            merger,
            inv_freq,
            spec,
        })
    }

    /// Merged features `(patches / merge^2, out_hidden_size)`, one row per merged token, images
    /// in `grid_thw` order and each image's tokens in the processor's order.
    pub fn forward(&self, pixel_values: &Tensor, grid_thw: &[[usize; 3]]) -> Result<Tensor> {
        Ok(self.forward_with_hidden(pixel_values, grid_thw)?.1)
    }

    /// `(blocks_output, merged)`: the last block's output `(patches, width)` (before the merger's
    /// norm) and the merged features as [`QwenVisionTower::forward`] returns them.
    ///
    /// `blocks_output` is in the reference's `last_hidden_state` order: the processor's patch
    /// order for Qwen2-VL, and Qwen2.5-VL's *window* order (the permutation is undone only after
    /// the merger, as in transformers).
    pub fn forward_with_hidden(
        &self,
        pixel_values: &Tensor,
        grid_thw: &[[usize; 3]],
    ) -> Result<(Tensor, Tensor)> {
        let spec = &self.spec;
        let (rows, cols) = pixel_values.dims2().map_err(|_| {
            Error::Shape(format!(
                "Qwen vision tower: expected pixel_values of shape (patches, {}), found {:?}",
                spec.patch_dim(),
                pixel_values.dims()
            ))
        })?;
        if cols != spec.patch_dim() {
            return Err(Error::Shape(format!(
                "Qwen vision tower: expected {} values per patch (channels {} x temporal {} x \
                 {p} x {p}), found {cols}",
                spec.patch_dim(),
                spec.in_channels,
                spec.temporal_patch_size,
                p = spec.patch_size,
            )));
        }
        let total = grid::check_grids(grid_thw, spec.merge, rows)?;
        let device = self.inv_freq.device();
        let pixels = pixel_values.to_device(device)?.to_dtype(self.dtype())?;
        let xs = self.patch_embed.forward(&pixels)?;
        let positions = grid::rotary_positions(grid_thw, spec.merge);
        let frames = VarlenPlan::new(&grid::frame_lengths(grid_thw));

        match &spec.kind {
            TowerKind::Qwen2 { .. } => {
                let rope = RotaryTable::new(positions, &self.inv_freq)?;
                let mut xs = xs;
                for block in &self.blocks {
                    xs = block.forward(&xs, &rope, &frames)?;
                }
                let merged = self.merger.forward(&xs)?;
                Ok((xs, merged))
            }
            TowerKind::Qwen25 {
                window_side,
                full_attention,
                ..
            } => {
                let unit = spec.merge * spec.merge;
                let layout = grid::window_layout(grid_thw, spec.merge, *window_side);
                let order = index_tensor(&layout.unit_order, device)?;
                let xs = xs
                    .reshape((total / unit, unit * spec.width))?
                    .index_select(&order, 0)?
                    .reshape((total, spec.width))?;
                // Permuting positions before taking cos/sin gives the same table as the
                // reference's permuting of the table.
                let mut windowed = Vec::with_capacity(positions.len());
                for &u in &layout.unit_order {
                    windowed.extend_from_slice(&positions[2 * u * unit..2 * (u + 1) * unit]);
                }
                let rope = RotaryTable::new(windowed, &self.inv_freq)?;
                let windows = VarlenPlan::new(&layout.window_lengths);
                let mut xs = xs;
                for (block, &full) in self.blocks.iter().zip(full_attention) {
                    let plan = if full { &frames } else { &windows };
                    xs = block.forward(&xs, &rope, plan)?;
                }
                let inverse = index_tensor(&grid::invert(&layout.unit_order), device)?;
                let merged = self.merger.forward(&xs)?.index_select(&inverse, 0)?;
                Ok((xs, merged))
            }
        }
    }

    /// Width of the merged features (the language model's hidden size).
    pub fn out_hidden_size(&self) -> usize {
        self.spec.out_hidden
    }

    /// Width of the blocks (`embed_dim` / `hidden_size` of the vision config).
    pub fn hidden_size(&self) -> usize {
        self.spec.width
    }

    /// Side of the square of patches folded into one merged token.
    pub fn spatial_merge_size(&self) -> usize {
        self.spec.merge
    }

    /// Values per flattened input patch, `C * T * P * P`.
    pub fn patch_dim(&self) -> usize {
        self.spec.patch_dim()
    }

    /// The dtype of the weights (inputs are cast to it).
    pub fn dtype(&self) -> DType {
        self.patch_embed.dtype()
    }
}

fn index_tensor(indices: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    let v: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    let n = v.len();
    Tensor::from_vec(v, n, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    /// A tower with random, variance-preserving weights: builds once over a `VarMap` to learn
    /// every weight's name and shape, then again from random tensors of those shapes.
    fn random_tower(cfg: &QwenVisionConfig) -> Result<QwenVisionTower> {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        QwenVisionTower::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
        let vars = varmap
            .data()
            .lock()
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut weights = HashMap::new();
        for (name, var) in vars.iter() {
            let dims = var.dims();
            let t = if dims.len() == 1 {
                (Tensor::randn(0f32, 0.1, dims, &dev)? + 1.0)?
            } else {
                let fan_in = dims[1..].iter().product::<usize>() as f32;
                Tensor::randn(0f32, fan_in.powf(-0.5), dims, &dev)?
            };
            weights.insert(name.clone(), t);
        }
        QwenVisionTower::new(cfg, VarBuilder::from_tensors(weights, DType::F32, &dev))
    }

    fn tiny_qwen2() -> QwenVisionConfig {
        Qwen2VlVisionConfig {
            depth: 2,
            embed_dim: 16,
            hidden_size: 24,
            num_heads: 2,
            patch_size: 2,
            temporal_patch_size: 2,
            in_channels: Some(1),
            ..Default::default()
        }
        .into()
    }

    fn tiny_qwen25() -> QwenVisionConfig {
        Qwen25VlVisionConfig {
            depth: 3,
            hidden_size: 16,
            intermediate_size: 24,
            num_heads: 2,
            patch_size: 2,
            temporal_patch_size: 2,
            in_channels: Some(1),
            // Windows of 2 x 2 merged tokens.
            window_size: 8,
            out_hidden_size: 24,
            fullatt_block_indexes: vec![1],
            ..Default::default()
        }
        .into()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Packing images into one call gives the same rows as running them one at a time: nothing
    /// attends across images (or across the frames of a video).
    fn check_batch_equals_singles(cfg: QwenVisionConfig, grids: &[[usize; 3]]) -> TestResult {
        let tower = random_tower(&cfg)?;
        let total: usize = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
        let pixels = Tensor::randn(0f32, 1.0, (total, tower.patch_dim()), &Device::Cpu)?;
        let (hidden, merged) = tower.forward_with_hidden(&pixels, grids)?;
        let unit = tower.spatial_merge_size().pow(2);
        assert_eq!(merged.dims(), &[total / unit, tower.out_hidden_size()]);
        let (mut row, mut hidden_parts, mut merged_parts) = (0, Vec::new(), Vec::new());
        for g in grids {
            let n = g[0] * g[1] * g[2];
            let (h, m) = tower.forward_with_hidden(&pixels.narrow(0, row, n)?, &[*g])?;
            hidden_parts.push(h);
            merged_parts.push(m);
            row += n;
        }
        assert!(max_diff(&hidden, &Tensor::cat(&hidden_parts, 0)?)? < 1e-5);
        assert!(max_diff(&merged, &Tensor::cat(&merged_parts, 0)?)? < 1e-5);
        Ok(())
    }

    #[test]
    fn qwen2_vl_batch_equals_singles() -> TestResult {
        check_batch_equals_singles(tiny_qwen2(), &[[1, 4, 6], [2, 4, 4], [1, 2, 2]])
    }

    #[test]
    fn qwen2_5_vl_batch_equals_singles() -> TestResult {
        // Partial windows (6 x 10 patches = 3 x 5 units), a video, a single-unit image.
        check_batch_equals_singles(tiny_qwen25(), &[[1, 6, 10], [2, 4, 4], [1, 2, 2]])
    }

    #[test]
    fn qwen2_5_vl_merged_rows_follow_processor_order() -> TestResult {
        // With several windows, the merged rows come back in processor order: the window-ordered
        // hidden states, merged unit by unit, then permuted back.
        let tower = random_tower(&tiny_qwen25())?;
        let grids = [[1, 6, 10]];
        let pixels = Tensor::randn(0f32, 1.0, (60, tower.patch_dim()), &Device::Cpu)?;
        let (hidden, merged) = tower.forward_with_hidden(&pixels, &grids)?;
        let layout = grid::window_layout(&grids, 2, 2);
        let windowed = tower.merger.forward(&hidden)?;
        for (j, &u) in layout.unit_order.iter().enumerate() {
            assert!(max_diff(&windowed.get(j)?, &merged.get(u)?)? == 0.0);
        }
        Ok(())
    }

    #[test]
    fn rejects_inconsistent_inputs() -> TestResult {
        let tower = random_tower(&tiny_qwen2())?;
        let dev = Device::Cpu;
        let px = Tensor::zeros((16, tower.patch_dim()), DType::F32, &dev)?;
        let err = |r: Result<Tensor>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(tower.forward(&px, &[[1, 4, 6]])).contains("24 patches"));
        assert!(err(tower.forward(&px, &[[1, 4, 3], [1, 1, 4]])).contains("multiples"));
        assert!(err(tower.forward(&px, &[])).contains("empty"));
        let wrong_width = Tensor::zeros((16, 7), DType::F32, &dev)?;
        assert!(err(tower.forward(&wrong_width, &[[1, 4, 4]])).contains("found 7"));
        assert!(tower.forward(&px, &[[1, 4, 4]]).is_ok());
        Ok(())
    }
}
