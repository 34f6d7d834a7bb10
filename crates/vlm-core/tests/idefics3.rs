//! Parity of `vlm_core::models::Idefics3` with transformers 5.23's
//! `Idefics3ForConditionalGeneration` on the tiny fixture checkpoints.
//!
//! Fixtures come from `tests/scripts/make_idefics3_fixtures.py`: `idefics3-tiny` (published
//! SmolVLM layout and config dialect) and `idefics3-tiny-nosplit` (transformers 5
//! `save_pretrained`, the same weights). Both use the same key names, so no renaming is needed.
//! Tolerances (f32): vision tower output, connector output and whole-prompt logits max |diff|
//! <= 1e-4; greedy ids (KV-cached decoding, EOS ignored) and the position-id bucketize tables
//! equal.

// Tests assert by panicking; the workspace lints target library code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use serde_json::Value;
use vlm_core::models::{Idefics3, Idefics3Config, VisionLanguageModel};
use vlm_core::vision::idefics3::{arange_boundaries, bucket_coords};
use vlm_core::Error;

type TestResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn meta() -> TestResult<Value> {
    let text = std::fs::read_to_string(fixtures().join("reference/idefics3-tiny.json"))?;
    Ok(serde_json::from_str(&text)?)
}

fn reference(device: &Device) -> TestResult<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(
        fixtures().join("reference/idefics3-tiny.safetensors"),
        device,
    )?)
}

fn load_model(dir: &Path, device: &Device) -> TestResult<Idefics3> {
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let config = Idefics3Config::from_json(&config)?;
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), device)?;
    let vb = VarBuilder::from_tensors(weights, DType::F32, device);
    Ok(Idefics3::new(&config, vb, None)?)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> TestResult<f32> {
    if a.dims() != b.dims() {
        return Err(format!("shapes differ: {:?} vs {:?}", a.dims(), b.dims()).into());
    }
    Ok((a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?)
}

fn get<'a>(t: &'a HashMap<String, Tensor>, key: &str) -> TestResult<&'a Tensor> {
    t.get(key)
        .ok_or_else(|| format!("missing reference tensor {key}").into())
}

fn ids_of(t: &Tensor) -> TestResult<Vec<u32>> {
    Ok(t.to_dtype(DType::I64)?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|v| v as u32)
        .collect())
}

/// Whole-prompt logits and the greedy continuation (`steps` tokens, KV cache, EOS ignored).
fn logits_and_greedy(
    model: &Idefics3,
    ids: &[u32],
    features: Option<&Tensor>,
    steps: usize,
) -> TestResult<(Tensor, Vec<u32>)> {
    let device = model.decoder().device().clone();
    let embeds = model.embed_with_images(ids, features)?;
    let mut cache = model.decoder().new_cache();
    let n = ids.len() as u32;
    let positions = Tensor::arange(0u32, n, &device)?.unsqueeze(0)?;
    let hidden = model
        .decoder()
        .forward_embeds(&embeds, &positions, &mut cache)?;
    let logits = model.decoder().logits(&hidden)?.squeeze(0)?;
    let mut next = logits
        .get(ids.len() - 1)?
        .argmax(D::Minus1)?
        .to_scalar::<u32>()?;
    let mut out = vec![next];
    for step in 1..steps {
        let t = Tensor::new(&[[next]], &device)?;
        let embeds = model.decoder().embed(&t)?;
        let pos = Tensor::new(&[[n + step as u32 - 1]], &device)?;
        let hidden = model.decoder().forward_embeds(&embeds, &pos, &mut cache)?;
        next = model
            .decoder()
            .logits(&hidden)?
            .squeeze(0)?
            .squeeze(0)?
            .argmax(D::Minus1)?
            .to_scalar::<u32>()?;
        out.push(next);
    }
    Ok((logits, out))
}

fn cases_match_the_reference(device: &Device) -> TestResult {
    let meta = meta()?;
    let reference = reference(device)?;
    let mut models: HashMap<String, Idefics3> = HashMap::new();
    let (mut worst_vision, mut worst_features, mut worst_logits) = (0f32, 0f32, 0f32);
    let cases = meta["cases"].as_array().ok_or("cases")?;
    assert!(cases.len() >= 6);
    for case in cases {
        let ci = case["case"].as_u64().ok_or("case")?;
        let dir = case["model"].as_str().ok_or("model")?;
        if !models.contains_key(dir) {
            models.insert(dir.to_string(), load_model(&fixtures().join(dir), device)?);
        }
        let model = &models[dir];
        assert_eq!(
            model.image_seq_len(),
            meta["image_seq_len"].as_u64().unwrap() as usize
        );
        assert_eq!(
            model.image_token_id(),
            meta["image_token_id"].as_u64().unwrap() as u32
        );
        let key = |name: &str| format!("case{ci}.{name}");
        let ids = ids_of(get(&reference, &key("input_ids"))?)?;

        let features = if let Ok(pv) = get(&reference, &key("pixel_values")) {
            let mask = get(&reference, &key("pixel_attention_mask"))?;
            let vision = model.vision_features(pv, Some(mask))?;
            let dv = max_abs_diff(&vision, get(&reference, &key("vision_output"))?)?;
            let features = model.image_features(pv, Some(mask))?;
            let df = max_abs_diff(&features, get(&reference, &key("image_features"))?)?;
            assert!(
                dv <= TOLERANCE && df <= TOLERANCE,
                "case{ci}: vision {dv}, features {df}"
            );
            // Without a mask every pixel counts as real, which these tiles all are.
            let unmasked = model.image_features(pv, None)?;
            assert!(max_abs_diff(&unmasked, &features)? == 0.0);
            worst_vision = worst_vision.max(dv);
            worst_features = worst_features.max(df);
            Some(features)
        } else {
            None
        };

        let want_greedy = ids_of(get(&reference, &key("greedy_ids_noeos"))?)?;
        let (logits, greedy) =
            logits_and_greedy(model, &ids, features.as_ref(), want_greedy.len())?;
        let dl = max_abs_diff(&logits, get(&reference, &key("logits"))?)?;
        assert!(dl <= TOLERANCE, "case{ci}: logits max |diff| {dl}");
        worst_logits = worst_logits.max(dl);
        assert_eq!(greedy, want_greedy, "case{ci}: greedy ids");
        eprintln!("case{ci} ({dir}): logits max |diff| {dl:.2e}");
    }
    eprintln!(
        "max |diff|: vision {worst_vision:.2e}, connector {worst_features:.2e}, logits \
         {worst_logits:.2e}"
    );
    Ok(())
}

