//! Qwen2-VL inputs that cannot work give errors that say what was expected and found; inputs
//! the reference accepts (tiny images, several media, several turns) keep working.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use anyhow::Result;
use vlm::{
    ContentPart, GenerateParams, LoadOptions, MediaOptions, Message, ModelSource, Prepared,
    Request, RgbImage, Video, Vlm,
};
use vlm_core::models::QwenMedia;
use vlm_preprocess::image;
use vlm_tests::{family_media, fixtures, Reference};

fn qwen_media(prepared: &Prepared) -> Result<&QwenMedia> {
    family_media(prepared)
}

fn load(name: &str, options: &LoadOptions) -> Result<Vlm> {
    Ok(Vlm::load(
        &ModelSource::Local(fixtures().join(name)),
        options,
    )?)
}

fn photo(vlm: &Vlm, name: &str) -> Result<RgbImage> {
    Ok(vlm.load_image(fixtures().join("reference/images").join(name))?)
}

fn frames_of(vlm: &Vlm, clip: &str, n: usize) -> Result<Vec<RgbImage>> {
    (0..n)
        .map(|k| photo(vlm, &format!("video_{clip}_{k}.png")))
        .collect()
}

fn err_text<T: std::fmt::Debug>(result: vlm::Result<T>) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn count(ids: &[u32], token: u32) -> usize {
    ids.iter().filter(|&&t| t == token).count()
}

#[test]
fn extreme_aspect_ratio_is_refused_like_the_reference() -> Result<()> {
    let vlm = load("qwen2-vl-tiny", &LoadOptions::default())?;
    let strip = RgbImage::from_pixel(402, 2, image::Rgb([200, 10, 10]));
    let e = err_text(vlm.prepare(&Request::new("What is this?", vec![strip])));
    assert!(e.contains("image 0") && e.contains("200"), "{e}");
    Ok(())
}

#[test]
fn one_frame_video_is_refused() -> Result<()> {
    let vlm = load("qwen2-vl-tiny", &LoadOptions::default())?;
    let video = Video::new(frames_of(&vlm, "pan_astronaut", 1)?, None)?;
    let e = err_text(vlm.prepare(&Request::with_videos("What happens?", vec![], vec![video])));
    assert!(e.contains("video 0") && e.contains("frame"), "{e}");
    Ok(())
}

#[test]
fn image_below_min_pixels_is_upsized_as_the_reference_does() -> Result<()> {
    // transformers' smart_resize scales a tiny image up to min_pixels; the result must be a
    // valid grid and a prompt that runs, not an error or a panic.
    let vlm = load("qwen2-vl-tiny", &LoadOptions::default())?;
    let tiny = RgbImage::from_pixel(3, 2, image::Rgb([10, 200, 10]));
    let prepared = vlm.prepare(&Request::new("What is this?", vec![tiny]))?;
    let grid = qwen_media(&prepared)?.image_grids[0];
    assert!(grid[1] * grid[2] * 14 * 14 >= 56 * 56, "grid {grid:?}");
    assert_eq!(count(&prepared.input_ids, 409), grid[1] * grid[2] / 4);
    vlm.prompt_logits(&prepared)?;
    Ok(())
}

#[test]
fn placeholder_and_media_counts_must_match() -> Result<()> {
    let vlm = load("qwen2-vl-tiny", &LoadOptions::default())?;
    let img = photo(&vlm, "wide_astronaut.png")?;
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

    let video = Video::new(frames_of(&vlm, "pan_astronaut", 3)?, None)?;
    let req = Request {
        messages: vec![Message::user_with_images(1, "And the video?")],
        images: vec![img],
        videos: vec![video],
    };
    let e = err_text(vlm.prepare(&req));
    assert!(
        e.contains("0 video marker") && e.contains("1 video(s)"),
        "{e}"
    );
    Ok(())
}

#[test]
fn grid_and_placeholder_mismatch_is_caught_before_the_merge() -> Result<()> {
    let vlm = load("qwen2-vl-tiny", &LoadOptions::default())?;
    let img = photo(&vlm, "wide_astronaut.png")?;
    let good = vlm.prepare(&Request::new("What is in the image?", vec![img]))?;
    // One placeholder too few for the grid.
    let mut bad = good.clone();
    let at = bad.input_ids.iter().position(|&t| t == 409).unwrap();
    bad.input_ids.remove(at);
    let e = err_text(vlm.prompt_logits(&bad));
    assert!(e.contains("placeholder") && e.contains("needs"), "{e}");
    // A grid that is not a multiple of the merge size.
    let mut bad = good.clone();
    let mut media = qwen_media(&good)?.clone();
    media.image_grids = vec![[1, 3, 4]];
    bad.media = Arc::new(media);
    let e = err_text(vlm.prompt_logits(&bad));
    assert!(e.contains("3") && e.contains("merge"), "{e}");
    // Pixel rows that do not cover the grid.
    let mut bad: Prepared = good.clone();
    let mut media = qwen_media(&good)?.clone();
    let px = media.pixel_values.take().unwrap();
    media.pixel_values = Some(px.narrow(0, 0, 8)?);
    bad.media = Arc::new(media);
    let e = err_text(vlm.prompt_logits(&bad));
    assert!(e.contains("16") && e.contains("8"), "{e}");
    Ok(())
}

