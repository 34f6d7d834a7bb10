#!/usr/bin/env python3
"""Reference fixtures for vlm-preprocess's Qwen2-VL / Qwen2.5-VL image and video preprocessing.

Writes to tests/fixtures/preprocess/qwen2vl/ (deleting what was there):
  images/*.png            photographs from skimage.data cut to sizes that are not multiples of 28
  video/<clip>/frame_NN.png  video frames as PNG files
  video/*.gif             animated GIFs written by a tiny encoder below (partial frames, local
                          palettes, transparency, every disposal method, a grayscale palette)
  configs/<name>/         processor configs in both dialects: published `preprocessor_config.json`
                          / `video_preprocessor_config.json` with top-level min_pixels/max_pixels,
                          and transformers 5 `processor_config.json` with nested entries
  expected.safetensors    per image case "image/<config>/<image>/resized" (uint8 C,H,W) and
                          ".../pixel_values_t0" (float32 [patches, 3*14*14]: the reference's
                          pixel_values with one of its identical temporal copies);
                          per video case "video/<case>/pixel_values" (+ "resized" when frames are
                          resized: torchvision's uint8 output); per GIF "gif/<name>/frames"
                          (uint8 [N, H, W, 3], Pillow's ImageSequence + convert("RGB"))
  index.json              the cases (grid_thw, sampled indices, sampled_fps, second_per_grid_ts),
                          a smart_resize table and a frame-sampling table

Reference: transformers 5.23.0 `Qwen2VLImageProcessorPil` (images) and `Qwen2VLVideoProcessor`
(videos, torchvision backend; loaded through `AutoVideoProcessor` where the config fallback is the
point), torch 2.15, torchvision 0.29.2, Pillow 13. The script also prints how far Pillow-resized
video frames (what vlm-preprocess does) are from torchvision-resized ones.

Deterministic; rerun with the pinned environment in tests/scripts/requirements.txt:
    python3 tests/scripts/qwen2vl_preprocess_fixtures.py
"""

import json
import math
import random
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image, ImageSequence
from safetensors.numpy import save_file

import transformers
from transformers import AutoVideoProcessor, Qwen2VLImageProcessorPil, Qwen2VLVideoProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
from transformers.video_utils import VideoMetadata

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parent.parent.parent
OUT = ROOT / "tests" / "fixtures" / "preprocess" / "qwen2vl"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
MAX_FIXTURE_BYTES = 1_500_000


# ---------------------------------------------------------------------------------------------
# A minimal GIF encoder: full control over frame rectangles, palettes, transparency, disposal.


def lzw_literals(indices: bytes, min_code_size: int = 8) -> bytes:
    """LZW stream of literal codes only, with a clear code often enough that the code width
    never grows: valid GIF data every decoder must accept."""
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    width = min_code_size + 1
    codes = [clear]
    for n, value in enumerate(indices):
        if n and n % 250 == 0:
            codes.append(clear)
        codes.append(value)
    codes.append(end)
    bits, nbits, out = 0, 0, bytearray()
    for code in codes:
        bits |= code << nbits
        nbits += width
        while nbits >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
    if nbits:
        out.append(bits & 0xFF)
    blocks = bytearray([min_code_size])
    for i in range(0, len(out), 255):
        chunk = out[i : i + 255]
        blocks += bytes([len(chunk)]) + chunk
    return bytes(blocks + b"\x00")


def palette_bytes(colours) -> tuple[bytes, int]:
    """Pads a palette to a power of two entries; returns (bytes, size field)."""
    n = max(2, len(colours))
    bits = max(1, math.ceil(math.log2(n)))
    padded = list(colours) + [(0, 0, 0)] * ((1 << bits) - len(colours))
    return b"".join(bytes(c) for c in padded), bits - 1


def write_gif(path: Path, width: int, height: int, global_palette, background: int, frames) -> None:
    data = bytearray(b"GIF89a")
    flags, table = 0, b""
    if global_palette is not None:
        table, size = palette_bytes(global_palette)
        flags = 0x80 | 0x70 | size
    data += struct.pack("<HHBBB", width, height, flags, background, 0) + table
    data += b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    for f in frames:
        trans = f.get("transparent")
        packed = (f.get("disposal", 0) << 2) | (1 if trans is not None else 0)
        data += b"!\xf9\x04" + struct.pack("<BHB", packed, f.get("delay", 10), trans or 0) + b"\x00"
        idx = np.asarray(f["indices"], dtype=np.uint8)
        h, w = idx.shape
        local = f.get("palette")
        lflags, ltable = 0, b""
        if local is not None:
            ltable, size = palette_bytes(local)
            lflags = 0x80 | size
        data += b"," + struct.pack("<HHHHB", f.get("left", 0), f.get("top", 0), w, h, lflags) + ltable
        data += lzw_literals(idx.tobytes())
    data += b";"
    path.write_bytes(bytes(data))


