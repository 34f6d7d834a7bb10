#!/usr/bin/env python3
"""Reference fixtures for vlm-preprocess's LLaVA-NeXT / LLaVA-OneVision ("anyres") preprocessing.

Writes to tests/fixtures/preprocess/anyres/ (deleting what was there):
  images/*.png           photographs from skimage.data: wider than tall, taller than wide, a
                         panorama, one smaller than a tile and a very large one (upscaled and
                         posterized so the PNG stays small)
  configs/<name>/preprocessor_config.json   the image processor config as published checkpoints
                         ship it (flat)
  configs/<name>_nested/processor_config.json   the same processor saved by transformers 5
                         `ProcessorMixin.save_pretrained` (nested under "image_processor")
  expected.safetensors   per case "<config>/<image>/pixel_values" (float32 [views, 3, H, W]) and
                         "<config>/<image>/padded" (uint8 [3, h, w], the resized + padded image the
                         tiles are cut from); for the full-size configs only a strided sample
                         "<config>/<image>/pixel_values_sample" (every SAMPLE_STRIDE-th value of the
                         flattened pixel_values) to keep the file small; per multi-image prompt
                         case "<config>/prompt<N>/<k>/pixel_values"
  index.json             the cases: image_size (height, width), best resolution, views, shapes,
                         the float64 sum of pixel_values

Reference: transformers 5.23 `LlavaNextImageProcessorPil` and `LlavaOnevisionImageProcessorPil`,
loaded from each config directory with `from_pretrained` (both dialects are checked to give
identical pixel values), fed `Image.open(path)`. Multi-image prompts are passed nested
(`[[a, b]]`), as `apply_chat_template` does, so OneVision pads them to squares untiled.

Deterministic; rerun with the pinned environment in tests/scripts/requirements.txt:
    python3 tests/scripts/anyres_preprocess_fixtures.py
"""

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image
from safetensors.numpy import save_file

import transformers
from transformers import (
    AutoTokenizer,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
)
from transformers.image_processing_utils import get_patch_output_size, select_best_resolution

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parent.parent.parent
OUT = ROOT / "tests" / "fixtures" / "preprocess" / "anyres"
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizer" / "llava"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
HALF = [0.5, 0.5, 0.5]
SAMPLE_STRIDE = 397
MAX_FIXTURE_BYTES = 1_500_000

NEXT = "LlavaNextImageProcessor"
ONEVISION = "LlavaOnevisionImageProcessor"
CLASSES = {
    NEXT: (LlavaNextImageProcessorPil, LlavaNextProcessor),
    ONEVISION: (LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor),
}


def grid(side, n):
    return [[side * i, side * j] for i in range(1, n + 1) for j in range(1, n + 1)]


# name -> (flat config as written to preprocessor_config.json, full tensors stored?)
CONFIGS = {
    # Tiny LLaVA-NeXT: 28px tiles, the config of tests/fixtures/llava-next-tiny.
    "next_small": (
        {
            "image_processor_type": NEXT,
            "crop_size": {"height": 28, "width": 28},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_pad": True,
            "do_rescale": True,
            "do_resize": True,
            "image_grid_pinpoints": [[28, 56], [56, 28], [56, 56], [28, 84], [84, 28]],
            "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD,
            "resample": 3,
            "rescale_factor": 1 / 255,
            "size": {"shortest_edge": 28},
        },
        True,
    ),
    # size != crop_size: every view is resized (shortest edge 32) then center-cropped to 28;
    # bilinear; keys left out take the class defaults.
    "next_crop": (
        {
            "image_processor_type": NEXT,
            "crop_size": 28,
            "image_grid_pinpoints": [[28, 56], [56, 28], [56, 56], [56, 84]],
            "resample": 2,
            "size": {"shortest_edge": 32},
        },
        True,
    ),
    # Tiny LLaVA-OneVision: 32px views, up to 3x3 tiles.
    "onevision_small": (
        {
            "image_processor_type": ONEVISION,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_pad": True,
            "do_rescale": True,
            "do_resize": True,
            "image_grid_pinpoints": grid(32, 3),
            "image_mean": HALF,
            "image_std": HALF,
            "resample": 3,
            "rescale_factor": 1 / 255,
            "size": {"height": 32, "width": 32},
        },
        True,
    ),
    # Pinpoints that are not tile multiples: partial edge tiles, each resized to 32x32 (Lanczos).
    "onevision_odd": (
        {
            "image_processor_type": ONEVISION,
            "image_grid_pinpoints": [[48, 80], [80, 48], [40, 40]],
            "resample": 1,
            "size": {"height": 32, "width": 32},
        },
        True,
    ),
    # The published llava-hf/llava-v1.6-mistral-7b-hf preprocessor_config.json.
    "next_published": (
        {
            "aspect_ratio_setting": "anyres",
            "crop_size": {"height": 336, "width": 336},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
            "image_mean": CLIP_MEAN,
            "image_processor_type": NEXT,
            "image_std": CLIP_STD,
            "processor_class": "LlavaNextProcessor",
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": 336},
        },
        False,
    ),
    # The published llava-hf/llava-onevision-qwen2-0.5b-ov-hf preprocessor_config.json.
    "onevision_published": (
        {
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_pad": True,
            "do_rescale": True,
            "do_resize": True,
            "image_grid_pinpoints": grid(384, 6),
            "image_mean": HALF,
            "image_processor_type": ONEVISION,
            "image_std": HALF,
            "processor_class": "LlavaOnevisionProcessor",
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"height": 384, "width": 384},
        },
        False,
    ),
}

