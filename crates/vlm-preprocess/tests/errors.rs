//! Error paths: each must be an `Err` with a message naming what was expected and found.

// Tests assert by panicking; the workspace lints target library code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use vlm_preprocess::{
    load_image, load_image_from_bytes, load_image_from_bytes_with_limits, DecodeLimits,
    ImageProcessor, ImageProcessorConfig, PreprocessError,
};

fn fixture_png() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/preprocess/images/wide_rgb.png");
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A PNG announcing `width` x `height` (8-bit RGB) whose IDAT holds only a few bytes: a
/// decompression-bomb-shaped file.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(b"IHDR");
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    out.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    for (kind, data) in [
        (&b"IDAT"[..], &[0x78u8, 0x9c, 0x03, 0x00][..]),
        (b"IEND", &[]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn zero_byte_input() {
    let err = load_image_from_bytes(&[]).unwrap_err();
    assert!(matches!(err, PreprocessError::EmptyInput { .. }), "{err:?}");
    assert!(err.to_string().contains("0-byte"), "{err}");
}

#[test]
fn corrupt_bytes() {
    let err = load_image_from_bytes(b"definitely not an image file").unwrap_err();
    assert!(
        matches!(err, PreprocessError::UnknownFormat { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("64, 65"),
        "message shows the first bytes: {err}"
    );
}

#[test]
fn corrupt_png_body() {
    let mut bytes = fixture_png();
    let n = bytes.len();
    for b in &mut bytes[60..n - 20] {
        *b ^= 0x5a;
    }
    let err = load_image_from_bytes(&bytes).unwrap_err();
    assert!(matches!(err, PreprocessError::Decode { .. }), "{err:?}");
}

#[test]
fn truncated_png() {
    let bytes = fixture_png();
    for len in [8, 30, bytes.len() / 2, bytes.len() - 13] {
        let err = load_image_from_bytes(&bytes[..len]).unwrap_err();
        assert!(
            matches!(err, PreprocessError::Decode { .. }),
            "len {len}: {err:?}"
        );
        assert!(err.to_string().contains("<bytes>"), "{err}");
    }
}

#[test]
fn header_over_pixel_limit_is_rejected_before_decoding() {
    // 100000 x 100000 would need 30 GB; the header alone must be enough to refuse it.
    let err = load_image_from_bytes(&png_header(100_000, 100_000)).unwrap_err();
    match &err {
        PreprocessError::TooManyPixels {
            pixels, max_pixels, ..
        } => {
            assert_eq!(*pixels, 10_000_000_000);
            assert_eq!(*max_pixels, DecodeLimits::default().max_pixels);
        }
        other => panic!("expected TooManyPixels, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("10000000000") && msg.contains("178956970"),
        "{msg}"
    );

    // A small custom limit rejects a real image, and accepts it when raised.
    let png = fixture_png();
    let small = DecodeLimits { max_pixels: 100 };
    assert!(matches!(
        load_image_from_bytes_with_limits(&png, small),
        Err(PreprocessError::TooManyPixels { .. })
    ));
    let image = load_image_from_bytes_with_limits(
        &png,
        DecodeLimits {
            max_pixels: 90 * 60,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(image.dimensions(), (90, 60));
}

#[test]
fn missing_file_names_the_path() {
    let path = Path::new("/nonexistent/dir/cat.png");
    let err = load_image(path).unwrap_err();
    assert!(matches!(err, PreprocessError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/dir/cat.png"),
        "{err}"
    );
}

#[test]
fn missing_config_lists_both_files() {
    let err = ImageProcessorConfig::from_dir(Path::new("/nonexistent/model")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("processor_config.json") && msg.contains("preprocessor_config.json"),
        "{msg}"
    );
}

fn build(json: &str) -> Result<ImageProcessor, PreprocessError> {
    ImageProcessor::from_config(&ImageProcessorConfig::from_json_str(json)?)
}

#[test]
fn unknown_processor_type() {
    let err = build(r#"{"image_processor_type": "Qwen2VLImageProcessor"}"#).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, PreprocessError::UnknownProcessorType { .. }),
        "{err:?}"
    );
    assert!(
        msg.contains("Qwen2VLImageProcessor") && msg.contains("SiglipImageProcessor"),
        "{msg}"
    );
}

#[test]
fn unknown_resample() {
    for bad in ["6", "7", "-1", "\"bicubic\""] {
        let err = build(&format!(
            r#"{{"image_processor_type": "CLIPImageProcessor", "resample": {bad}}}"#
        ))
        .unwrap_err();
        assert!(
            matches!(err, PreprocessError::UnknownResample { .. }),
            "{bad}: {err:?}"
        );
        assert!(err.to_string().contains("3 (bicubic)"), "{err}");
    }
}

#[test]
fn invalid_sizes() {
    let cases = [
        r#"{"image_processor_type": "CLIPImageProcessor", "size": {"longest_edge": 3}}"#,
        r#"{"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 0}}"#,
        r#"{"image_processor_type": "CLIPImageProcessor", "crop_size": {"height": 3}}"#,
        r#"{"image_processor_type": "SiglipImageProcessor", "image_mean": [0.5, 0.5]}"#,
        r#"{"image_processor_type": "LlavaImageProcessor", "do_pad": true, "image_mean": [2, 0, 0]}"#,
    ];
    for json in cases {
        let err = build(json).unwrap_err();
        assert!(
            matches!(err, PreprocessError::InvalidConfig { .. }),
            "{json}: {err:?}"
        );
    }
}

#[test]
fn malformed_json() {
    let err = ImageProcessorConfig::from_json_str("{\"do_resize\": 3").unwrap_err();
    assert!(matches!(err, PreprocessError::ConfigJson { .. }), "{err:?}");
}
