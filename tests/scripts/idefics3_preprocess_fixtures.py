#!/usr/bin/env python3
"""Reference fixtures for vlm-preprocess's Idefics3 / SmolVLM image preprocessing.

Writes to tests/fixtures/preprocess/idefics3/ (deleting what was there):
  images/*.png         photographs from skimage.data: wider than tall, taller than wide, smaller
                       than one tile, larger than the resize target, very elongated, grayscale
  configs/<name>/      processor configs in both dialects: the published flat
                       `preprocessor_config.json` (+ a `processor_config.json` holding only
                       `image_seq_len`, as SmolVLM repos ship it) and the transformers 5
                       `processor_config.json` with a nested `image_processor` entry
  expected.safetensors per (config, image): "<config>/<image>/pixel_values" (float32
                       [tiles, 3, M, M], the reference's pixel_values of the image alone),
                       ".../pixel_attention_mask" (uint8 [tiles, M, M]), ".../resized" (uint8
                       [3, H, W], after the first resize) and ".../encoder" (uint8, after
                       `resize_for_vision_encoder`, splitting configs only)
  index.json           the cases (rows, cols, shapes), the resolved configs, a table of output
                       sizes / grids for many image sizes under several configs (computed by the
                       reference with a stub resize, so no pixels are needed), and two batches
                       (one prompt with two images; two prompts, which get all-zero padding tiles)

Reference: transformers 5.23.0 `Idefics3ImageProcessorPil` (what `AutoProcessor` loads with
`backend="pil"`), called as `Idefics3Processor` calls it (`return_row_col_info=True`), Pillow 13.
Deterministic; rerun with the pinned environment in tests/scripts/requirements.txt:
    python3 tests/scripts/idefics3_preprocess_fixtures.py
"""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image
from safetensors.numpy import save_file

import transformers
import transformers.image_processing_backends as backends
from transformers import Idefics3ImageProcessorPil

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parent.parent.parent
OUT = ROOT / "tests" / "fixtures" / "preprocess" / "idefics3"
MAX_FIXTURE_BYTES = 1_500_000
TYPE = {"image_processor_type": "Idefics3ImageProcessor"}
HALF = [0.5, 0.5, 0.5]


def make_images(images_dir: Path) -> list[str]:
    astronaut = skimage.data.astronaut()
    chelsea = skimage.data.chelsea()
    coffee = skimage.data.coffee()
    rocket = skimage.data.rocket()
    camera = skimage.data.camera()
    cuts = {  # name (w x h): array cut [rows, cols]
        "wide_97x58": chelsea[40:98, 120:217],
        "tall_41x77": rocket[120:197, 280:321],
        "small_13x9": coffee[200:209, 300:313],
        "large_230x170": astronaut[30:200, 100:330],
        "strip_120x7": coffee[150:157, 200:320],
        "gray_50x33": camera[200:233, 230:280],
    }
    for name, arr in cuts.items():
        Image.fromarray(np.ascontiguousarray(arr)).save(images_dir / f"{name}.png", optimize=True)
    return list(cuts)


