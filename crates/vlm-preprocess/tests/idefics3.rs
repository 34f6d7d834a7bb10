//! Parity of the Idefics3 / SmolVLM image processor with transformers 5.23's
//! `Idefics3ImageProcessorPil`.
//!
//! Fixtures come from `tests/scripts/idefics3_preprocess_fixtures.py`: real photographs (wider
//! than tall, taller than wide, smaller than one tile, larger than the resize target, a 120x7
//! strip, grayscale), configs in both dialects, and the reference outputs. Tolerances:
//! `pixel_values` max |diff| <= 1e-6 (measured: 0); the resized `uint8` images, the tile grid
//! (`rows`, `cols`), the tile count and `pixel_attention_mask` equal. A size table checks the
//! size arithmetic (both resizes and the grid) for 124 image sizes under five configs, including
//! the class defaults and the published SmolVLM-256M-Instruct config.

// Tests assert by panicking; the workspace lints target library code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use vlm_preprocess::idefics3::{
    pad_batch, resize_output_size, split_grid, vision_encoder_size, FirstResize,
    Idefics3ImageProcessor, Idefics3ProcessorConfig,
};
use vlm_preprocess::image::RgbImage;
use vlm_preprocess::{load_image, Resample};

const PIXEL_TOLERANCE: f32 = 1e-6;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/preprocess/idefics3")
}

fn index() -> Value {
    let path = fixture_dir().join("index.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn processor(config: &str) -> Result<Idefics3ImageProcessor> {
    Ok(Idefics3ImageProcessor::from_dir(
        &fixture_dir().join("configs").join(config),
    )?)
}

fn image(name: &str) -> Result<RgbImage> {
    Ok(load_image(
        &fixture_dir().join("images").join(format!("{name}.png")),
    )?)
}

fn chw(image: &RgbImage) -> Vec<u8> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut out = vec![0u8; 3 * h * w];
    for (x, y, p) in image.enumerate_pixels() {
        for c in 0..3 {
            out[(c * h + y as usize) * w + x as usize] = p.0[c];
        }
    }
    out
}

