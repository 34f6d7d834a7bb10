//! Inputs the processors refuse, with errors that say why.

use super::*;

fn frame(w: u32, h: u32, v: u8) -> RgbImage {
    RgbImage::from_pixel(w, h, Rgb([v, v / 2, 255 - v]))
}

#[test]
fn aspect_ratio_above_200_is_an_error() {
    let processor = Qwen2VlImageProcessor::default();
    let err = processor.process(&frame(402, 2, 9)).unwrap_err();
    assert!(
        matches!(err, PreprocessError::AspectRatio { ratio, limit, .. } if ratio == 201.0 && limit == 200.0)
    );
    let message = err.to_string();
    assert!(
        message.contains("201") && message.contains("200"),
        "{message}"
    );
    assert!(processor.num_image_tokens(1, 201).is_err());
    // The reference upsizes images below min_pixels; callers can see it coming.
    let plan = processor.resize_plan(14, 20).unwrap().unwrap();
    assert_eq!(
        (plan.height, plan.width, plan.branch),
        (56, 84, ResizeBranch::GrownToMinPixels)
    );
    // Exactly 200:1 is accepted.
    assert_eq!(processor.process(&frame(400, 2, 9)).unwrap().grid_thw[0], 1);
}

#[test]
fn videos_need_two_frames() {
    let processor = Qwen2VlVideoProcessor::default();
    for n in [0usize, 1] {
        let video = Video::new((0..n).map(|_| frame(56, 28, 3)).collect(), None).unwrap();
        let err = processor.process(&video).unwrap_err();
        assert!(
            matches!(err, PreprocessError::VideoTooShort { found, needed: 2, .. } if found == n)
        );
        let message = err.to_string();
        assert!(
            message.contains("at least 2 frames") && message.contains("as an image"),
            "{message}"
        );
    }
    let two = Video::new(vec![frame(56, 28, 3), frame(56, 28, 90)], None).unwrap();
    assert_eq!(processor.process(&two).unwrap().patches.grid_thw[0], 1);
}

