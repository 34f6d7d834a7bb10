//! Parity of LLaVA-NeXT and LLaVA-OneVision with transformers 5.23 on the tiny checkpoints of
//! `tests/scripts/make_llava_next_fixtures.py`, fed the reference's own pixel values:
//! - `llava-next-tiny`: CLIP + Mistral, published llava-hf layout (renamed here with
//!   `rename_f`, the way the facade's loader does it), two shards;
//! - `llava-onevision-tiny`: SigLIP + Qwen2 (tied head), transformers 5 layout, `anyres_max_9`
//!   with two cases that exceed it (bilinear downscale) and one multi-image prompt (untiled).
//!
//! Tolerances (f32): selected vision states, packed image features and whole-prompt logits max
//! |diff| <= 1e-4; token counts, placeholder counts and greedy ids (KV-cached decoding) equal.

// Tests assert by panicking; the workspace lints target library code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::VarBuilder;
use serde_json::Value;
use vlm_core::models::{
    AnyresVariant, LlavaNext, LlavaNextConfig, LlavaOnevisionConfig, VisionLanguageModel,
};
use vlm_core::Error;

type TestResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Every `*.safetensors` file of a model folder, merged.
fn weights(dir: &Path) -> TestResult<HashMap<String, Tensor>> {
    let mut all = HashMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "safetensors"))
    {
        all.extend(candle_core::safetensors::load(f, &Device::Cpu)?);
    }
    Ok(all)
}

/// Canonical (transformers 5) name -> the name published llava-hf LLaVA-NeXT repos store.
fn published_name(canonical: &str) -> String {
    const RULES: [(&str, &str); 5] = [
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.image_newline", "image_newline"),
    ];
    for (new, old) in RULES {
        if let Some(rest) = canonical.strip_prefix(new) {
            return format!("{old}{rest}");
        }
    }
    canonical.to_string()
}

fn json(path: &Path) -> TestResult<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