# config -> images processed one at a time (tiled)
SINGLE_CASES = {
    "next_small": ["wide_coffee", "tall_rocket", "panorama_coffee", "small_astronaut", "large_astronaut"],
    "next_crop": ["wide_coffee", "tall_rocket", "small_astronaut"],
    "onevision_small": ["wide_coffee", "tall_rocket", "panorama_coffee", "small_astronaut", "large_astronaut"],
    "onevision_odd": ["wide_coffee", "small_astronaut"],
    "next_published": ["wide_coffee", "small_astronaut", "large_astronaut"],
    "onevision_published": ["tall_rocket", "large_astronaut"],
}
# config -> prompts of several images (OneVision: untiled squares; NeXT: tiled as usual)
PROMPT_CASES = {
    "onevision_small": [["wide_coffee", "tall_rocket"]],
    "next_small": [["tall_rocket", "small_astronaut"]],
}


def make_images(dst: Path) -> list[str]:
    dst.mkdir(parents=True)
    coffee = Image.fromarray(skimage.data.coffee())  # 600x400
    rocket = Image.fromarray(skimage.data.rocket())  # 640x427
    astronaut = Image.fromarray(skimage.data.astronaut())  # 512x512
    images = {
        # wider than tall
        "wide_coffee": coffee.crop((0, 60, 600, 340)).resize((150, 70), Image.LANCZOS),
        # taller than wide
        "tall_rocket": rocket.crop((200, 0, 380, 427)).resize((54, 130), Image.LANCZOS),
        # an extreme aspect ratio (about 8:1)
        "panorama_coffee": coffee.crop((0, 150, 600, 225)).resize((200, 24), Image.LANCZOS),
        # smaller than one tile of every config
        "small_astronaut": astronaut.crop((120, 0, 400, 210)).resize((20, 15), Image.LANCZOS),
        # very large: upscaled and posterized so that the PNG stays small
        "large_astronaut": Image.eval(
            astronaut.resize((1200, 1200), Image.LANCZOS).crop((0, 150, 1200, 910)),
            lambda v: (v // 32) * 32 + 16,
        ),
    }
    for name, img in images.items():
        img.save(dst / f"{name}.png", format="PNG", optimize=True)
    return list(images)


def write_configs(dst: Path, tokenizer) -> None:
    for name, (flat, _) in CONFIGS.items():
        flat_dir = dst / name
        flat_dir.mkdir(parents=True)
        (flat_dir / "preprocessor_config.json").write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
        # transformers 5 dialect: what save_pretrained writes for a processor holding this image processor
        ip_cls, proc_cls = CLASSES[flat["image_processor_type"]]
        ip = ip_cls.from_pretrained(flat_dir)
        extra = {"video_processor": LlavaOnevisionVideoProcessor()} if proc_cls is LlavaOnevisionProcessor else {}
        proc = proc_cls(image_processor=ip, tokenizer=tokenizer, **extra)
        with tempfile.TemporaryDirectory() as tmp:
            proc.save_pretrained(tmp)
            nested = json.loads((Path(tmp) / "processor_config.json").read_text())
        assert "image_processor" in nested, nested.keys()
        nested_dir = dst / f"{name}_nested"
        nested_dir.mkdir()
        (nested_dir / "processor_config.json").write_text(json.dumps(nested, indent=2, sort_keys=True) + "\n")


def load_processors(config_dir: Path, name: str):
    kind = CONFIGS[name][0]["image_processor_type"]
    ip_cls = CLASSES[kind][0]
    flat = ip_cls.from_pretrained(config_dir / name)
    nested = ip_cls.from_pretrained(config_dir / f"{name}_nested")
    assert type(flat) is ip_cls and type(nested) is ip_cls
    return flat, nested


def padded_grid(proc, image: Image.Image) -> np.ndarray:
    """The resized + padded uint8 image the tiles are cut from (the reference's own helpers)."""
    arr = np.moveaxis(np.asarray(image.convert("RGB")), -1, 0)
    best = select_best_resolution(arr.shape[-2:], proc.image_grid_pinpoints)
    resized = proc._resize_for_patching(arr, best, resample=proc.resample)
    padded = proc._pad_for_patching(resized, best)
    assert get_patch_output_size(resized, best, input_data_format="channels_first") == resized.shape[-2:]
    return padded


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    make_images(OUT / "images")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    write_configs(OUT / "configs", tokenizer)

    tensors: dict[str, np.ndarray] = {}
    cases = []
    for name, images in SINGLE_CASES.items():
        flat, nested = load_processors(OUT / "configs", name)
        full = CONFIGS[name][1]
        for image_name in images:
            image = Image.open(OUT / "images" / f"{image_name}.png")
            out = flat(images=[image], return_tensors="np")
            out2 = nested(images=[image], return_tensors="np")
            pv = out["pixel_values"][0]
            assert pv.dtype == np.float32
            assert np.array_equal(pv, out2["pixel_values"][0]), f"{name}: dialects differ on {image_name}"
            size = [int(v) for v in out["image_sizes"][0]]
            assert size == [image.height, image.width]
            best = list(select_best_resolution(size, flat.image_grid_pinpoints))
            key = f"{name}/{image_name}"
            if full:
                tensors[f"{key}/pixel_values"] = np.ascontiguousarray(pv)
                tensors[f"{key}/padded"] = np.ascontiguousarray(padded_grid(flat, image))
            else:
                tensors[f"{key}/pixel_values_sample"] = np.ascontiguousarray(pv.reshape(-1)[::SAMPLE_STRIDE])
            cases.append(
                {
                    "config": name,
                    "image": image_name,
                    "image_size": size,
                    "best_resolution": best,
                    "shape": list(pv.shape),
                    "full": full,
                    "sum": float(pv.astype(np.float64).sum()),
                }
            )
            print(f"{key}: {image.width}x{image.height} -> best {best}, pixel_values {list(pv.shape)}")

    prompts = []
    for name, prompt_list in PROMPT_CASES.items():
        flat, nested = load_processors(OUT / "configs", name)
        for pi, image_names in enumerate(prompt_list):
            images = [Image.open(OUT / "images" / f"{n}.png") for n in image_names]
            out = flat(images=[images], return_tensors="np")  # one sample holding every image
            out2 = nested(images=[images], return_tensors="np")
            assert np.array_equal(out["pixel_values"], out2["pixel_values"])
            entries = []
            for k, image in enumerate(images):
                size = [int(v) for v in out["image_sizes"][k]]
                # batch padding (do_pad) adds all-zero views after the real ones: drop them
                if "batch_num_images" in out and out["batch_num_images"][0] > 1:
                    views = 1
                else:
                    best = select_best_resolution(size, flat.image_grid_pinpoints)
                    tile = flat.crop_size["height"] if getattr(flat, "crop_size", None) else flat.size.get(
                        "height", flat.size.get("shortest_edge"))
                    views = 1 + -(-best[0] // tile) * -(-best[1] // tile)
                pv = out["pixel_values"][k][:views]
                assert not np.any(out["pixel_values"][k][views:]), "padding views must be zero"
                tensors[f"{name}/prompt{pi}/{k}/pixel_values"] = np.ascontiguousarray(pv)
                entries.append({"image": image_names[k], "image_size": size, "shape": list(pv.shape)})
            batch = [int(v) for v in out.get("batch_num_images", [len(images)])]
            prompts.append({"config": name, "prompt": pi, "batch_num_images": batch, "images": entries})
            print(f"{name}/prompt{pi}: {[e['shape'] for e in entries]} batch_num_images={batch}")

    save_file(tensors, str(OUT / "expected.safetensors"))
    index = {
        "generator": "tests/scripts/anyres_preprocess_fixtures.py",
        "transformers": transformers.__version__,
        "sample_stride": SAMPLE_STRIDE,
        "cases": cases,
        "prompts": prompts,
    }
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT.relative_to(ROOT)}: {total} bytes")
    assert total < MAX_FIXTURE_BYTES, total


if __name__ == "__main__":
    main()