# Tiny tiles (16 px) keep the fixture small; the longest edge 56 is not a multiple of 16, so the
# vision-encoder step really resizes a second time.
SPLIT = {
    **TYPE, "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
    "do_rescale": True, "do_resize": True, "image_mean": HALF, "image_std": HALF,
    "max_image_size": {"longest_edge": 16}, "resample": 1, "rescale_factor": 1 / 255,
    "size": {"longest_edge": 56},
}
NOSPLIT = {**SPLIT, "do_image_splitting": False, "size": {"longest_edge": 48}}
# Resizing off (only the vision-encoder resize happens), bicubic, another mean/std.
NORESIZE = {**TYPE, "do_resize": False, "resample": 3, "max_image_size": {"longest_edge": 16},
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
# The published HuggingFaceTB/SmolVLM-256M-Instruct preprocessor_config.json (resolution only).
SMOLVLM = {
    **TYPE, "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
    "do_rescale": True, "do_resize": True, "image_mean": HALF, "image_std": HALF,
    "max_image_size": {"longest_edge": 512}, "processor_class": "Idefics3Processor", "resample": 1,
    "rescale_factor": 0.00392156862745098, "size": {"longest_edge": 2048},
}


def write_configs(configs: Path) -> dict:
    """{config name: constructor kwargs}; every name is a directory under configs/."""
    def write(name, files):
        d = configs / name
        d.mkdir(parents=True)
        for file, obj in files.items():
            (d / file).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")

    published_proc = {"image_seq_len": 4, "processor_class": "Idefics3Processor"}
    write("split_published", {"preprocessor_config.json": {**SPLIT, "processor_class": "Idefics3Processor"},
                              "processor_config.json": published_proc})
    write("split_nested", {"processor_config.json": {"image_processor": SPLIT, **published_proc}})
    write("nosplit_nested", {"processor_config.json": {"image_processor": NOSPLIT, **published_proc}})
    write("noresize_published", {"preprocessor_config.json": NORESIZE})
    write("smolvlm_published", {"preprocessor_config.json": SMOLVLM,
                                "processor_config.json": {"image_seq_len": 64, "processor_class": "Idefics3Processor"}})
    write("defaults", {"preprocessor_config.json": dict(TYPE)})
    strip = lambda d: {k: v for k, v in d.items() if k not in ("image_processor_type", "processor_class")}
    return {
        "split_published": strip(SPLIT),
        "split_nested": strip(SPLIT),
        "nosplit_nested": strip(NOSPLIT),
        "noresize_published": strip(NORESIZE),
        "smolvlm_published": strip(SMOLVLM),
        "defaults": {},
    }


CASES = {  # config: images processed with pixels
    "split_published": ["wide_97x58", "tall_41x77", "small_13x9", "large_230x170", "strip_120x7", "gray_50x33"],
    "nosplit_nested": ["wide_97x58", "tall_41x77", "small_13x9", "large_230x170"],
    "noresize_published": ["wide_97x58", "small_13x9", "strip_120x7"],
}


def chw(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img.convert("RGB")).transpose(2, 0, 1))


def run_image(proc, image):
    """pixel_values, mask, rows, cols of one image, plus the uint8 images after each resize."""
    captured = {}
    orig_resize, orig_enc = proc.resize, proc.resize_for_vision_encoder

    def resize(image, size, *a, **k):
        out = orig_resize(image, size, *a, **k)
        captured.setdefault("resized", np.asarray(out).copy())  # the first call: the first resize
        return out

    def encoder(image, *a, **k):
        out = orig_enc(image, *a, **k)
        captured["encoder"] = np.asarray(out).copy()
        return out

    proc.resize, proc.resize_for_vision_encoder = resize, encoder
    try:
        out = proc([image], return_tensors="np", return_row_col_info=True)
    finally:
        proc.resize, proc.resize_for_vision_encoder = orig_resize, orig_enc
    pv, mask = out["pixel_values"][0], out["pixel_attention_mask"][0]
    assert pv.dtype == np.float32 and mask.dtype == np.int64 and set(np.unique(mask)) <= {0, 1}
    return pv, mask.astype(np.uint8), out["rows"][0][0], out["cols"][0][0], captured


