#!/usr/bin/env python3
"""Reference fixtures for crates/vlm-preprocess.

Writes to tests/fixtures/preprocess/:
  images/*.png              small lossless test images cut from skimage.data photographs
  configs/<name>/preprocessor_config.json   the processor config, published-checkpoint dialect
  configs/<name>_nested/processor_config.json  the same config as transformers 5 save_pretrained
                            nests it (under "image_processor")
  expected.safetensors      per case "<config>/<image>/resized" (uint8 C,H,W, output of the resize
                            step), "<config>/<image>/pre_rescale" (uint8 C,H,W, input of rescale) and
                            "<config>/<image>/pixel_values" (float32 C,H,W)
  index.json                the list of cases

Reference: transformers' Pillow-backed processors (CLIPImageProcessorPil, SiglipImageProcessorPil,
LlavaImageProcessorPil), fed exactly like `Image.open(path)` + `ImageOps.exif_transpose`.
Also prints how far the default (torchvision-backed) processors are from the Pillow ones.

Run with the pinned environment in tests/scripts/requirements.txt:
    python3 tests/scripts/preprocess_fixtures.py
"""

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageOps
from safetensors.numpy import save_file

import transformers
from transformers import (
    CLIPImageProcessor,
    CLIPImageProcessorPil,
    LlavaImageProcessor,
    LlavaImageProcessorPil,
    SiglipImageProcessor,
    SiglipImageProcessorPil,
)