def quantize(rgb: np.ndarray, colours: int) -> tuple[np.ndarray, list]:
    """Pillow's median-cut quantization: (indices, palette)."""
    im = Image.fromarray(rgb).quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    pal = im.getpalette()[: 3 * colours]
    return np.asarray(im), [tuple(pal[i : i + 3]) for i in range(0, len(pal), 3)]


def make_gifs(video_dir: Path) -> dict:
    """Three GIFs; returns name -> (path, fps from delays as the Rust loader derives it)."""
    rng = np.random.default_rng(7)
    astronaut = skimage.data.astronaut()
    coffee = skimage.data.coffee()
    gifs = {}

    # 1. A clip for processing: 8 frames of 28x56 panning over a photo with one shared palette,
    # plus partial frames (a moving patch) and one frame with its own local palette.
    strip = astronaut[180:208, 150:250]
    idx_strip, pal = quantize(strip, 64)
    frames = []
    for i in range(8):
        full = idx_strip[:, i * 4 : i * 4 + 56]
        if i in (0, 1, 4, 6):
            frames.append(dict(indices=full, disposal=1, delay=10))
        elif i == 5:
            local_idx, local_pal = quantize(strip[:, i * 4 : i * 4 + 56], 32)
            frames.append(dict(indices=local_idx, palette=local_pal, disposal=1, delay=10))
        else:
            top, left = 3 + i, 6 * i
            frames.append(dict(indices=full[top : top + 12, left : left + 16], left=left, top=top, disposal=1, delay=10))
    write_gif(video_dir / "clip.gif", 56, 28, pal, 0, frames)

    # 2. Compositing corner cases (decode parity only): frame 0 partial with transparency,
    # background disposal (2), restore-previous (3), sticky "unspecified" disposal, a local
    # palette, indices past a palette's end, background index != 0.
    base_idx, base_pal = quantize(coffee[100:120, 200:224], 16)
    def noisy(h, w, top=16):
        return rng.integers(0, top, size=(h, w), dtype=np.uint8)
    f0 = base_idx[3:15, 2:18].copy()
    f0[::3, ::2] = 5  # transparent index: keeps its palette colour in frame 0
    disposal_frames = [
        dict(indices=f0, left=2, top=3, transparent=5, disposal=2, delay=7),
        dict(indices=np.where(noisy(20, 24) < 4, 9, base_idx), transparent=9, disposal=3, delay=7),
        dict(indices=noisy(8, 10), left=5, top=6, palette=[tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(16)], disposal=0, delay=7),
        dict(indices=noisy(10, 12), left=10, top=8, transparent=2, disposal=2, delay=7),
        dict(indices=np.where(noisy(6, 6) < 3, 20, noisy(6, 6)), left=1, top=1, disposal=1, delay=7),
        # Background disposal without transparency: the background index's colour (3).
        dict(indices=noisy(7, 9), left=12, top=2, disposal=2, delay=7),
        dict(indices=noisy(4, 5), left=14, top=4, disposal=1, delay=7),
        # A transparent index past the palette's end: its disposal fill is palette entry 0.
        dict(indices=noisy(6, 7), left=3, top=12, transparent=20, disposal=2, delay=7),
        dict(indices=noisy(20, 24), transparent=0, disposal=0, delay=0),
    ]
    write_gif(video_dir / "disposal.gif", 24, 20, base_pal, 3, disposal_frames)

    # 3. An identity grayscale palette: Pillow decodes it in "L" mode.
    gray = skimage.data.camera()[200:216, 200:236]
    gray_pal = [(i, i, i) for i in range(256)]
    gray_frames = [
        dict(indices=gray, transparent=17, disposal=2, delay=4),
        # Background disposal in "L" mode fills with frame 0's transparent index (17), not 40.
        dict(indices=np.where(noisy(8, 10, 255) < 60, 40, noisy(8, 10, 255)), left=4, top=2, transparent=40, disposal=2, delay=4),
        dict(indices=gray[4:10, 20:30], left=8, top=6, disposal=1, delay=4),
        dict(indices=gray[::-1], left=0, top=0, transparent=gray[0, 0], disposal=1, delay=4),
    ]
    write_gif(video_dir / "gray.gif", 36, 16, gray_pal, 200, gray_frames)

    for name in ("clip", "disposal", "gray"):
        path = video_dir / f"{name}.gif"
        im = Image.open(path)
        n = 0
        total_ms = 0
        for frame in ImageSequence.Iterator(im):
            total_ms += frame.info.get("duration", 0)
            n += 1
        gifs[name] = (path, n / (total_ms / 1000) if total_ms > 0 else None)
    return gifs


