//! Images and the `smart_resize` table against transformers.

use super::*;

fn run_image_case(st: &SafeTensors, case: &Value) -> Result<f32> {
    let config = case["config"].as_str().context("config")?;
    let name = case["image"].as_str().context("image")?;
    let dir = fixture_dir();
    let processor = Qwen2VlImageProcessor::from_dir(&dir.join("configs").join(config))?;
    ensure!(
        processor.min_pixels() == case["min_pixels"].as_u64().context("min_pixels")?
            && processor.max_pixels() == case["max_pixels"].as_u64().context("max_pixels")?,
        "pixel bounds {}..{} differ from the reference's",
        processor.min_pixels(),
        processor.max_pixels()
    );
    let image = load_image(&dir.join("images").join(format!("{name}.png")))?;
    let key = format!("image/{config}/{name}");

    let (expected_resized, shape) = u8_tensor(st, &format!("{key}/resized"))?;
    let resized = processor.resize(&image)?;
    ensure!(
        shape == [3, resized.height() as usize, resized.width() as usize],
        "resized to {}x{}, reference {shape:?}",
        resized.height(),
        resized.width()
    );
    ensure!(
        chw(&resized) == expected_resized,
        "resized uint8 image differs"
    );

    let patches = processor.process(&image)?;
    let expected_grid = grid(&case["grid_thw"]);
    ensure!(
        patches.grid_thw == expected_grid,
        "grid_thw {:?}, reference {expected_grid:?}",
        patches.grid_thw
    );
    ensure!(processor.grid_thw(image.height(), image.width())? == expected_grid);
    ensure!(
        processor.num_image_tokens(image.height(), image.width())?
            == expected_grid.iter().product::<usize>() / 4
    );
    // The fixture keeps one of the identical temporal copies: [patches, 3 * 14 * 14].
    let (expected, shape) = f32_tensor(st, &format!("{key}/pixel_values_t0"))?;
    let t = processor.temporal_patch_size();
    let plane = 14 * 14;
    ensure!(
        shape == [patches.num_patches, 3 * plane] && patches.patch_dim == 3 * t * plane,
        "patches {}x{}, reference {shape:?}",
        patches.num_patches,
        patches.patch_dim
    );
    let mut max_diff = 0f32;
    for row in 0..patches.num_patches {
        let got = patches.row(row).context("row")?;
        let want = &expected[row * 3 * plane..(row + 1) * 3 * plane];
        for c in 0..3 {
            for copy in 0..t {
                let g = &got[(c * t + copy) * plane..(c * t + copy + 1) * plane];
                max_diff = max_diff.max(max_abs_diff(g, &want[c * plane..(c + 1) * plane]));
            }
        }
    }
    ensure!(
        max_diff <= PIXEL_TOLERANCE,
        "pixel_values max |diff| {max_diff} > {PIXEL_TOLERANCE}"
    );
    Ok(max_diff)
}

#[test]
fn images_match_transformers() {
    let index = index();
    let bytes = tensor_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases = index["image_cases"].as_array().unwrap();
    assert!(cases.len() >= 9, "expected the full fixture set");
    let mut failures = Vec::new();
    let mut worst = 0f32;
    for case in cases {
        match run_image_case(&st, case) {
            Ok(diff) => worst = worst.max(diff),
            Err(e) => failures.push(format!("{}/{}: {e:#}", case["config"], case["image"])),
        }
    }
    println!(
        "{} image cases, measured pixel_values max |diff| {worst:e}",
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn smart_resize_table_is_exact() {
    let index = index();
    let rows = index["smart_resize"].as_array().unwrap();
    assert!(rows.len() > 1000);
    let mut failures = Vec::new();
    for row in rows {
        let r: Vec<Option<u64>> = row.as_array().unwrap().iter().map(Value::as_u64).collect();
        let (h, w, factor) = (
            r[0].unwrap() as u32,
            r[1].unwrap() as u32,
            r[2].unwrap() as u32,
        );
        let got = smart_resize(h, w, factor, r[3].unwrap(), r[4].unwrap());
        let ok = match (&got, r[5], r[6]) {
            (Ok((gh, gw)), Some(eh), Some(ew)) => u64::from(*gh) == eh && u64::from(*gw) == ew,
            (Err(PreprocessError::AspectRatio { .. }), None, None) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!("{row}: got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