#[test]
fn videos_are_refused_by_image_only_models() -> Result<()> {
    let vlm = load("llava-clip-llama", &LoadOptions::default())?;
    let video = Video::new(frames_of(&vlm, "pan_astronaut", 3)?, None)?;
    let req = Request {
        messages: vec![Message::new("user", vec![ContentPart::Text("Hi".into())])],
        videos: vec![video],
        ..Request::default()
    };
    let e = err_text(vlm.prepare(&req));
    assert!(e.contains("does not take videos"), "{e}");
    Ok(())
}

#[test]
fn pixel_budget_bounds_the_image_tokens() -> Result<()> {
    let max = 28 * 28 * 4;
    let options = LoadOptions {
        media: MediaOptions {
            max_pixels: Some(max),
            ..MediaOptions::default()
        },
        ..LoadOptions::default()
    };
    let vlm = load("qwen2-vl-tiny", &options)?;
    let big = photo(&vlm, "large_astronaut.png")?;
    let prepared = vlm.prepare(&Request::new("What is this?", vec![big]))?;
    let tokens = count(&prepared.input_ids, 409);
    assert!(
        (1..=4).contains(&tokens),
        "{tokens} image tokens for max_pixels {max}"
    );
    // min > max is refused when loading.
    let options = LoadOptions {
        media: MediaOptions {
            min_pixels: Some(max + 1),
            max_pixels: Some(max),
            ..MediaOptions::default()
        },
        ..LoadOptions::default()
    };
    let e = match Vlm::load(
        &ModelSource::Local(fixtures().join("qwen2-vl-tiny")),
        &options,
    ) {
        Ok(_) => panic!("min_pixels > max_pixels must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("min_pixels") || e.contains("min"), "{e}");
    Ok(())
}

#[test]
fn later_requests_do_not_inherit_earlier_positions() -> Result<()> {
    // Runtimes that keep the M-RoPE delta in the model shipped wrong positions for a second
    // conversation; ours keeps it per request. Generate a video case, then an image case, on
    // one instance and compare with the reference.
    let vlm = load("qwen2.5-vl-tiny", &LoadOptions::default())?;
    let reference = Reference::load("qwen2.5-vl-tiny")?;
    let params = GenerateParams {
        max_new_tokens: 10,
        ignore_eos: true,
        ..GenerateParams::default()
    };
    let video = Video::new(frames_of(&vlm, "pan_coffee", 4)?, None)?;
    vlm.generate(
        &Request::with_videos("What happens in the video?", vec![], vec![video]),
        &params,
        |_| true,
    )?;
    let case = &reference.cases()[2];
    let images = ["small_rocket.png", "wide_astronaut.png"]
        .iter()
        .map(|f| photo(&vlm, f))
        .collect::<Result<Vec<_>>>()?;
    let req = Request {
        messages: vlm_tests::messages(&case["messages"])?,
        images,
        ..Request::default()
    };
    let out = vlm.generate(&req, &params, |_| true)?;
    assert_eq!(out.token_ids, reference.ids(3, "greedy_ids_noeos")?);
    Ok(())
}

#[test]
fn gif_videos_and_frame_sampling_reach_the_model() -> Result<()> {
    let gif = fixtures().join("preprocess/qwen2vl/video/clip.gif");
    let vlm = load("qwen2-vl-tiny", &LoadOptions::default())?;
    let video = vlm.load_video(&[&gif], None)?;
    let frames = video.frames.len();
    assert!(
        frames >= 2 && video.fps.is_some(),
        "{frames} frames, fps {:?}",
        video.fps
    );
    let prepared = vlm.prepare(&Request::with_videos("What happens?", vec![], vec![video]))?;
    assert_eq!(qwen_media(&prepared)?.video_grids[0][0], frames.div_ceil(2));
    vlm.prompt_logits(&prepared)?;

    // Two frames of four: one temporal patch.
    let options = LoadOptions {
        media: MediaOptions {
            video_sampling: Some(vlm::FrameSampling::NumFrames(2)),
            ..MediaOptions::default()
        },
        ..LoadOptions::default()
    };
    let vlm = load("qwen2-vl-tiny", &options)?;
    let video = Video::new(frames_of(&vlm, "pan_coffee", 4)?, Some(3.0))?;
    let prepared = vlm.prepare(&Request::with_videos("What happens?", vec![], vec![video]))?;
    assert_eq!(qwen_media(&prepared)?.video_grids[0][0], 1);
    Ok(())
}

#[test]
fn video_token_budget_caps_each_frame() -> Result<()> {
    let video_tokens = |budget: Option<u64>| -> Result<usize> {
        let options = LoadOptions {
            media: MediaOptions {
                max_video_tokens: budget,
                video_min_pixels: Some(28 * 28),
                ..MediaOptions::default()
            },
            ..LoadOptions::default()
        };
        let vlm = load("qwen2-vl-tiny", &options)?;
        let video = Video::new(frames_of(&vlm, "pan_coffee", 4)?, None)?;
        let prepared = vlm.prepare(&Request::with_videos("Hm?", vec![], vec![video]))?;
        Ok(count(&prepared.input_ids, 410))
    };
    let free = video_tokens(None)?;
    let capped = video_tokens(Some(2))?;
    assert!(
        capped < free,
        "budget did not reduce the tokens: {capped} vs {free}"
    );
    Ok(())
}