#[test]
fn cases_match_the_reference_cpu() -> TestResult {
    cases_match_the_reference(&Device::Cpu)
}

/// A tile with padded patches (4 of 6 patch rows and 3 of 6 columns real) and an all-zero
/// padding tile, which the model drops.
#[test]
fn padded_tiles_match_the_reference() -> TestResult {
    let device = Device::Cpu;
    let reference = reference(&device)?;
    let model = load_model(&fixtures().join("idefics3-tiny"), &device)?;
    let pv = get(&reference, "vision_padded.pixel_values")?;
    let mask = get(&reference, "vision_padded.pixel_attention_mask")?;
    assert_eq!(Idefics3::real_tiles(pv)?, vec![0, 1]);
    let vision = model.vision_features(pv, Some(mask))?;
    let dv = max_abs_diff(&vision, get(&reference, "vision_padded.vision_output")?)?;
    let features = model.image_features(pv, Some(mask))?;
    let df = max_abs_diff(&features, get(&reference, "vision_padded.image_features")?)?;
    eprintln!("padded tiles: vision {dv:.2e}, connector {df:.2e}");
    assert!(dv <= TOLERANCE && df <= TOLERANCE);
    // The mask matters: without it the padded patches would be attended to.
    let unmasked = model.vision_features(pv, None)?;
    assert!(max_abs_diff(&unmasked, &vision)? > 1e-3);
    Ok(())
}

#[test]
fn position_buckets_match_torch() -> TestResult {
    let reference = reference(&Device::Cpu)?;
    let mut checked = 0;
    for n in (1..=40).chain([48, 64, 73]) {
        let want = get(&reference, &format!("bucketize.boundaries_n{n}"))?.to_vec1::<f32>()?;
        let got = arange_boundaries(n);
        let same = got.len() == want.len()
            && got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "n={n}: boundaries {got:?}, torch {want:?}");
        let table = get(&reference, &format!("bucketize.buckets_n{n}"))?.to_vec2::<u8>()?;
        for (k, row) in table.iter().enumerate() {
            let got: Vec<u8> = bucket_coords(k + 1, n, &got)
                .into_iter()
                .map(|b| b as u8)
                .collect();
            assert_eq!(&got, row, "n={n}, {} real patches", k + 1);
            checked += 1;
        }
    }
    assert!(checked > 800);
    Ok(())
}

#[test]
fn placeholder_count_is_checked() -> TestResult {
    let device = Device::Cpu;
    let reference = reference(&device)?;
    let model = load_model(&fixtures().join("idefics3-tiny"), &device)?;
    let pv = get(&reference, "case1.pixel_values")?;
    let features = model.image_features(pv, None)?;
    let mut ids = ids_of(get(&reference, "case1.input_ids")?)?;
    let image = model.image_token_id();
    let pos = ids.iter().position(|&t| t == image).unwrap();
    ids.remove(pos);
    match model.embed_with_images(&ids, Some(&features)) {
        Err(Error::ImageTokenMismatch {
            placeholders,
            features,
        }) => {
            assert_eq!((placeholders, features), (62, 63));
            let msg = Error::ImageTokenMismatch {
                placeholders,
                features,
            }
            .to_string();
            assert!(msg.contains("62") && msg.contains("63"), "{msg}");
        }
        other => panic!("expected ImageTokenMismatch, got {other:?}"),
    }
    // Text-only ids with image features, and image ids without features, fail the same way.
    let text_ids = ids_of(get(&reference, "case6.input_ids")?)?;
    assert!(model.embed_with_images(&text_ids, Some(&features)).is_err());
    ids.insert(pos, image);
    assert!(model.embed_with_images(&ids, None).is_err());
    // All tiles zero: nothing to encode.
    let zeros = pv.zeros_like()?;
    assert!(model.image_features(&zeros, None).is_err());
    Ok(())
}

#[test]
fn both_config_dialects_load_the_same_model() -> TestResult {
    let read = |dir: &str| -> TestResult<Idefics3Config> {
        let text = std::fs::read_to_string(fixtures().join(dir).join("config.json"))?;
        Ok(Idefics3Config::from_json(&serde_json::from_str(&text)?)?)
    };
    let (published, t5) = (read("idefics3-tiny")?, read("idefics3-tiny-nosplit")?);
    let (a, b) = (published.text()?.resolve()?, t5.text()?.resolve()?);
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(
        format!("{:?}", published.vision_config),
        format!("{:?}", t5.vision_config)
    );
    assert_eq!(
        (
            published.image_token_id,
            published.scale_factor,
            published.tie_word_embeddings
        ),
        (t5.image_token_id, t5.scale_factor, t5.tie_word_embeddings)
    );
    assert!(!published.tie_word_embeddings && published.image_seq_len() == 9);
    Ok(())
}
