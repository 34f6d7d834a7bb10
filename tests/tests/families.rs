//! The family registry: every supported `model_type` loads through it (as the architecture it
//! names), and a media option the loaded family does not read is refused at load.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use vlm::{LoadOptions, MediaOptions, ModelSource, Vlm};
use vlm_tests::fixtures;

/// The checkpoint fixtures, one or more per family.
const CHECKPOINTS: &[&str] = &[
    "llava-clip-llama",
    "llava-siglip-qwen2",
    "llava-next-tiny",
    "llava-onevision-tiny",
    "qwen2-vl-tiny",
    "qwen2.5-vl-tiny",
    "idefics3-tiny",
    "idefics3-tiny-nosplit",
];

fn load(name: &str, media: MediaOptions) -> vlm::Result<Vlm> {
    let options = LoadOptions {
        media,
        ..LoadOptions::default()
    };
    Vlm::load(&ModelSource::Local(fixtures().join(name)), &options)
}

#[test]
fn every_supported_model_type_loads_as_itself() -> Result<()> {
    let mut loaded = BTreeSet::new();
    for name in CHECKPOINTS {
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            fixtures().join(name).join("config.json"),
        )?)?;
        let model_type = config["model_type"].as_str().context("model_type")?;
        let vlm = load(name, MediaOptions::default())?;
        assert_eq!(vlm.model().architecture(), model_type, "{name}");
        loaded.insert(model_type.to_string());
    }
    let supported: BTreeSet<String> = vlm::supported_model_types().map(String::from).collect();
    assert_eq!(
        loaded, supported,
        "every registered model_type has a checkpoint fixture that loads as it"
    );
    Ok(())
}

#[test]
fn a_media_option_the_family_does_not_read_is_an_error() {
    let refused = [
        (
            "llava-clip-llama",
            MediaOptions {
                min_pixels: Some(28 * 28),
                ..MediaOptions::default()
            },
            "min_pixels",
        ),
        (
            "llava-next-tiny",
            MediaOptions {
                image_splitting: Some(false),
                ..MediaOptions::default()
            },
            "image_splitting",
        ),
        (
            "idefics3-tiny",
            MediaOptions {
                video_sampling: Some(vlm::FrameSampling::NumFrames(2)),
                ..MediaOptions::default()
            },
            "video_sampling",
        ),
        (
            "qwen2-vl-tiny",
            MediaOptions {
                image_splitting: Some(true),
                max_pixels: Some(28 * 28 * 16),
                ..MediaOptions::default()
            },
            "image_splitting",
        ),
    ];
    for (name, media, option) in refused {
        let e = match load(name, media) {
            Ok(_) => panic!("{name}: {option} should be refused"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(option) && e.contains("does not read"),
            "{name}: {e}"
        );
    }
    // The options a family reads are accepted.
    let reads = MediaOptions {
        image_splitting: Some(false),
        ..MediaOptions::default()
    };
    assert!(load("idefics3-tiny", reads).is_ok());
}