#[test]
fn mismatched_frame_sizes_are_errors() {
    let mut paths = frame_files("frames28x56");
    paths.insert(2, frame_files("frames37x47")[0].clone());
    let err = Video::from_frame_files(&paths, None).unwrap_err();
    match &err {
        PreprocessError::FrameSizeMismatch {
            origin,
            index,
            width,
            height,
            found_width,
            found_height,
        } => {
            assert_eq!(
                (*index, *width, *height, *found_width, *found_height),
                (2, 56, 28, 47, 37)
            );
            assert!(origin.contains("frames37x47"), "{origin}");
        }
        other => panic!("expected FrameSizeMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("frame 2"), "{err}");

    assert!(matches!(
        Video::new(
            vec![frame(56, 28, 1), frame(56, 28, 2), frame(28, 56, 3)],
            None
        ),
        Err(PreprocessError::FrameSizeMismatch { index: 2, .. })
    ));
    // The fields are public: processing checks again.
    let video = Video {
        frames: vec![frame(56, 28, 1), frame(57, 28, 2)],
        fps: None,
    };
    assert!(matches!(
        Qwen2VlVideoProcessor::default().process(&video),
        Err(PreprocessError::FrameSizeMismatch { index: 1, .. })
    ));
    assert!(Video::new(vec![frame(56, 28, 1)], Some(f64::NAN)).is_err());
}

#[test]
fn bad_pixel_bounds_are_errors() {
    for (min, max) in [(0, 100), (200, 100), (1, u64::MAX)] {
        let image = Qwen2VlImageProcessor::default().with_pixel_bounds(min, max);
        assert!(
            matches!(image, Err(PreprocessError::InvalidArgument { .. })),
            "{min}..{max}"
        );
        let video = Qwen2VlVideoProcessor::default().with_pixel_bounds(min, max);
        assert!(
            matches!(video, Err(PreprocessError::InvalidArgument { .. })),
            "{min}..{max}"
        );
    }
    let processor = Qwen2VlImageProcessor::default()
        .with_pixel_bounds(784, 784)
        .unwrap();
    assert_eq!(processor.grid_thw(1000, 1000).unwrap(), [1, 2, 2]);
    // In a config too.
    let config =
        Qwen2VlConfig::from_json_str(r#"{"min_pixels": 5000, "max_pixels": 4000}"#).unwrap();
    assert!(Qwen2VlImageProcessor::from_config(&config).is_err());
}

#[test]
fn gif_limits_are_enforced() {
    let path = fixture_dir().join("video/clip.gif");
    let limits = VideoLimits {
        max_frames: 5,
        ..VideoLimits::default()
    };
    let err = Video::from_gif_with_limits(&path, &limits).unwrap_err();
    assert!(
        matches!(err, PreprocessError::VideoTooLarge { limit: 5, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("frame 6"), "{err}");

    let limits = VideoLimits {
        max_total_pixels: 28 * 56 * 3,
        ..VideoLimits::default()
    };
    assert!(matches!(
        Video::from_gif_with_limits(&path, &limits),
        Err(PreprocessError::VideoTooLarge { .. })
    ));
    let mut limits = VideoLimits::default();
    limits.frame.max_pixels = 28 * 56 - 1;
    assert!(matches!(
        Video::from_gif_with_limits(&path, &limits),
        Err(PreprocessError::TooManyPixels { .. })
    ));
    // Exactly at the limits is fine.
    let limits = VideoLimits {
        max_frames: 8,
        max_total_pixels: 8 * 28 * 56,
        ..VideoLimits::default()
    };
    assert_eq!(
        Video::from_gif_with_limits(&path, &limits).unwrap().len(),
        8
    );
    // Truncated or empty data is an error, not a panic.
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 10, 100, bytes.len() / 2, bytes.len() - 2] {
        assert!(
            Video::from_gif_bytes(&bytes[..cut], &VideoLimits::default()).is_err(),
            "{cut} bytes"
        );
    }
    // Not a GIF.
    assert!(matches!(
        Video::from_gif_bytes(b"\x89PNG\r\n\x1a\nxxxx", &VideoLimits::default()),
        Err(PreprocessError::UnknownFormat { .. })
    ));
    // Frame files count against max_frames too.
    let limits = VideoLimits {
        max_frames: 2,
        ..VideoLimits::default()
    };
    assert!(matches!(
        Video::from_frame_files_with_limits(&frame_files("frames28x56"), None, &limits),
        Err(PreprocessError::VideoTooLarge { .. })
    ));
}

#[test]
fn sampling_requests_transformers_refuses_are_errors() {
    let processor = Qwen2VlVideoProcessor::default();
    let video = Video::new((0..17).map(|i| frame(56, 28, i * 10)).collect(), None).unwrap();
    // 14 of 17 frames: torch.arange yields 15 indices, the last one 17 (IndexError upstream).
    let err = processor
        .process_with(&video, FrameSampling::NumFrames(14))
        .unwrap_err();
    assert!(matches!(
        err,
        PreprocessError::FrameSampling {
            total_frames: 17,
            ..
        }
    ));
    assert!(err.to_string().contains("IndexError"), "{err}");
    // More frames than the video has; fps without the video's fps.
    assert!(processor
        .process_with(&video, FrameSampling::NumFrames(18))
        .is_err());
    assert!(processor
        .process_with(&video, FrameSampling::Fps(2.0))
        .is_err());
    // With the video's fps it works, and sampled_fps follows the sampling.
    let timed = Video::new(video.frames.clone(), Some(10.0)).unwrap();
    let out = processor
        .process_with(&timed, FrameSampling::Fps(2.0))
        .unwrap();
    assert_eq!(out.frame_indices, [0, 4, 8, 12]);
    assert_eq!(out.sampled_fps, 4.0 / 17.0 * 10.0);
    // Without an fps, transformers assumes 24 even after sampling.
    let out = processor
        .process_with(&video, FrameSampling::NumFrames(6))
        .unwrap();
    assert_eq!(out.frame_indices, [0, 2, 5, 8, 11, 14]);
    assert_eq!((out.sampled_fps, out.second_per_grid_t), (24.0, 2.0 / 24.0));
}

#[test]
fn config_errors_and_file_lookup() {
    let bad = |json: &str| {
        Qwen2VlVideoProcessor::from_config(&Qwen2VlConfig::from_json_str(json).unwrap()).is_err()
    };
    assert!(bad(
        r#"{"do_sample_frames": true, "num_frames": 4, "fps": 2}"#
    ));
    assert!(bad(r#"{"do_sample_frames": true}"#));
    assert!(bad(r#"{"size": {"min_pixels": 5, "max_pixels": 6}}"#));
    assert!(bad(
        r#"{"video_processor_type": "LlavaOnevisionVideoProcessor"}"#
    ));
    assert!(!bad(
        r#"{"do_sample_frames": false, "num_frames": 4, "fps": 2}"#
    ));
    let image =
        Qwen2VlConfig::from_json_str(r#"{"image_processor_type": "CLIPImageProcessor"}"#).unwrap();
    assert!(matches!(
        Qwen2VlImageProcessor::from_config(&image),
        Err(PreprocessError::UnknownProcessorType { .. })
    ));

    // The video processor falls back to preprocessor_config.json, never to the image entry of
    // processor_config.json.
    let dir = std::env::temp_dir().join(format!("vlm-qwen2vl-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write(
        "processor_config.json",
        r#"{"image_processor": {"min_pixels": 1000, "max_pixels": 2000}}"#,
    );
    assert!(matches!(
        Qwen2VlVideoProcessor::from_dir(&dir),
        Err(PreprocessError::ConfigNotFound { ref looked_for, .. }) if looked_for.len() == 3
    ));
    assert_eq!(
        Qwen2VlImageProcessor::from_dir(&dir).unwrap().min_pixels(),
        1000
    );
    write(
        "preprocessor_config.json",
        r#"{"min_pixels": 3000, "max_pixels": 4000}"#,
    );
    let video = Qwen2VlVideoProcessor::from_dir(&dir).unwrap();
    assert_eq!((video.min_pixels(), video.max_pixels()), (3000, 4000));
    write(
        "video_preprocessor_config.json",
        r#"{"max_pixels": 200000, "do_sample_frames": true, "fps": 2}"#,
    );
    let video = Qwen2VlVideoProcessor::from_dir(&dir).unwrap();
    // min_pixels is the video class default, not the image file's.
    assert_eq!(
        (video.min_pixels(), video.max_pixels()),
        (128 * 28 * 28, 200000)
    );
    assert_eq!(video.sampling(), FrameSampling::Fps(2.0));
    std::fs::remove_dir_all(&dir).unwrap();
}
