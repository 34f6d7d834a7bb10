//! Frame sampling, frame folders and GIFs against transformers and Pillow.

use super::*;

#[test]
fn frame_sampling_table_is_exact() {
    let index = index();
    let rows = index["sampling"].as_array().unwrap();
    assert!(rows.len() > 1000);
    let mut failures = Vec::new();
    let mut errors = 0;
    for row in rows {
        let r = row.as_array().unwrap();
        let total = r[0].as_u64().unwrap() as usize;
        let sampling = match r[1].as_str().unwrap() {
            "num_frames" => FrameSampling::NumFrames(r[2].as_u64().unwrap() as usize),
            "fps" => FrameSampling::Fps(r[2].as_f64().unwrap()),
            other => panic!("unknown sampling {other}"),
        };
        let config = Qwen2VlConfig::from_json_str(&format!(
            r#"{{"temporal_patch_size": {}, "min_frames": {}, "max_frames": {}}}"#,
            r[4], r[5], r[6]
        ))
        .unwrap();
        let processor = Qwen2VlVideoProcessor::from_config(&config).unwrap();
        let got = processor.sample_indices(total, r[3].as_f64(), sampling);
        let ok = match (&got, &r[7]) {
            (Ok(indices), Value::Array(expected)) => {
                indices.len() == expected.len()
                    && indices
                        .iter()
                        .zip(expected)
                        .all(|(a, b)| Some(*a as u64) == b.as_u64())
            }
            (Err(PreprocessError::FrameSampling { .. }), Value::String(s)) if s == "error" => {
                errors += 1;
                true
            }
            _ => false,
        };
        if !ok {
            failures.push(format!("{r:?}: got {got:?}"));
        }
    }
    assert!(errors > 50, "the table should exercise the error paths");
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// Returns (max |pixel diff|, worst uint8 level diff, fraction of differing uint8 values).
fn run_video_case(st: &SafeTensors, case: &Value) -> Result<(f32, u8, f64)> {
    let name = case["name"].as_str().context("name")?;
    let config = case["config"].as_str().context("config")?;
    let source = case["source"].as_str().context("source")?;
    let fps = case["fps"].as_f64();
    let processor = Qwen2VlVideoProcessor::from_dir(&fixture_dir().join("configs").join(config))?;
    let video = if source.ends_with(".gif") {
        let video = Video::from_gif(&fixture_dir().join("video").join(source))?;
        ensure!(
            video.fps == fps,
            "GIF fps {:?}, reference {fps:?}",
            video.fps
        );
        video
    } else {
        let mut paths = frame_files(source);
        if let Some(first) = case["first"].as_u64() {
            paths.truncate(first as usize);
        }
        Video::from_frame_files(&paths, fps)?
    };
    let sampling = &case["sampling"];
    let out = match sampling["kind"].as_str().context("kind")? {
        "all" => processor.process_with(&video, FrameSampling::All)?,
        "num_frames" => processor.process_with(
            &video,
            FrameSampling::NumFrames(sampling["value"].as_u64().context("value")? as usize),
        )?,
        "fps" => processor.process_with(
            &video,
            FrameSampling::Fps(sampling["value"].as_f64().context("value")?),
        )?,
        "config" => processor.process(&video)?,
        other => bail!("unknown sampling {other}"),
    };
    let indices: Vec<usize> = case["frame_indices"]
        .as_array()
        .context("frame_indices")?
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    ensure!(
        out.frame_indices == indices,
        "frame indices {:?}, reference {indices:?}",
        out.frame_indices
    );
    let expected_grid = grid(&case["grid_thw"]);
    ensure!(
        out.patches.grid_thw == expected_grid,
        "grid_thw {:?}, reference {expected_grid:?}",
        out.patches.grid_thw
    );
    let (h, w) = video.frame_size().context("frames")?;
    ensure!(processor.grid_thw(indices.len(), h, w)? == expected_grid);
    ensure!(
        out.sampled_fps == case["sampled_fps"].as_f64().context("sampled_fps")?
            && out.second_per_grid_t
                == case["second_per_grid_t"]
                    .as_f64()
                    .context("second_per_grid_t")?,
        "sampled_fps {} / second_per_grid_t {}, reference {} / {}",
        out.sampled_fps,
        out.second_per_grid_t,
        case["sampled_fps"],
        case["second_per_grid_t"]
    );

    let key = format!("video/{name}");
    let (expected, shape) = f32_tensor(st, &format!("{key}/pixel_values"))?;
    ensure!(
        shape == [out.patches.num_patches, out.patches.patch_dim],
        "patches {}x{}, reference {shape:?}",
        out.patches.num_patches,
        out.patches.patch_dim
    );
    let diff = max_abs_diff(&out.patches.data, &expected);
    if !case["resized"].as_bool().context("resized")? {
        ensure!(
            diff == 0.0,
            "identity-resize case: max |diff| {diff}, expected 0"
        );
        return Ok((diff, 0, 0.0));
    }
    // Frames were resized: compare our Pillow frames with torchvision's uint8 output.
    let (reference, shape) = u8_tensor(st, &format!("{key}/resized"))?;
    let (rh, rw) = processor.frame_size(h, w, indices.len())?;
    ensure!(shape == [indices.len(), rh as usize, rw as usize, 3]);
    let mut ours = Vec::new();
    for &i in &indices {
        ours.extend_from_slice(resize(&video.frames[i], rw, rh, Resample::Bicubic)?.as_raw());
    }
    let levels: Vec<u8> = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let worst = levels.iter().copied().max().unwrap_or(0);
    let fraction = levels.iter().filter(|&&d| d > 0).count() as f64 / levels.len() as f64;
    ensure!(
        worst <= RESIZED_MAX_LEVELS && fraction <= RESIZED_MAX_FRACTION,
        "resized frames differ by up to {worst} levels on {:.2}% of values",
        fraction * 100.0
    );
    ensure!(
        diff <= RESIZED_PIXEL_TOLERANCE,
        "pixel_values_videos max |diff| {diff} > {RESIZED_PIXEL_TOLERANCE}"
    );
    Ok((diff, worst, fraction))
}

#[test]
fn videos_match_transformers() {
    let index = index();
    let bytes = tensor_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases = index["video_cases"].as_array().unwrap();
    assert!(cases.len() >= 6, "expected the full fixture set");
    let mut failures = Vec::new();
    for case in cases {
        match run_video_case(&st, case) {
            Ok((diff, levels, fraction)) => println!(
                "video {}: max |pixel diff| {diff:e}, resized uint8 max diff {levels} level(s) \
                 on {:.2}% of values",
                case["name"],
                fraction * 100.0
            ),
            Err(e) => failures.push(format!("{}: {e:#}", case["name"])),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn gif_frames_match_pillow() {
    let index = index();
    let bytes = tensor_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let gifs = index["gifs"].as_array().unwrap();
    assert_eq!(gifs.len(), 3);
    let mut failures = Vec::new();
    for gif in gifs {
        let name = gif["name"].as_str().unwrap();
        let path = fixture_dir().join(gif["file"].as_str().unwrap());
        let video = Video::from_gif(&path).unwrap();
        let (expected, shape) = u8_tensor(&st, &format!("gif/{name}/frames")).unwrap();
        let (h, w) = video.frame_size().unwrap();
        if shape != [video.len(), h as usize, w as usize, 3] {
            failures.push(format!(
                "{name}: {} frames of {h}x{w}, reference {shape:?}",
                video.len()
            ));
            continue;
        }
        if video.fps != gif["fps"].as_f64() {
            failures.push(format!(
                "{name}: fps {:?}, reference {}",
                video.fps, gif["fps"]
            ));
        }
        let frame_len = (h * w * 3) as usize;
        for (i, frame) in video.frames.iter().enumerate() {
            let want = &expected[i * frame_len..(i + 1) * frame_len];
            let bad = frame
                .as_raw()
                .iter()
                .zip(want)
                .filter(|(a, b)| a != b)
                .count();
            if bad > 0 {
                failures.push(format!(
                    "{name}: frame {i}: {bad} of {frame_len} values differ"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