fn load(name: &str) -> TestResult<(LlavaNext, HashMap<String, Tensor>, Value)> {
    let dir = fixtures().join(name);
    let config = std::fs::read_to_string(dir.join("config.json"))?;
    let tensors = weights(&dir)?;
    let model = match name {
        "llava-next-tiny" => {
            let cfg: LlavaNextConfig = serde_json::from_str(&config)?;
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)
                .rename_f(|n: &str| published_name(n));
            LlavaNext::new(&cfg, vb, None)?
        }
        _ => {
            let cfg: LlavaOnevisionConfig = serde_json::from_str(&config)?;
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
            LlavaNext::new_onevision(&cfg, vb, None)?
        }
    };
    let reference = candle_core::safetensors::load(
        fixtures()
            .join("reference")
            .join(format!("{name}.safetensors")),
        &Device::Cpu,
    )?;
    let meta = json(&fixtures().join("reference").join(format!("{name}.json")))?;
    Ok((model, reference, meta))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> TestResult<f32> {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn ids_of(t: &Tensor) -> TestResult<Vec<u32>> {
    Ok(t.to_vec1::<i64>()?.into_iter().map(|v| v as u32).collect())
}

fn argmax_last(logits: &Tensor) -> TestResult<u32> {
    let last = logits.i((0, logits.dim(1)? - 1))?;
    Ok(last.argmax(D::Minus1)?.to_scalar::<u32>()?)
}

#[derive(Debug, Default)]
struct Worst {
    selected: f32,
    features: f32,
    logits: f32,
}

fn run_model(name: &str) -> TestResult<Worst> {
    let (model, reference, meta) = load(name)?;
    let get = |case: usize, key: &str| reference.get(&format!("case{case}.{key}")).cloned();
    let eos: Vec<u32> = match &meta["eos_token_ids"] {
        Value::Array(v) => v.iter().map(|x| x.as_u64().unwrap() as u32).collect(),
        v => vec![v.as_u64().unwrap() as u32],
    };
    let mut worst = Worst::default();
    let cases = meta["cases"].as_array().unwrap();
    for (ci, case_meta) in cases.iter().enumerate() {
        let case = ci + 1;
        let ids = ids_of(&get(case, "input_ids").unwrap())?;
        let features = match get(case, "image_sizes") {
            None => None,
            Some(sizes) => {
                let sizes: Vec<(usize, usize)> = sizes
                    .to_vec2::<i64>()?
                    .into_iter()
                    .map(|s| (s[0] as usize, s[1] as usize))
                    .collect();
                let pixels: Vec<Tensor> = (0..sizes.len())
                    .map(|k| get(case, &format!("pixel_values.{k}")).unwrap())
                    .collect();
                for (k, px) in pixels.iter().enumerate() {
                    let want = get(case, &format!("vision_selected.{k}")).unwrap();
                    let d = max_abs_diff(&model.vision_features(px)?, &want)?;
                    assert!(
                        d <= TOLERANCE,
                        "{name} case{case} image {k}: vision states differ by {d}"
                    );
                    worst.selected = worst.selected.max(d);
                }
                // Token counts: the processor's formula, the prompt's placeholders, the rows.
                let counts = model.image_token_counts(&sizes)?;
                let rows: Vec<usize> = case_meta["images"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["feature_rows"].as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(counts, rows, "{name} case{case}: token counts");
                model.check_image_tokens(&ids, &sizes)?;
                let got = model.image_features(&pixels, &sizes)?;
                let want = get(case, "image_features").unwrap();
                let d = max_abs_diff(&got, &want)?;
                assert!(
                    d <= TOLERANCE,
                    "{name} case{case}: image features differ by {d}"
                );
                worst.features = worst.features.max(d);
                Some(got)
            }
        };
        let embeds = model.embed_with_images(&ids, features.as_ref())?;
        let decoder = model.decoder();
        let mut cache = decoder.new_cache();
        let s = ids.len() as u32;
        let positions = Tensor::arange(0u32, s, &Device::Cpu)?.unsqueeze(0)?;
        let logits = decoder.logits(&decoder.forward_embeds(&embeds, &positions, &mut cache)?)?;
        let d = max_abs_diff(&logits.squeeze(0)?, &get(case, "logits").unwrap())?;
        assert!(d <= TOLERANCE, "{name} case{case}: logits differ by {d}");
        worst.logits = worst.logits.max(d);

        // Greedy decoding with the KV cache, EOS ignored; the EOS-stopping run is its prefix.
        let want = ids_of(&get(case, "greedy_ids_noeos").unwrap())?;
        let mut next = argmax_last(&logits)?;
        let mut greedy = vec![next];
        for step in 0..want.len() - 1 {
            let t = Tensor::new(&[[next]], &Device::Cpu)?;
            let pos = Tensor::new(&[[s + step as u32]], &Device::Cpu)?;
            let h = decoder.forward_embeds(&decoder.embed(&t)?, &pos, &mut cache)?;
            next = argmax_last(&decoder.logits(&h)?)?;
            greedy.push(next);
        }
        assert_eq!(greedy, want, "{name} case{case}: greedy ids");
        let with_eos = ids_of(&get(case, "greedy_ids").unwrap())?;
        let stop = greedy
            .iter()
            .position(|t| eos.contains(t))
            .map_or(greedy.len(), |i| i + 1);
        assert_eq!(
            with_eos,
            greedy[..stop],
            "{name} case{case}: greedy ids with EOS"
        );
    }
    Ok(worst)
}

#[test]
fn llava_next_matches_transformers() -> TestResult {
    let w = run_model("llava-next-tiny")?;
    println!(
        "llava-next-tiny: max |diff| vision {:e}, features {:e}, logits {:e}",
        w.selected, w.features, w.logits
    );
    Ok(())
}

#[test]
fn llava_onevision_matches_transformers() -> TestResult {
    let (_, _, meta) = load("llava-onevision-tiny")?;
    let images = meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["images"].as_array().unwrap().clone());
    let flags: Vec<(bool, bool)> = images
        .map(|i| {
            (
                i["downscaled"].as_bool().unwrap(),
                i["tiled"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        flags.iter().any(|f| f.0),
        "the fixture must exercise the anyres_max downscale"
    );
    assert!(
        flags.iter().any(|f| !f.1),
        "the fixture must hold an untiled image"
    );
    let w = run_model("llava-onevision-tiny")?;
    println!(
        "llava-onevision-tiny: max |diff| vision {:e}, features {:e}, logits {:e}",
        w.selected, w.features, w.logits
    );
    Ok(())
}

#[test]
fn placeholder_and_feature_counts_must_agree() -> TestResult {
    let (model, reference, _) = load("llava-next-tiny")?;
    assert_eq!(model.variant(), AnyresVariant::Next);
    let px = reference["case1.pixel_values.0"].clone();
    let size = reference["case1.image_sizes"].to_vec2::<i64>()?[0].clone();
    let size = (size[0] as usize, size[1] as usize);
    let features = model.image_features(std::slice::from_ref(&px), &[size])?;
    let rows = features.dim(0)?;
    assert_eq!(rows, model.num_image_tokens(size.0, size.1)?);

    // A prompt expanded with a wrong per-image count (here 81, as if the image were a fixed
    // 9x9 grid) must be refused, naming both numbers, before and at the merge.
    let image = model.image_token_id();
    let ids: Vec<u32> = [1]
        .into_iter()
        .chain(std::iter::repeat_n(image, 81))
        .chain([5])
        .collect();
    for err in [
        model.check_image_tokens(&ids, &[size]).unwrap_err(),
        model.embed_with_images(&ids, Some(&features)).unwrap_err(),
    ] {
        match &err {
            Error::ImageTokenMismatch {
                placeholders,
                features,
            } => {
                assert_eq!((*placeholders, *features), (81, rows));
            }
            other => panic!("expected ImageTokenMismatch, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("81") && msg.contains(&rows.to_string()),
            "{msg}"
        );
    }

    // Views that do not match the image's tile grid, and a missing size.
    let two_views = px.narrow(0, 0, 2)?;
    let err = model
        .image_features(&[two_views], &[size])
        .unwrap_err()
        .to_string();
    assert!(err.contains("views"), "{err}");
    assert!(model.image_features(&[px], &[]).is_err());
    Ok(())
}

#[test]
fn onevision_counts_follow_the_prompt() -> TestResult {
    let dir = fixtures().join("llava-onevision-tiny");
    let cfg: LlavaOnevisionConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    assert_eq!(cfg.max_num_patches()?, 9);
    let (model, _, meta) = load("llava-onevision-tiny")?;
    assert_eq!(model.variant(), AnyresVariant::Onevision);
    // case4 holds two images: both untiled, tokens per view + one newline each.
    let case4 = &meta["cases"][3];
    let sizes: Vec<(usize, usize)> = case4["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["image_size"][0].as_u64().unwrap() as usize,
                i["image_size"][1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert!(!model.tiles_in_prompt_of(2) && model.tiles_in_prompt_of(1));
    let untiled = cfg.num_image_tokens_untiled()?;
    assert_eq!(model.image_token_counts(&sizes)?, vec![untiled; 2]);
    assert_eq!(untiled, 9 + 1);
    // The config-level count equals the model's for a tiled image.
    let (h, w) = sizes[0];
    assert_eq!(cfg.num_image_tokens(h, w)?, model.num_image_tokens(h, w)?);
    Ok(())
}
