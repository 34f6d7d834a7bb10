//! Bad inputs give errors that name what was expected, what was found and where; never a panic.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use anyhow::Result;
use vlm::{GenerateParams, LoadOptions, Message, ModelSource, Request, Vlm};
use vlm_tests::fixtures;

/// A scratch copy of a fixture model that a test may break.
struct Scratch(PathBuf);

impl Scratch {
    fn of(name: &str, tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("vlm-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(fixtures().join(name))? {
            let p = entry?.path();
            if let Some(f) = p.file_name() {
                std::fs::copy(&p, dir.join(f))?;
            }
        }
        Ok(Self(dir))
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_err(dir: &Path) -> String {
    match Vlm::load(
        &ModelSource::Local(dir.to_path_buf()),
        &LoadOptions::default(),
    ) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// The message of a call that must fail.
fn err_text<T>(result: vlm::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn fixture_model() -> Result<Vlm> {
    Ok(Vlm::load(
        &ModelSource::Local(fixtures().join("llava-clip-llama")),
        &LoadOptions::default(),
    )?)
}

fn photo(vlm: &Vlm) -> Result<vlm::RgbImage> {
    Ok(vlm.load_image(fixtures().join("reference/images/wide_astronaut.png"))?)
}

#[test]
fn missing_file_is_named() -> Result<()> {
    let s = Scratch::of("llava-clip-llama", "missing")?;
    std::fs::remove_file(s.path("tokenizer.json"))?;
    let e = load_err(&s.0);
    assert!(e.contains("tokenizer.json") && e.contains("missing"), "{e}");
    Ok(())
}

#[test]
fn unknown_architecture_lists_supported() -> Result<()> {
    let s = Scratch::of("llava-clip-llama", "arch")?;
    let cfg = std::fs::read_to_string(s.path("config.json"))?
        .replace("\"model_type\": \"llava\"", "\"model_type\": \"blip2\"");
    std::fs::write(s.path("config.json"), cfg)?;
    let e = load_err(&s.0);
    assert!(e.contains("blip2") && e.contains("supported: llava"), "{e}");
    Ok(())
}

#[test]
fn missing_tensor_names_the_key() -> Result<()> {
    let s = Scratch::of("llava-clip-llama", "tensor")?;
    let path = s.path("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)?;
    tensors.remove("model.multi_modal_projector.linear_2.bias");
    candle_core::safetensors::save(&tensors, &path)?;
    let e = load_err(&s.0);
    assert!(e.contains("multi_modal_projector.linear_2.bias"), "{e}");
    Ok(())
}

#[test]
fn shape_mismatch_reports_expected_and_found() -> Result<()> {
    let s = Scratch::of("llava-clip-llama", "shape")?;
    let path = s.path("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)?;
    let bad =
        candle_core::Tensor::zeros((63,), candle_core::DType::F32, &candle_core::Device::Cpu)?;
    tensors.insert("model.language_model.norm.weight".into(), bad);
    candle_core::safetensors::save(&tensors, &path)?;
    let e = load_err(&s.0);
    assert!(
        e.contains("model.language_model.norm.weight") && e.contains("63") && e.contains("64"),
        "{e}"
    );
    Ok(())
}

#[test]
fn truncated_safetensors_names_the_file() -> Result<()> {
    let s = Scratch::of("llava-clip-llama", "trunc")?;
    let path = s.path("model.safetensors");
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    let e = load_err(&s.0);
    assert!(
        e.contains("model.safetensors") && e.contains("safetensors"),
        "{e}"
    );
    Ok(())
}

#[test]
fn bad_images_are_errors() -> Result<()> {
    let vlm = fixture_model()?;
    let dir = std::env::temp_dir().join(format!("vlm-test-img-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let zero = dir.join("zero.png");
    std::fs::write(&zero, b"")?;
    let corrupt = dir.join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nthis is not a png")?;
    for (path, what) in [(&zero, "zero.png"), (&corrupt, "corrupt.png")] {
        match vlm.load_image(path) {
            Ok(_) => panic!("{what} should not decode"),
            Err(e) => assert!(e.to_string().contains(what), "{e}"),
        }
    }
    match vlm.load_image(dir.join("absent.png")) {
        Ok(_) => panic!("absent file should not load"),
        Err(e) => assert!(e.to_string().contains("absent.png"), "{e}"),
    }
    // A 1x1 image is valid: it is upscaled like any other.
    let one = dir.join("one.png");
    vlm_preprocess::image::RgbImage::from_pixel(1, 1, vlm_preprocess::image::Rgb([200, 10, 30]))
        .save(&one)?;
    let img = vlm.load_image(&one)?;
    let prepared = vlm.prepare(&Request::new("What colour?", vec![img]))?;
    let images = vlm_tests::family_media::<vlm_core::models::LlavaImages>(&prepared)?;
    assert_eq!(
        images.pixel_values.as_ref().map(|p| p.dims().to_vec()),
        Some(vec![1, 3, 28, 28])
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn oversized_image_header_is_refused_before_decoding() -> Result<()> {
    let dir = fixtures().join("llava-clip-llama");
    let options = LoadOptions {
        image_limits: vlm::DecodeLimits { max_pixels: 1000 },
        ..LoadOptions::default()
    };
    let vlm = Vlm::load(&ModelSource::Local(dir), &options)?;
    // 64x44 = 2816 pixels > 1000.
    match vlm.load_image(fixtures().join("reference/images/wide_astronaut.png")) {
        Ok(_) => panic!("the limit should refuse this image"),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("2816") && e.contains("1000"), "{e}");
        }
    }
    Ok(())
}

#[test]
fn image_and_placeholder_counts_must_match() -> Result<()> {
    let vlm = fixture_model()?;
    let img = photo(&vlm)?;
    // More images than placeholders.
    let req = Request {
        messages: vec![Message::user_with_images(1, "Two?")],
        images: vec![img.clone(), img.clone()],
        ..Request::default()
    };
    let e = err_text(vlm.prepare(&req));
    assert!(
        e.contains("1 image marker") && e.contains("2 image(s)"),
        "{e}"
    );
    // Fewer images than placeholders.
    let req = Request {
        messages: vec![Message::user_with_images(2, "Two?")],
        images: vec![img],
        ..Request::default()
    };
    let e = err_text(vlm.prepare(&req));
    assert!(
        e.contains("2 image marker") && e.contains("1 image(s)"),
        "{e}"
    );
    Ok(())
}

#[test]
fn feature_count_is_checked_before_the_merge() -> Result<()> {
    let vlm = fixture_model()?;
    let img = photo(&vlm)?;
    let mut prepared = vlm.prepare(&Request::new("Hi", vec![img]))?;
    // Drop one placeholder: 15 placeholders for 16 feature rows.
    let image_token = vlm.model().image_token_id();
    let at = prepared
        .input_ids
        .iter()
        .position(|&t| t == image_token)
        .unwrap_or(0);
    prepared.input_ids.remove(at);
    let e = err_text(vlm.embed(&prepared));
    assert!(
        e.contains("has 15 image placeholder") && e.contains("produced 16 feature"),
        "{e}"
    );
    Ok(())
}

#[test]
fn prompt_longer_than_the_context_is_refused() -> Result<()> {
    let vlm = fixture_model()?;
    let long = "word ".repeat(400);
    let e = err_text(vlm.generate(
        &Request::new(long, vec![]),
        &GenerateParams::default(),
        |_| true,
    ));
    assert!(e.contains("context is 256"), "{e}");
    Ok(())
}

#[test]
fn invalid_sampling_options_are_refused() -> Result<()> {
    let vlm = fixture_model()?;
    let mut params = GenerateParams::default();
    params.sampling.top_p = Some(1.5);
    let e = err_text(vlm.generate(&Request::new("hi", vec![]), &params, |_| true));
    assert!(e.contains("top_p") && e.contains("1.5"), "{e}");
    Ok(())
}