ROOT = Path(__file__).resolve().parent.parent.parent
OUT = ROOT / "tests" / "fixtures" / "preprocess"
IMAGES = OUT / "images"
CONFIGS = OUT / "configs"

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png16_rgb(path: Path, rgb16: np.ndarray) -> None:
    """Pillow cannot write 48-bit RGB PNGs, so write one by hand (colour type 2, depth 16)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    data = b"\x89PNG\r\n\x1a\n"
    data += png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    data += png_chunk(b"IDAT", zlib.compress(raw, 9))
    data += png_chunk(b"IEND", b"")
    path.write_bytes(data)


def downscale(arr: np.ndarray, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(arr).resize(size, Image.Resampling.LANCZOS)


def make_images() -> list[str]:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for f in IMAGES.glob("*"):
        f.unlink()
    astronaut = skimage.data.astronaut()  # 512x512 RGB
    coffee = skimage.data.coffee()  # 400x600 RGB
    chelsea = skimage.data.chelsea()  # 300x451 RGB
    camera = skimage.data.camera()  # 512x512 L
    rocket = skimage.data.rocket()  # 427x640 RGB

    out = {}
    # Several sizes and aspect ratios (PIL sizes are (width, height)).
    out["wide_rgb"] = downscale(coffee, (90, 60))
    out["tall_rgb"] = downscale(rocket[:, 150:420], (45, 71))
    out["square_rgb"] = downscale(astronaut, (64, 64))
    out["odd_rgb"] = downscale(chelsea, (77, 53))
    out["large_rgb"] = downscale(astronaut[:384], (160, 120))
    out["small_rgb"] = downscale(chelsea, (20, 14))
    out["one_px"] = Image.fromarray(astronaut[200:201, 250:251])
    # Grayscale L and LA.
    out["gray_l"] = downscale(camera, (64, 48))
    cam = np.asarray(downscale(camera, (40, 40)))
    yy, xx = np.mgrid[0:40, 0:40]
    alpha = np.clip(xx * 7 + yy * 2, 0, 255).astype(np.uint8)
    out["gray_la"] = Image.fromarray(np.stack([cam, alpha], axis=-1), mode="LA")
    # RGBA with varying alpha, including fully transparent and opaque pixels.
    cat = np.asarray(downscale(chelsea, (56, 40)))
    yy, xx = np.mgrid[0:40, 0:56]
    alpha = np.clip((xx * 255) // 55 + (yy % 5) - 2, 0, 255).astype(np.uint8)
    out["rgba"] = Image.fromarray(np.dstack([cat, alpha]), mode="RGBA")
    # Palette images, without and with a tRNS chunk.
    out["palette"] = downscale(coffee, (60, 40)).quantize(64)
    pal = downscale(astronaut, (48, 36)).quantize(32)
    trns = bytes((i * 8) % 256 for i in range(32))
    pal.info["transparency"] = trns
    out["palette_trns"] = pal
    # RGB with a single transparent colour (tRNS in an RGB PNG).
    rgb_t = np.asarray(downscale(coffee, (30, 20))).copy()
    rgb_t[5:9, 5:15] = (12, 34, 56)
    out["rgb_trns"] = Image.fromarray(rgb_t)
    out["rgb_trns"].info["transparency"] = (12, 34, 56)

    names = []
    for name, im in out.items():
        path = IMAGES / f"{name}.png"
        kwargs = {}
        if "transparency" in im.info:
            kwargs["transparency"] = im.info["transparency"]
        im.save(path, optimize=True, **kwargs)
        names.append(name)

    # 16-bit grayscale (Pillow mode I;16): values spanning 0..1020 so that Pillow's conversion
    # to RGB (which clips at 255 instead of scaling) is visible.
    g16 = (np.asarray(downscale(camera, (36, 30))).astype(np.uint16) * 4).astype(np.uint16)
    Image.fromarray(g16).save(IMAGES / "gray16.png")
    names.append("gray16")
    # 16-bit RGB: Pillow keeps the high byte of each sample.
    rgb16 = np.asarray(downscale(chelsea, (40, 30))).astype(np.uint16) * 257
    rgb16 = rgb16 + (np.arange(40, dtype=np.uint16)[None, :, None] * 3)  # non-trivial low bytes
    write_png16_rgb(IMAGES / "rgb16.png", rgb16)
    names.append("rgb16")

    # EXIF orientation carried by a PNG eXIf chunk (lossless, unlike a JPEG).
    for orient in (6, 3, 5):
        im = downscale(astronaut[100:300, 150:450], (48, 32))
        exif = Image.Exif()
        exif[0x0112] = orient
        im.save(IMAGES / f"exif_orient{orient}.png", exif=exif.tobytes())
        names.append(f"exif_orient{orient}")
    return names


def load(name: str) -> Image.Image:
    im = Image.open(IMAGES / f"{name}.png")
    return ImageOps.exif_transpose(im)


# name -> (pil class, torchvision class, kwargs, images subset or None for all)
SUBSET = ["wide_rgb", "tall_rgb", "odd_rgb", "large_rgb", "small_rgb", "one_px"]
CONFIG_SPECS = {
    "clip": (
        CLIPImageProcessorPil,
        CLIPImageProcessor,
        dict(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}),
        None,
    ),
    "siglip": (
        SiglipImageProcessorPil,
        SiglipImageProcessor,
        dict(size={"height": 20, "width": 26}, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        None,
    ),
    "llava": (
        LlavaImageProcessorPil,
        LlavaImageProcessor,
        dict(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}, do_pad=True),
        None,
    ),
    "clip_bilinear": (
        CLIPImageProcessorPil,
        CLIPImageProcessor,
        dict(size={"shortest_edge": 22}, crop_size={"height": 20, "width": 21}, resample=2),
        SUBSET,
    ),
    "siglip_lanczos": (
        SiglipImageProcessorPil,
        SiglipImageProcessor,
        dict(size={"height": 24, "width": 18}, resample=1, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        SUBSET,
    ),
    "siglip_box": (
        SiglipImageProcessorPil,
        SiglipImageProcessor,
        dict(size={"height": 17, "width": 23}, resample=4),
        SUBSET,
    ),
    "clip_hamming": (
        CLIPImageProcessorPil,
        CLIPImageProcessor,
        dict(size={"shortest_edge": 25}, crop_size={"height": 24, "width": 24}, resample=5),
        SUBSET,
    ),
    "siglip_nearest": (
        SiglipImageProcessorPil,
        SiglipImageProcessor,
        dict(size={"height": 22, "width": 19}, resample=0),
        SUBSET,
    ),
    # No resize: center crop alone, padding images smaller than the crop with zeros.
    "clip_crop_only": (
        CLIPImageProcessorPil,
        CLIPImageProcessor,
        dict(do_resize=False, crop_size={"height": 24, "width": 24}),
        ["small_rgb", "one_px", "odd_rgb", "gray_l"],
    ),
}


def run_pil(proc, image):
    """Run the processor, capturing the output of `resize` and the input of `rescale`."""
    captured = {}
    orig_resize, orig_rescale = proc.resize, proc.rescale

    def resize(*a, **k):
        out = orig_resize(*a, **k)
        captured["resized"] = out.copy()
        return out

    def rescale(image, *a, **k):
        captured["pre_rescale"] = image.copy()
        return orig_rescale(image, *a, **k)

    proc.resize, proc.rescale = resize, rescale
    try:
        pv = proc(image, return_tensors="np")["pixel_values"][0]
    finally:
        proc.resize, proc.rescale = orig_resize, orig_rescale
    return captured, pv


def main() -> None:
    assert transformers.__version__ == "5.23.0", transformers.__version__
    names = make_images()
    if CONFIGS.exists():
        shutil.rmtree(CONFIGS)
    CONFIGS.mkdir(parents=True)

    tensors = {}
    cases = []
    stats = []
    for cfg_name, (pil_cls, tv_cls, kwargs, subset) in CONFIG_SPECS.items():
        proc = pil_cls(**kwargs)
        # Published-checkpoint dialect.
        proc.save_pretrained(CONFIGS / cfg_name)
        cfg = json.loads((CONFIGS / cfg_name / "preprocessor_config.json").read_text())
        # transformers 5 dialect: nested under "image_processor" in processor_config.json.
        nested = CONFIGS / f"{cfg_name}_nested"
        nested.mkdir()
        (nested / "processor_config.json").write_text(
            json.dumps({"image_processor": cfg, "processor_class": "CLIPProcessor"}, indent=2) + "\n"
        )
        # The reference is the processor reloaded from the file, so the file is what is tested.
        proc = pil_cls.from_pretrained(CONFIGS / cfg_name)
        tv = tv_cls.from_pretrained(CONFIGS / cfg_name)
        for name in subset or names:
            image = load(name)
            captured, pv = run_pil(proc, image)
            key = f"{cfg_name}/{name}"
            if "resized" in captured:
                tensors[f"{key}/resized"] = np.ascontiguousarray(captured["resized"].astype(np.uint8))
            tensors[f"{key}/pre_rescale"] = np.ascontiguousarray(captured["pre_rescale"].astype(np.uint8))
            tensors[f"{key}/pixel_values"] = np.ascontiguousarray(pv.astype(np.float32))
            cases.append({"config": cfg_name, "image": name, "has_resized": "resized" in captured})

            try:
                pv_tv = tv(load(name), return_tensors="pt")["pixel_values"][0].numpy()
            except NotImplementedError as e:  # torch has no BOX / HAMMING kernels
                stats.append((cfg_name, name, None, None, 0, str(e).split("(got ")[-1].rstrip(")")))
                continue
            mean = np.array(proc.image_mean, dtype=np.float64)[:, None, None]
            std = np.array(proc.image_std, dtype=np.float64)[:, None, None]
            levels = np.abs((pv.astype(np.float64) - pv_tv.astype(np.float64)) * std * 255.0)
            stats.append((cfg_name, name, float(levels.max()), float((levels > 0.5).mean()), levels.size, ""))

    save_file(tensors, str(OUT / "expected.safetensors"))
    index = {
        "generator": "tests/scripts/preprocess_fixtures.py",
        "transformers": transformers.__version__,
        "pillow": Image.__version__,
        "images": names,
        "cases": cases,
    }
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")

    print(f"{len(cases)} cases, {len(names)} images")
    print("\ntorchvision-backed default processor vs Pillow-backed (uint8 levels):")
    print(f"{'config':16} {'image':14} {'max|diff|':>9} {'frac>0.5':>9}")
    total = 0
    differing = 0.0
    worst = 0.0
    for cfg_name, name, mx, frac, n, err in stats:
        if mx is None:
            print(f"{cfg_name:16} {name:14} torchvision backend fails: unsupported mode {err}")
            continue
        print(f"{cfg_name:16} {name:14} {mx:9.2f} {frac:9.4f}")
        total += n
        differing += frac * n
        worst = max(worst, mx)
    print(f"overall: max |diff| {worst:.2f} levels, {differing / total:.4%} of values differ by > 0.5 level")
    smooth = [s for s in stats if s[2] is not None and not s[0].endswith("nearest")]
    n = sum(s[4] for s in smooth)
    print(
        f"excluding NEAREST: max |diff| {max(s[2] for s in smooth):.2f} levels, "
        f"{sum(s[3] * s[4] for s in smooth) / n:.4%} of values differ by > 0.5 level"
    )
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"fixture folder: {size / 1024:.0f} KiB")
    big = [(f.name, f.stat().st_size) for f in IMAGES.glob("*") if f.stat().st_size > 60_000]
    assert not big, big


if __name__ == "__main__":
    main()