def gif_frames(path: Path) -> list:
    """What `PIL.ImageSequence.Iterator` + `convert("RGB")` yields."""
    return [frame.convert("RGB") for frame in ImageSequence.Iterator(Image.open(path))]


# ---------------------------------------------------------------------------------------------
# Inputs and configs.


def make_images(images_dir: Path) -> list[str]:
    chelsea = skimage.data.chelsea()
    coffee = skimage.data.coffee()
    astronaut = skimage.data.astronaut()
    rocket = skimage.data.rocket()
    cuts = {  # name: array cut (height, width)
        "photo_123x77": chelsea[60:137, 150:273],
        "photo_300x200": rocket[0:200, 100:400],
        "wide_150x9": astronaut[200:209, 100:250],
        "tall_45x130": rocket[150:280, 300:345],
        "tiny_20x14": coffee[200:214, 300:320],
    }
    for name, arr in cuts.items():
        Image.fromarray(np.ascontiguousarray(arr)).save(images_dir / f"{name}.png", optimize=True)
    return list(cuts)


def image_type():
    return {"image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}


def write_configs(configs: Path) -> None:
    def flat(name, files):
        d = configs / name
        d.mkdir(parents=True)
        for file, obj in files.items():
            (d / file).write_text(json.dumps(obj, indent=2) + "\n")

    # Published Qwen2-VL dialect: top-level min/max pixels, class defaults otherwise.
    flat("qwen2vl_published", {"preprocessor_config.json": {
        **image_type(), "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14,
        "temporal_patch_size": 2, "merge_size": 2, "image_mean": CLIP_MEAN, "image_std": CLIP_STD}})
    # Small budget; top-level keys override a disagreeing `size` (Qwen2.5-VL files carry both).
    # No video config: AutoVideoProcessor falls back to this file, min/max pixels included.
    flat("qwen2vl_small", {"preprocessor_config.json": {
        **image_type(), "min_pixels": 784, "max_pixels": 3136,
        "size": {"shortest_edge": 100, "longest_edge": 200000}}})
    # transformers 5 dialect: nested entries with `size`, and a video entry that samples by fps.
    flat("qwen25vl_nested", {"processor_config.json": {
        "processor_class": "Qwen2_5_VLProcessor",
        "image_processor": {**image_type(), "size": {"shortest_edge": 1568, "longest_edge": 4704},
                            "resample": 3, "do_resize": True},
        "video_processor": {"video_processor_type": "Qwen2VLVideoProcessor",
                            "size": {"shortest_edge": 784, "longest_edge": 3136},
                            "do_sample_frames": True, "fps": 3.0, "min_frames": 2},
    }})
    # Non-default filter and mean/std.
    flat("qwen2vl_bilinear", {"preprocessor_config.json": {
        **image_type(), "size": {"shortest_edge": 784, "longest_edge": 2352}, "resample": 2,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}})
    # Published video dialect.
    flat("video_small", {"video_preprocessor_config.json": {
        "video_processor_type": "Qwen2VLVideoProcessor", "min_pixels": 784, "max_pixels": 3136,
        "do_sample_frames": False}})
    # Whole-video pixel cap with a tiny token budget, so that it binds on small frames.
    flat("video_capped", {"video_preprocessor_config.json": {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "size": {"shortest_edge": 784, "longest_edge": 3136},
        "cap_pixels_per_frame": True, "max_video_tokens": 4}})


IMAGE_CASES = {
    "qwen2vl_published": ["tiny_20x14"],
    "qwen2vl_small": ["photo_123x77", "photo_300x200", "wide_150x9", "tall_45x130", "tiny_20x14"],
    "qwen25vl_nested": ["photo_123x77"],
    "qwen2vl_bilinear": ["photo_123x77", "tall_45x130"],
}


def run_image(proc, image):
    captured = {}
    orig = proc.resize

    def resize(image, *a, **k):
        out = orig(image, *a, **k)
        captured["resized"] = np.asarray(out).copy()
        return out

    proc.resize = resize
    try:
        out = proc(image, return_tensors="np")
    finally:
        proc.resize = orig
    return captured["resized"], out["pixel_values"], out["image_grid_thw"][0].tolist()


def make_video_frames(video_dir: Path) -> dict:
    astronaut = skimage.data.astronaut()
    chelsea = skimage.data.chelsea()
    clips = {
        # 28 x 56: smart_resize keeps it for bounds 784..3136 (the resize is the identity).
        "frames28x56": [astronaut[100:128, 200 + 5 * i : 256 + 5 * i] for i in range(5)],
        # 37 x 47: resized to 28 x 56 (torchvision vs Pillow).
        "frames37x47": [chelsea[90 + 2 * i : 127 + 2 * i, 180 + 3 * i : 227 + 3 * i] for i in range(6)],
    }
    paths = {}
    for name, frames in clips.items():
        d = video_dir / name
        d.mkdir(parents=True)
        paths[name] = []
        for i, f in enumerate(frames):
            p = d / f"frame_{i:02d}.png"
            Image.fromarray(np.ascontiguousarray(f)).save(p, optimize=True)
            paths[name].append(p)
    return paths


def torch_style_normalize(frames_u8: np.ndarray) -> np.ndarray:
    """TorchvisionBackend.rescale_and_normalize, fused, in float32 (what the Rust code does)."""
    mean = torch.tensor(CLIP_MEAN) * (1.0 / (1 / 255))
    std = torch.tensor(CLIP_STD) * (1.0 / (1 / 255))
    x = torch.from_numpy(frames_u8).permute(0, 3, 1, 2).to(torch.float32)
    return ((x - mean[:, None, None]) / std[:, None, None]).numpy()


def patchify_video(x: np.ndarray, t=2, p=14, m=2) -> np.ndarray:
    n, c, h, w = x.shape
    if n % t:
        x = np.concatenate([x, np.repeat(x[-1:], t - n % t, axis=0)])
    gt, gh, gw = x.shape[0] // t, h // p, w // p
    v = x.reshape(gt, t, c, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return v.reshape(gt * gh * gw, c * t * p * p)


def run_video(proc, frames, video_fps, **kwargs):
    """Returns (pixel_values, grid, indices, sampled_fps, second_per_grid_t, resized or None)."""
    captured = {}
    orig = proc.resize

    def resize(videos, *a, **k):
        captured["input"] = videos.clone()
        out = orig(videos, *a, **k)
        captured["output"] = out.clone()
        return out

    proc.resize = resize
    meta = {"total_num_frames": len(frames), "fps": video_fps} if video_fps is not None else None
    try:
        out = proc(frames, return_metadata=True, return_tensors="pt", video_metadata=meta, **kwargs)
    finally:
        proc.resize = orig
    md = out["video_metadata"][0]
    indices = md.frames_indices
    indices = list(range(len(frames))) if indices is None else [int(i) for i in indices]
    sampled_fps = md.sampled_fps
    identity = captured["input"].shape == captured["output"].shape
    if identity:
        assert torch.equal(captured["input"], captured["output"]), "torchvision changed a same-size frame"
    resized = None if identity else captured["output"][0].permute(0, 2, 3, 1).numpy().astype(np.uint8)
    return (
        out["pixel_values_videos"].numpy(),
        out["video_grid_thw"][0].tolist(),
        indices,
        float(sampled_fps),
        proc.temporal_patch_size / sampled_fps,
        resized,
    )


# ---------------------------------------------------------------------------------------------
# Tables.


def smart_resize_table() -> list:
    """Rows: [height, width, factor, min_pixels, max_pixels, out height, out width] (None, None
    where smart_resize raises)."""
    # Sides around multiples of 28 and at exact .5 ties (14, 42, 70, 98, 126: round half to even).
    sides = [1, 2, 13, 14, 15, 27, 28, 42, 43, 56, 70, 77, 98, 123, 126, 300, 333, 640, 1080, 4000]
    grids = [(28, 3136, 1003520), (28, 784, 3136), (28, 100352, 602112), (32, 1568, 4704)]
    rows = []
    for factor, min_p, max_p in grids:
        for h in sides:
            for w in sides:
                rows.append((h, w, factor, min_p, max_p))
    rng = random.Random(1234)
    for _ in range(300):
        h, w = rng.randint(1, 5000), rng.randint(1, 5000)
        min_p = rng.choice([1, 784, 3136, 50000])
        rows.append((h, w, rng.choice([28, 28, 32, 14]), min_p, min_p * rng.choice([1, 2, 4, 16, 1280])))
    # Products where sqrt / division land on exact integers in exact arithmetic.
    for k in range(1, 30):
        rows.append((200 * k, 300 * k, 28, 784, 4704 * k * k))
        rows.append((7 * k, 11 * k, 28, 28 * 28 * 77 * k * k, 28 * 28 * 77 * k * k * 4))
    # Aspect ratios around the limit of 200.
    for h, w in [(1, 200), (1, 201), (2, 401), (2, 400), (3, 600), (3, 601), (200, 1), (601, 3)]:
        rows.append((h, w, 28, 3136, 1003520))
    table = []
    for h, w, factor, min_p, max_p in rows:
        try:
            rh, rw = smart_resize(h, w, factor=factor, min_pixels=min_p, max_pixels=max_p)
            table.append([h, w, factor, min_p, max_p, rh, rw])
        except ValueError:
            table.append([h, w, factor, min_p, max_p, None, None])
    return table


def arange_emulations(total: int, count: int) -> list:
    """Two plausible but wrong models of torch.arange(0, total, total / count).int(): float32 of
    the f64 product everywhere, and 16-lane vector blocks. Used only to pick table rows."""
    step = total / count
    n = math.ceil(total / step)
    plain = [int(np.float32(i * step)) for i in range(n)]
    wide = []
    for i in range(n):
        if i < n // 32 * 32:
            base = i // 16 * 16
            wide.append(int(np.float32(float(np.float32(base * step)) + (i - base) * step)))
        else:
            wide.append(int(np.float32(i * step)))
    return [plain, wide]


def discriminating_rows() -> list:
    """Rows where each simpler model of torch's arithmetic goes wrong (6 of each, the first
    found). float32 rounding only crosses an integer for long videos and many frames."""
    rows, wanted = [], [6, 6]
    for total in range(19943, 200000, 997):
        for count in range(500, 769, 2):
            ref = torch.arange(0, total, total / count).int().tolist()
            wrong = [e != ref for e in arange_emulations(total, count)]
            if any(w and n > 0 for w, n in zip(wrong, wanted)):
                rows.append(dict(total=total, num_frames=count, temporal_patch_size=2))
                wanted = [n - w for w, n in zip(wrong, wanted)]
                break
        if max(wanted) <= 0:
            break
    return rows


def sampling_table() -> list:
    """Rows: [total, "num_frames" | "fps", value, video fps, temporal_patch_size, min_frames,
    max_frames, indices or "error"]."""
    rows = []
    totals = list(range(2, 41)) + [59, 60, 100, 101, 257, 1000, 4321, 30001]
    counts = [1, 2, 3, 4, 5, 6, 7, 8, 10, 13, 14, 16, 17, 25, 31, 32, 33, 64, 100, 768]
    for t in (2, 1, 3):
        for total in totals if t == 2 else totals[:-3:3]:
            for n in counts:
                if n <= total + 2:
                    rows.append(dict(total=total, num_frames=n, temporal_patch_size=t))
    for video_fps in (1.0, 2.5, 10.0, 24.0, 29.97, 30000 / 1001, 60.0):
        for fps in (0.5, 1.0, 2.0, 3.3):
            for total in (2, 3, 5, 9, 17, 40, 101, 257, 1000):
                for min_f, max_f in ((4, 768), (2, 16)):
                    rows.append(dict(total=total, fps=fps, video_fps=video_fps, temporal_patch_size=2,
                                     min_frames=min_f, max_frames=max_f))
    # Long videos: float32 steps of torch.arange matter once indices reach the thousands.
    for video_fps, fps, total in ((29.97, 2.0, 30001), (30000 / 1001, 1.0, 4321), (24.0, 3.3, 30001)):
        rows.append(dict(total=total, fps=fps, video_fps=video_fps, temporal_patch_size=2,
                         min_frames=4, max_frames=768))
    rows.append(dict(total=17, fps=2.0, video_fps=None, temporal_patch_size=2))  # fps needs metadata
    rows += discriminating_rows()
    proc = Qwen2VLVideoProcessor()
    out = []
    for row in rows:
        kwargs = dict(temporal_patch_size=row["temporal_patch_size"], min_frames=row.get("min_frames", 4),
                      max_frames=row.get("max_frames", 768))
        if "num_frames" in row:
            kwargs["num_frames"] = row["num_frames"]
        else:
            kwargs["fps"] = row["fps"]
        meta = VideoMetadata(total_num_frames=row["total"], fps=row.get("video_fps"))
        try:
            indices = [int(i) for i in proc.sample_frames(meta, **kwargs)]
            # transformers then indexes the frames: an index past the end raises IndexError.
            expected = indices if max(indices) < row["total"] else "error"
        except (ValueError, ZeroDivisionError):
            expected = "error"
        kind, value = ("num_frames", row["num_frames"]) if "num_frames" in row else ("fps", row["fps"])
        out.append([row["total"], kind, value, row.get("video_fps"), row["temporal_patch_size"],
                    kwargs["min_frames"], kwargs["max_frames"], expected])
    return out


def dump_index(index: dict) -> str:
    """JSON with one table row per line (the tables are long; indent=1 would put every number on
    its own line)."""
    parts = []
    for key, value in index.items():
        if isinstance(value, list):
            rows = ",\n  ".join(json.dumps(v, separators=(",", ":")) for v in value)
            parts.append(f" {json.dumps(key)}: [\n  {rows}\n ]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


# ---------------------------------------------------------------------------------------------


def main() -> None:
    assert transformers.__version__ == "5.23.0", transformers.__version__
    assert torch.__version__.startswith("2.15"), torch.__version__
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "images").mkdir(parents=True)
    (OUT / "video").mkdir(parents=True)
    configs = OUT / "configs"
    write_configs(configs)
    images = make_images(OUT / "images")
    gifs = make_gifs(OUT / "video")
    clips = make_video_frames(OUT / "video")

    tensors = {}
    index = {
        "generator": "tests/scripts/qwen2vl_preprocess_fixtures.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "pillow": Image.__version__,
        "image_cases": [],
        "video_cases": [],
        "gifs": [],
    }

    # Images.
    for cfg, names in IMAGE_CASES.items():
        proc = Qwen2VLImageProcessorPil.from_pretrained(configs / cfg)
        for name in names:
            image = Image.open(OUT / "images" / f"{name}.png")
            resized, pv, grid = run_image(proc, image)
            key = f"image/{cfg}/{name}"
            tensors[f"{key}/resized"] = np.ascontiguousarray(resized.astype(np.uint8))
            # An image is its frame repeated temporal_patch_size times (a broadcast in the
            # reference): check that, and store one copy to halve the fixture.
            n, t = pv.shape[0], proc.temporal_patch_size
            per_frame = pv.reshape(n, 3, t, -1)
            assert all(np.array_equal(per_frame[:, :, 0], per_frame[:, :, i]) for i in range(t))
            tensors[f"{key}/pixel_values_t0"] = np.ascontiguousarray(per_frame[:, :, 0].reshape(n, -1).astype(np.float32))
            index["image_cases"].append({"config": cfg, "image": name, "grid_thw": grid,
                                         "min_pixels": proc.size.shortest_edge,
                                         "max_pixels": proc.size.longest_edge})
            print(f"image {cfg:18} {name:14} {image.size[1]}x{image.size[0]} -> {resized.shape[1:]} grid {grid}")

    # GIF decoding.
    for name, (path, fps) in gifs.items():
        frames = np.stack([np.asarray(f) for f in gif_frames(path)])
        tensors[f"gif/{name}/frames"] = np.ascontiguousarray(frames)
        index["gifs"].append({"name": name, "file": f"video/{name}.gif", "frames": len(frames), "fps": fps})

    # Videos. `source` is a frame folder or a GIF; `sampling` mirrors vlm-preprocess's FrameSampling.
    video_cases = [
        dict(name="frames_all", config="video_small", source="frames28x56", first=3, fps=None, sampling={"kind": "all"}),
        dict(name="frames_num4", config="video_small", source="frames28x56", fps=29.97, sampling={"kind": "num_frames", "value": 4}),
        dict(name="frames_config_fps", config="qwen25vl_nested", source="frames28x56", fps=30000 / 1001, sampling={"kind": "config"}),
        dict(name="gif_fps4_fallback", config="qwen2vl_small", source="clip.gif", fps=gifs["clip"][1], sampling={"kind": "fps", "value": 4.0}),
        dict(name="resize_num4", config="video_small", source="frames37x47", fps=None, sampling={"kind": "num_frames", "value": 4}),
        dict(name="capped_num4", config="video_capped", source="frames28x56", fps=None, sampling={"kind": "num_frames", "value": 4}),
    ]
    diffs = []
    for case in video_cases:
        proc = AutoVideoProcessor.from_pretrained(configs / case["config"])
        assert isinstance(proc, Qwen2VLVideoProcessor), type(proc)
        if case["source"].endswith(".gif"):
            frames = gif_frames(OUT / "video" / case["source"])
        else:
            frames = [Image.open(p).convert("RGB") for p in clips[case["source"]][: case.get("first")]]
        kwargs = {}
        s = case["sampling"]
        if s["kind"] == "num_frames":
            kwargs = dict(do_sample_frames=True, num_frames=s["value"])
        elif s["kind"] == "fps":
            kwargs = dict(do_sample_frames=True, fps=s["value"])
        pv, grid, indices, sampled_fps, spgt, resized = run_video(proc, frames, case["fps"], **kwargs)
        key = f"video/{case['name']}"
        tensors[f"{key}/pixel_values"] = np.ascontiguousarray(pv.astype(np.float32))
        tolerance = None
        if resized is not None:
            tensors[f"{key}/resized"] = np.ascontiguousarray(resized)
            # What vlm-preprocess does instead: Pillow bicubic, then the same fused normalize.
            size = (resized.shape[2], resized.shape[1])
            pil = np.stack([np.asarray(frames[i].resize(size, Image.Resampling.BICUBIC)) for i in indices])
            level = np.abs(pil.astype(np.int16) - resized.astype(np.int16))
            ours = patchify_video(torch_style_normalize(pil))
            value = float(np.abs(ours - pv).max())
            diffs.append((case["name"], int(level.max()), float((level > 0).mean()), value))
            tolerance = {"max_level_diff": int(level.max()), "frac_values_differing": float((level > 0).mean()),
                         "max_abs_pixel_value_diff": value}
        else:
            # The fused float32 normalize reproduced in NumPy/torch is bit-exact here.
            src = np.stack([np.asarray(frames[i]) for i in indices])
            assert np.array_equal(patchify_video(torch_style_normalize(src)), pv), case["name"]
        index["video_cases"].append({**case, "grid_thw": grid, "frame_indices": indices,
                                     "sampled_fps": sampled_fps, "second_per_grid_t": spgt,
                                     "resized": resized is not None, "measured": tolerance})
        print(f"video {case['name']:18} {len(frames)} frames -> indices {indices} grid {grid} "
              f"sampled_fps {sampled_fps:.4f} second_per_grid_t {spgt:.4f}")

    index["smart_resize"] = smart_resize_table()
    index["sampling"] = sampling_table()
    save_file(tensors, str(OUT / "expected.safetensors"))
    (OUT / "index.json").write_text(dump_index(index))

    print("\nPillow-resized frames (vlm-preprocess) vs torchvision-resized (transformers):")
    for name, level, frac, value in diffs:
        print(f"  {name:14} max |diff| {level} uint8 level(s), {frac:.2%} of values differ, "
              f"max |pixel value diff| {value:.6f}")
    errors = sum(1 for r in index["smart_resize"] if r[5] is None)
    bad = sum(1 for r in index["sampling"] if r[7] == "error")
    print(f"smart_resize table: {len(index['smart_resize'])} rows ({errors} errors); "
          f"sampling table: {len(index['sampling'])} rows ({bad} errors)")
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"fixture folder: {size / 1024:.0f} KiB")
    assert size < MAX_FIXTURE_BYTES, size


if __name__ == "__main__":
    main()