fn tensor<'a>(st: &'a SafeTensors, key: &str, dtype: Dtype) -> Result<(&'a [u8], Vec<usize>)> {
    let t = st
        .tensor(key)
        .with_context(|| format!("missing tensor {key}"))?;
    ensure!(
        t.dtype() == dtype,
        "{key}: {:?}, expected {dtype:?}",
        t.dtype()
    );
    Ok((t.data(), t.shape().to_vec()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn compare_u8(st: &SafeTensors, key: &str, got: &RgbImage) -> Result<()> {
    let (want, shape) = tensor(st, key, Dtype::U8)?;
    ensure!(
        shape == [3, got.height() as usize, got.width() as usize],
        "{key}: {}x{} (h x w), reference {shape:?}",
        got.height(),
        got.width()
    );
    let got = chw(got);
    let differing = got.iter().zip(want).filter(|(a, b)| a != b).count();
    ensure!(differing == 0, "{key}: {differing} uint8 values differ");
    Ok(())
}

fn run_case(st: &SafeTensors, case: &Value) -> Result<f32> {
    let config = case["config"].as_str().context("config")?;
    let name = case["image"].as_str().context("image")?;
    let p = processor(config)?;
    let im = image(name)?;
    let key = format!("{config}/{name}");

    if st.tensor(&format!("{key}/resized")).is_ok() {
        compare_u8(st, &format!("{key}/resized"), &p.resize(&im)?)?;
    }
    if st.tensor(&format!("{key}/encoder")).is_ok() {
        let first = p.resize(&im)?;
        compare_u8(
            st,
            &format!("{key}/encoder"),
            &p.resize_for_vision_encoder(&first)?,
        )?;
    }

    let tiles = p.process(&im)?;
    let grid = (
        case["rows"].as_u64().context("rows")? as usize,
        case["cols"].as_u64().context("cols")? as usize,
    );
    ensure!(
        tiles.grid() == grid,
        "grid {:?}, reference {grid:?}",
        tiles.grid()
    );
    ensure!(p.grid(im.height(), im.width())? == grid);
    ensure!(p.num_tiles(im.height(), im.width())? == tiles.n_tiles());

    let (want, shape) = tensor(st, &format!("{key}/pixel_values"), Dtype::F32)?;
    ensure!(
        tiles.shape.as_slice() == shape,
        "shape {:?}, reference {shape:?}",
        tiles.shape
    );
    let diff = max_abs_diff(&tiles.pixel_values, &f32s(want));
    ensure!(diff <= PIXEL_TOLERANCE, "pixel_values max |diff| {diff}");

    let (mask, mask_shape) = tensor(st, &format!("{key}/pixel_attention_mask"), Dtype::U8)?;
    ensure!(mask_shape == [shape[0], shape[2], shape[3]]);
    ensure!(
        tiles.pixel_attention_mask == mask,
        "pixel_attention_mask differs"
    );
    Ok(diff)
}

#[test]
fn images_match_the_reference() -> Result<()> {
    let bytes = std::fs::read(fixture_dir().join("expected.safetensors"))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let index = index();
    let cases = index["cases"].as_array().context("cases")?;
    ensure!(cases.len() >= 13);
    let mut worst = 0f32;
    for case in cases {
        let diff = run_case(&st, case).with_context(|| format!("case {case}"))?;
        worst = worst.max(diff);
    }
    eprintln!("{} cases, pixel_values max |diff| {worst}", cases.len());
    Ok(())
}

#[test]
fn both_config_dialects_agree() -> Result<()> {
    let dir = fixture_dir().join("configs");
    // The published folder has a processor_config.json without an "image_processor" entry: the
    // flat preprocessor_config.json must be read.
    let published = Idefics3ProcessorConfig::from_dir(&dir.join("split_published"))?;
    let nested = Idefics3ProcessorConfig::from_dir(&dir.join("split_nested"))?;
    ensure!(published == nested, "{published:?}\n{nested:?}");
    ensure!(processor("split_published")? == processor("split_nested")?);

    let resolved = &index()["resolved_configs"];
    for (name, want) in resolved.as_object().context("resolved_configs")? {
        let p = processor(name)?;
        let longest = want["size"]["longest_edge"].as_u64();
        match (p.first_resize(), want["do_resize"].as_bool()) {
            (None, Some(false)) => {}
            (Some(FirstResize::LongestEdge(edge)), Some(true)) => {
                ensure!(Some(u64::from(edge)) == longest, "{name}: size")
            }
            (other, _) => bail!("{name}: first resize {other:?}, reference {want}"),
        }
        ensure!(
            Some(u64::from(p.max_image_size())) == want["max_image_size"]["longest_edge"].as_u64(),
            "{name}: max_image_size"
        );
        ensure!(Some(p.image_splitting()) == want["do_image_splitting"].as_bool());
        ensure!(Some(p.pads()) == want["do_pad"].as_bool());
        let resample = want["resample"].as_i64().context("resample")?;
        ensure!(
            p.resample() == Resample::from_pillow(resample)?,
            "{name}: resample"
        );
    }
    ensure!(processor("defaults")? == Idefics3ImageProcessor::default());
    Ok(())
}

/// The reference's resize calls for each size, with a stub resize: `[first, vision encoder,
/// global]` when splitting (the first absent without `do_resize`, the global absent for one
/// tile), `[first, square]` without splitting.
#[test]
fn size_table_matches_the_reference() -> Result<()> {
    let index = index();
    let rows = index["size_table"].as_array().context("size_table")?;
    ensure!(rows.len() >= 600);
    for row in rows {
        let config = row["config"].as_str().context("config")?;
        let p = processor(config)?;
        let (h, w) = (
            row["height"].as_u64().context("height")? as u32,
            row["width"].as_u64().context("width")? as u32,
        );
        let calls: Vec<(u32, u32)> = row["resizes"]
            .as_array()
            .context("resizes")?
            .iter()
            .map(|c| (c[0].as_u64().unwrap() as u32, c[1].as_u64().unwrap() as u32))
            .collect();
        if row.get("error").is_some() {
            ensure!(p.grid(h, w).is_err(), "{row}: expected an error");
            continue;
        }
        let grid = (
            row["rows"].as_u64().context("rows")? as usize,
            row["cols"].as_u64().context("cols")? as usize,
        );
        ensure!(p.grid(h, w)? == grid, "{row}: grid {:?}", p.grid(h, w)?);
        ensure!(p.num_tiles(h, w)? as u64 == row["tiles"].as_u64().context("tiles")?);
        let m = p.max_image_size();
        let mut expected = Vec::new();
        let first = match p.first_resize() {
            Some(FirstResize::LongestEdge(edge)) => Some(resize_output_size(h, w, edge)?),
            Some(FirstResize::Exact(e)) => Some((e.height, e.width)),
            None => None,
        };
        expected.extend(first);
        let (rh, rw) = first.unwrap_or((h, w));
        if p.image_splitting() {
            let (eh, ew) = vision_encoder_size(rh, rw, m)?;
            expected.push((eh, ew));
            if split_grid(eh, ew, m) != (0, 0) {
                expected.push((m, m));
            }
        } else {
            expected.push((m, m));
        }
        ensure!(calls == expected, "{row}: resizes {expected:?}");
    }
    Ok(())
}

#[test]
fn batches_match_the_reference() -> Result<()> {
    let index = index();
    let p = processor("split_published")?;
    for (name, batch) in index["batches"].as_object().context("batches")? {
        let samples = batch["samples"]
            .as_array()
            .context("samples")?
            .iter()
            .map(|s| {
                s.as_array()
                    .unwrap()
                    .iter()
                    .map(|n| Ok(p.process(&image(n.as_str().unwrap())?)?))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let out = pad_batch(&samples)?;
        let shape: Vec<usize> = serde_json::from_value(batch["shape"].clone())?;
        ensure!(
            out.shape.as_slice() == shape,
            "{name}: shape {:?}",
            out.shape
        );
        let rows: Vec<Vec<usize>> = serde_json::from_value(batch["rows"].clone())?;
        let cols: Vec<Vec<usize>> = serde_json::from_value(batch["cols"].clone())?;
        for (s, grids) in out.grids.iter().enumerate() {
            let want: Vec<(usize, usize)> = rows[s].iter().copied().zip(cols[s].clone()).collect();
            ensure!(
                *grids == want,
                "{name}: grids {grids:?}, reference {want:?}"
            );
        }
        let sums: Vec<Vec<u64>> = serde_json::from_value(batch["mask_sums"].clone())?;
        let tile = shape[3] * shape[4];
        let got: Vec<Vec<u64>> = out
            .pixel_attention_mask
            .chunks(shape[1] * tile)
            .map(|s| {
                s.chunks(tile)
                    .map(|t| t.iter().map(|&m| u64::from(m)).sum())
                    .collect()
            })
            .collect();
        ensure!(got == sums, "{name}: mask sums {got:?}");
        // Padding tiles are all zero; real tiles are the images' own values in order.
        let tile_len = shape[2] * tile;
        for (s, sample) in samples.iter().enumerate() {
            let own: Vec<f32> = sample.iter().flat_map(|t| t.pixel_values.clone()).collect();
            let start = s * shape[1] * tile_len;
            let values = &out.pixel_values[start..start + shape[1] * tile_len];
            ensure!(values[..own.len()] == own[..], "{name}: sample {s} values");
            ensure!(values[own.len()..].iter().all(|&v| v == 0.0));
        }
        if name == "one_prompt_two_images" {
            let images = [image("wide_97x58")?, image("strip_120x7")?];
            ensure!(p.process_prompt(&images)? == out);
        }
    }
    Ok(())
}
