#!/usr/bin/env python3
"""Side-by-side speed of vlm-bench and transformers on one checkpoint, one machine, one run.

Runs our release `vlm-bench` first, then transformers (PyTorch eager, the same thread count, the
same image, prompt and number of new tokens, EOS ignored, one warm-up then the median of
`--runs`), and prints both tables and the ratios (ours / transformers; > 1 is faster for rates,
< 1 is faster for times). Machines are noisy: compare ratios from one run, not numbers across
runs.

    cargo build --release -p vlm-benches
    python3 benches/scripts/compare_transformers.py --model /tmp/real/qwen2-vl-2b \\
        --image tests/fixtures/reference/images/large_astronaut.png --size 448 --dtype f32,bf16

`--size N` resizes the image to N x N first (the issue's targets use 448 x 448). The default
prompt is about 300 tokens with one Qwen2-VL image at 448 x 448.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
warnings.filterwarnings("ignore")

PROMPT = (
    "Describe this image in detail: the people, the objects, the colours, the light, the place "
    "and what is happening. Then say what the picture could be used for, who might have taken "
    "it and why, and what the weather and the time of day seem to be."
)


def run_ours(args, image):
    exe = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "vlm-bench"
    if not exe.exists():
        sys.exit(f"{exe} not found: run `cargo build --release -p vlm-benches` first")
    cmd = [str(exe), "--model", str(args.model), "--image", str(image), "--prompt", PROMPT,
           "--dtype", args.dtype, "--quant", args.quant, "--new-tokens", str(args.new_tokens),
           "--runs", str(args.runs), "--json"]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    print(out[: out.index("[")].rstrip() if "[" in out else out)
    return json.loads(out[out.index("[") :])


def run_transformers(args, image, dtype_name):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()

    torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
    t0 = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype).eval()
    load_ms = (time.perf_counter() - t0) * 1e3
    processor = make_processor(args.model)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[Image.open(image)], return_tensors="pt")
    inputs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
    n_prompt = inputs["input_ids"].shape[1]

    def once():
        with torch.no_grad():
            t = time.perf_counter()
            model.get_image_features(pixel_values=inputs["pixel_values"], image_grid_thw=inputs.get("image_grid_thw"))
            vision = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            ttft = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            model.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
            total = (time.perf_counter() - t) * 1e3
        decode = (args.new_tokens - 1) / ((total - ttft) / 1e3)
        return vision, ttft, n_prompt / ((ttft - vision) / 1e3), decode

    once()  # warm-up
    runs = [once() for _ in range(args.runs)]
    med = [statistics.median(r[i] for r in runs) for i in range(4)]
    return {"dtype": dtype_name, "load_ms": load_ms, "vision_ms_per_image": med[0], "ttft_ms": med[1],
            "prefill_tok_s": med[2], "decode_tok_s": med[3], "prompt_tokens": n_prompt}


def make_processor(model_dir):
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil, Qwen2VLProcessor, Qwen2VLVideoProcessor

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    if cfg.get("model_type") not in ("qwen2_vl", "qwen2_5_vl"):
        sys.exit(f"compare_transformers.py knows Qwen2-VL processors only (got {cfg.get('model_type')})")
    tok = AutoTokenizer.from_pretrained(model_dir)
    template = json.loads((Path(model_dir) / "chat_template.json").read_text())["chat_template"]
    ip = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
    return Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                            chat_template=template)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--image", required=True, type=Path)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--quant", default="none", help="our quantizations (none,q8_0,q4k); each is "
                    "compared with transformers in the same dtype, unquantized")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    from PIL import Image

    tmp = Path(tempfile.mkdtemp()) / "bench.png"
    Image.open(args.image).convert("RGB").resize((args.size, args.size), Image.BICUBIC).save(tmp)
    ours = run_ours(args, tmp)
    theirs = {name: run_transformers(args, tmp, name) for name in args.dtype.split(",")}
    print("\n| ours | transformers | metric | ours | transformers | ratio |\n|---|---|---|---|---|---|")
    for row in ours:
        name, quant = row["dtype"], row["quant"]
        base = theirs[name]
        label = name if quant == "none" else f"{name} + {quant}"
        for key, better in [("vision_ms_per_image", "lower"), ("ttft_ms", "lower"),
                            ("prefill_tok_s", "higher"), ("decode_tok_s", "higher")]:
            a, b = row[key], base[key]
            ratio = a / b if better == "higher" else b / a
            print(f"| {label} | {name} | {key} | {a:.2f} | {b:.2f} | {ratio:.2f}x |")
        print(f"| {label} | {name} | prompt tokens | {row['prompt_tokens']} | {base['prompt_tokens']} | |")
        if row.get("peak_rss_mb") and row.get("weights_mb"):
            print(f"| {label} | | peak RSS MB (weights MB in {name}) | {row['peak_rss_mb']:.0f} "
                  f"({row['weights_mb']:.0f}) | | {row['peak_rss_mb'] / row['weights_mb']:.2f}x weights |")
    print("\nratio: how many times faster we are (>1 = faster), per metric")


if __name__ == "__main__":
    main()
