//! Helpers shared by the integration tests: fixture paths, reference tensors, comparisons.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde_json::Value;

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Reference outputs of one fixture model, written by `tests/scripts/make_fixtures.py`.
#[derive(Debug)]
pub struct Reference {
    /// The JSON metadata (`cases`, configs).
    pub meta: Value,
    tensors: std::collections::HashMap<String, Tensor>,
}

impl Reference {
    /// Loads `reference/<name>.{json,safetensors}`.
    pub fn load(name: &str) -> Result<Self> {
        let dir = fixtures().join("reference");
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.json")))
                .with_context(|| format!("reading {name}.json"))?,
        )?;
        let tensors =
            candle_core::safetensors::load(dir.join(format!("{name}.safetensors")), &Device::Cpu)?
                .into_iter()
                .collect();
        Ok(Self { meta, tensors })
    }

    /// Tensor `case{case}.{name}`.
    pub fn tensor(&self, case: usize, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(&format!("case{case}.{name}"))
            .with_context(|| format!("reference has no case{case}.{name}"))
    }

    /// Integer tensor `case{case}.{name}` as u32s.
    pub fn ids(&self, case: usize, name: &str) -> Result<Vec<u32>> {
        Ok(self
            .tensor(case, name)?
            .to_dtype(candle_core::DType::I64)?
            .to_vec1::<i64>()?
            .into_iter()
            .map(|v| v as u32)
            .collect())
    }

    /// The cases' JSON entries.
    pub fn cases(&self) -> Vec<Value> {
        self.meta["cases"].as_array().cloned().unwrap_or_default()
    }
}

/// The loaded model as its family's type `T` (to run a vision tower or projector alone).
pub fn family_model<T: vlm::VisionLanguageModel>(vlm: &vlm::Vlm) -> Result<&T> {
    vlm.model().downcast_ref::<T>().with_context(|| {
        format!(
            "{} did not load as a {}",
            vlm.model().architecture(),
            std::any::type_name::<T>()
        )
    })
}

/// The prepared media as its family's type `T`.
pub fn family_media<T: vlm::MediaInputs>(prepared: &vlm::Prepared) -> Result<&T> {
    prepared
        .media
        .downcast_ref::<T>()
        .with_context(|| format!("prepared media are not a {}", std::any::type_name::<T>()))
}

/// Largest `|a - b|` over two same-shaped tensors (compared in f32).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    anyhow::ensure!(
        a.dims() == b.dims(),
        "shape mismatch: {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    let d = (a.to_dtype(candle_core::DType::F32)? - b.to_dtype(candle_core::DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    Ok(d)
}

/// Checks one reference case end to end: whole-prompt logits within `tol` (max abs diff, which
/// is returned and printed with `--nocapture`), and greedy ids equal to the reference's, both
/// stopping at EOS (`greedy_ids`) and with EOS ignored (`greedy_ids_noeos`).
pub fn check_logits_and_greedy(
    vlm: &vlm::Vlm,
    prepared: &vlm::Prepared,
    reference: &Reference,
    case: usize,
    max_new_tokens: usize,
    tol: f32,
    what: &str,
) -> Result<f32> {
    let logits = vlm.prompt_logits(prepared)?;
    let d = max_abs_diff(&logits, reference.tensor(case, "logits")?)?;
    eprintln!("{what}: logits max abs diff {d:.2e}");
    anyhow::ensure!(d <= tol, "{what}: logits differ by {d} (tolerance {tol})");
    let params = vlm::GenerateParams {
        max_new_tokens,
        ..vlm::GenerateParams::default()
    };
    let greedy = vlm.generate_prepared(prepared, &params, |_| true)?;
    anyhow::ensure!(
        greedy.token_ids == reference.ids(case, "greedy_ids")?,
        "{what}: greedy ids {:?} differ from the reference",
        greedy.token_ids
    );
    let params = vlm::GenerateParams {
        ignore_eos: true,
        ..params
    };
    let noeos = vlm.generate_prepared(prepared, &params, |_| true)?;
    anyhow::ensure!(
        noeos.token_ids == reference.ids(case, "greedy_ids_noeos")?,
        "{what}: greedy ids with EOS ignored {:?} differ from the reference",
        noeos.token_ids
    );
    Ok(d)
}

/// The request of a reference case: its messages, its images (file names, or objects with a
/// `file`, under `reference/images`) and its videos (`{"frames": [...], "fps": ...}`).
pub fn request(vlm: &vlm::Vlm, case: &Value) -> Result<vlm::Request> {
    let dir = fixtures().join("reference/images");
    let images = case["images"]
        .as_array()
        .context("images")?
        .iter()
        .map(|img| {
            let file = img
                .as_str()
                .or_else(|| img["file"].as_str())
                .context("image file")?;
            Ok(vlm.load_image(dir.join(file))?)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut videos = Vec::new();
    for v in case["videos"].as_array().into_iter().flatten() {
        let frames: Vec<_> = v["frames"]
            .as_array()
            .context("frames")?
            .iter()
            .map(|f| dir.join(f.as_str().unwrap_or_default()))
            .collect();
        videos.push(vlm.load_video(&frames, v["fps"].as_f64())?);
    }
    Ok(vlm::Request {
        messages: messages(&case["messages"])?,
        images,
        videos,
    })
}

/// Cosine similarity of two same-shaped tensors, flattened (compared in f32).
pub fn cosine(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_dtype(candle_core::DType::F32)?.flatten_all()?;
    let b = b.to_dtype(candle_core::DType::F32)?.flatten_all()?;
    let dot = (&a * &b)?.sum_all()?.to_scalar::<f32>()?;
    let norm = |t: &Tensor| -> Result<f32> { Ok(t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?) };
    Ok(dot / (norm(&a)? * norm(&b)?))
}

/// Parses an HF-style message list (`[{"role", "content": [{"type": "image"} | {"type":
/// "video"} | {"type": "text", "text"}]}]`).
pub fn messages(value: &Value) -> Result<Vec<vlm::Message>> {
    let mut out = Vec::new();
    for m in value.as_array().context("messages must be a list")? {
        let role = m["role"].as_str().context("role")?;
        let parts = match &m["content"] {
            Value::String(s) => vec![vlm::ContentPart::Text(s.clone())],
            Value::Array(parts) => parts
                .iter()
                .map(|p| match p["type"].as_str() {
                    Some("image") => Ok(vlm::ContentPart::Image),
                    Some("video") => Ok(vlm::ContentPart::Video),
                    Some("text") => Ok(vlm::ContentPart::Text(
                        p["text"].as_str().context("text part")?.to_string(),
                    )),
                    other => anyhow::bail!("unknown content part {other:?}"),
                })
                .collect::<Result<_>>()?,
            other => anyhow::bail!("unexpected content {other}"),
        };
        out.push(vlm::Message::new(role, parts));
    }
    Ok(out)
}