def size_table(configs: dict) -> list:
    """Output sizes and grids for many image sizes, by the reference with a stub resize."""
    calls = []

    def stub(image, size, resample=None, **kwargs):
        calls.append(tuple(int(s) for s in size))
        if size[0] <= 0 or size[1] <= 0:
            raise ValueError("height and width must be > 0")
        return np.zeros((image.shape[0], size[0], size[1]), dtype=np.uint8)

    rng = np.random.default_rng(11)
    sizes = [(1, 1), (1, 2), (2, 1), (1, 1000), (1000, 1), (3, 4000), (364, 364), (365, 364), (363, 728),
             (480, 640), (640, 480), (768, 1024), (1456, 1456), (1457, 1), (2000, 3000), (5000, 300), (9, 13),
             (44, 64), (56, 36), (33, 50), (17, 16), (16, 17), (7, 120), (200, 300)]
    sizes += [tuple(int(v) for v in rng.integers(1, 3000, size=2)) for _ in range(60)]
    sizes += [tuple(int(v) for v in rng.integers(1, 80, size=2)) for _ in range(40)]
    rows = []
    saved = backends.np_resize
    backends.np_resize = stub
    try:
        for name in ("defaults", "smolvlm_published", "split_published", "nosplit_nested", "noresize_published"):
            proc = Idefics3ImageProcessorPil(**configs[name])
            for h, w in sizes:
                calls.clear()
                image = np.zeros((3, h, w), dtype=np.uint8)
                entry = {"config": name, "height": h, "width": w}
                try:
                    out = proc([[image]], return_row_col_info=True, do_rescale=False, do_normalize=False, do_pad=False)
                    entry.update(rows=out["rows"][0][0], cols=out["cols"][0][0],
                                 tiles=len(out["pixel_values"][0]), resizes=[list(c) for c in calls])
                except ValueError as e:
                    entry.update(error=str(e), resizes=[list(c) for c in calls])
                rows.append(entry)
    finally:
        backends.np_resize = saved
    return rows


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "images").mkdir(parents=True)
    names = make_images(OUT / "images")
    configs = write_configs(OUT / "configs")
    tensors, cases = {}, []
    for config, images in CASES.items():
        proc = Idefics3ImageProcessorPil(**configs[config])
        for name in images:
            image = Image.open(OUT / "images" / f"{name}.png")
            pv, mask, rows, cols, captured = run_image(proc, image)
            key = f"{config}/{name}"
            tensors[f"{key}/pixel_values"] = pv
            tensors[f"{key}/pixel_attention_mask"] = mask
            if proc.do_resize:
                tensors[f"{key}/resized"] = captured["resized"]
            if "encoder" in captured:
                tensors[f"{key}/encoder"] = captured["encoder"]
            cases.append({"config": config, "image": name, "rows": rows, "cols": cols,
                          "pixel_values_shape": list(pv.shape)})
            print(f"{key}: {image.size[0]}x{image.size[1]} -> rows {rows} cols {cols} tiles {pv.shape[0]}")
    # The nested split config must behave exactly like the published one.
    for name in CASES["split_published"]:
        image = Image.open(OUT / "images" / f"{name}.png")
        a = run_image(Idefics3ImageProcessorPil(**configs["split_nested"]), image)[0]
        assert np.array_equal(a, tensors[f"split_published/{name}/pixel_values"])

    # Batches: one prompt with two images (one sample), and two prompts (padding tiles).
    proc = Idefics3ImageProcessorPil(**configs["split_published"])
    a, b = (Image.open(OUT / "images" / f"{n}.png") for n in ("wide_97x58", "strip_120x7"))
    one = proc([a, b], return_tensors="np", return_row_col_info=True)
    two = proc([[a], [b]], return_tensors="np", return_row_col_info=True)
    pa, pb = tensors["split_published/wide_97x58/pixel_values"], tensors["split_published/strip_120x7/pixel_values"]
    assert np.array_equal(one["pixel_values"][0], np.concatenate([pa, pb]))
    assert np.array_equal(two["pixel_values"][0][: len(pa)], pa) and np.array_equal(two["pixel_values"][1][: len(pb)], pb)
    assert not two["pixel_values"][1][len(pb):].any()
    batches = {
        "one_prompt_two_images": {"samples": [["wide_97x58", "strip_120x7"]],
                                  "shape": list(one["pixel_values"].shape), "rows": one["rows"], "cols": one["cols"],
                                  "mask_sums": one["pixel_attention_mask"].sum(axis=(-1, -2)).tolist()},
        "two_prompts": {"samples": [["wide_97x58"], ["strip_120x7"]],
                        "shape": list(two["pixel_values"].shape), "rows": two["rows"], "cols": two["cols"],
                        "mask_sums": two["pixel_attention_mask"].sum(axis=(-1, -2)).tolist()},
    }

    resolved = {}
    for name, kwargs in configs.items():
        d = Idefics3ImageProcessorPil(**kwargs).to_dict()
        resolved[name] = {k: d[k] for k in ("size", "max_image_size", "do_image_splitting", "do_resize", "resample",
                                             "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
                                             "do_pad")}
    table = size_table(configs)
    index = {
        "transformers_version": transformers.__version__,
        "reference": "Idefics3ImageProcessorPil, called with return_row_col_info=True",
        "images": names,
        "cases": cases,
        "resolved_configs": resolved,
        "batches": batches,
        "size_table": table,
    }
    (OUT / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    save_file(dict(sorted(tensors.items())), str(OUT / "expected.safetensors"), metadata={"format": "np"})
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT.relative_to(ROOT)}: {len(cases)} cases, {len(table)} size-table rows, {total} bytes")
    assert total < MAX_FIXTURE_BYTES, total


if __name__ == "__main__":
    main()
