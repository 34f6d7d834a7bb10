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

    python3 benches/scripts/make_real_shape.py smolvlm-256m --out /tmp/real/smolvlm-256m
    python3 benches/scripts/compare_transformers.py --model /tmp/real/smolvlm-256m \\
        --image tests/fixtures/reference/images/large_astronaut.png --size 512 --dtype f32

`--size N` resizes the image to N x N first (the issue's targets use 448 x 448 for Qwen2-VL and
512 x 512 for SmolVLM). Processors: Qwen2-VL / Qwen2.5-VL (`Qwen2VLImageProcessorPil`) and
Idefics3 / SmolVLM (`Idefics3ImageProcessorPil`, from the folder's processor files); the Pillow
backends are the ones our preprocessing reproduces exactly, so both sides see the same pixels
and the same prompt tokens.

Prompt length: the default prompt is about 300 tokens with one Qwen2-VL image at 448 x 448 (256
image tokens). With SmolVLM's processor (`size.longest_edge` 2048, 512 px tiles, splitting on) a
512 x 512 image is first enlarged to 2048 x 2048 and cut into a 4 x 4 grid plus the global view:
17 tiles x 64 = 1088 image tokens; with the default prompt and the test tokenizer of
`make_real_shape.py smolvlm-256m` the prompt is 1262 tokens (1128 for the image). Both prompt token counts are
printed; the script warns when they differ.

"vision ms/image" means the same on both sides: wall time of everything between the processed
inputs and the text model for ALL tiles / views of the request's images (vision tower +
projector / connector; our figure also includes the embedding merge), divided by the number of
INPUT images, not by the number of tiles (benches/src/main.rs divides `timings.vision` by the
number of `--image`s). For SmolVLM at 512 x 512 that is 17 tiles through the tower per image.
Image preprocessing (resize, tiling, normalization) is excluded on both sides. TTFT is vision +
prefill up to the first token's logits; prefill tok/s is prompt tokens / (TTFT - vision); decode
tok/s is (new tokens - 1) / the time of the decode steps after the first token. On the
transformers side TTFT and decode come from one `generate` call (time stamps of each token's
logits) and vision from a separate `get_image_features` call.
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
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"vlm-bench failed (exit {res.returncode}):\n{res.stderr.strip() or res.stdout.strip()}")
    out = res.stdout
    print(out[: out.index("[")].rstrip() if "[" in out else out)
    return json.loads(out[out.index("[") :])


def run_transformers(args, image, dtype_name):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, LogitsProcessor, LogitsProcessorList
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()

    torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
    t0 = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype).eval()
    load_ms = (time.perf_counter() - t0) * 1e3
    processor, kind = make_processor(args.model)
    images = [Image.open(image)]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # As apply_chat_template(tokenize=True) and our pipeline: no second BOS when the template
    # writes it (SmolVLM's starts with <|im_start|>; Qwen2-VL has no BOS).
    bos = processor.tokenizer.bos_token
    inputs = processor(text=[prompt], images=images, return_tensors="pt",
                       add_special_tokens=not (bos and prompt.startswith(bos)))
    if kind == "idefics3":
        inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")}
        vision_kwargs = {"pixel_values": inputs["pixel_values"], "pixel_attention_mask": inputs["pixel_attention_mask"]}
        tiles = int(inputs["pixel_values"].shape[1])
    else:
        vision_kwargs = {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs.get("image_grid_thw")}
        tiles = len(images)
    inputs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
    vision_kwargs = {k: (v.to(dtype) if v is not None and v.is_floating_point() else v) for k, v in vision_kwargs.items()}
    n_prompt = inputs["input_ids"].shape[1]
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    print(f"transformers {dtype_name}: {n_prompt} prompt tokens, {n_image_tokens} image tokens, "
          f"{tiles} tile(s) / view(s) for {len(images)} image(s)", flush=True)
    if n_image_tokens == 0:
        sys.exit("the processor wrote no image token of the config's image_token_id: tokenizer and config disagree")

    class Clock(LogitsProcessor):
        """Time stamps of the logits of every generated token, taken in one `generate` call:
        the first comes right after the prefill, the others after each decode step. Timing
        TTFT and decode in separate `generate` calls and subtracting made decode noise-bound
        when the vision tower dominates (SmolVLM: ~17 tiles re-encoded per call)."""

        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    def once():
        with torch.no_grad():
            t = time.perf_counter()
            model.get_image_features(**vision_kwargs)
            # Per input image, as benches/src/main.rs (all tiles of the image count).
            vision = (time.perf_counter() - t) * 1e3 / len(images)
            clock = Clock()
            t = time.perf_counter()
            model.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                           do_sample=False, logits_processor=LogitsProcessorList([clock]))
        assert len(clock.times) == args.new_tokens, (len(clock.times), args.new_tokens)
        ttft = (clock.times[0] - t) * 1e3
        # As ours: the first token comes from the prefill, the decode steps make the others.
        decode = (args.new_tokens - 1) / (clock.times[-1] - clock.times[0])
        return vision, ttft, n_prompt / ((ttft - vision * len(images)) / 1e3), decode

    once()  # warm-up
    runs = [once() for _ in range(args.runs)]
    med = [statistics.median(r[i] for r in runs) for i in range(4)]
    return {"dtype": dtype_name, "load_ms": load_ms, "vision_ms_per_image": med[0], "ttft_ms": med[1],
            "prefill_tok_s": med[2], "decode_tok_s": med[3], "prompt_tokens": n_prompt}


def make_processor(model_dir):
    """(processor, kind) for the folder's architecture, with the Pillow image processors (the
    ones our preprocessing matches exactly)."""
    from transformers import AutoProcessor, AutoTokenizer, Qwen2VLImageProcessorPil, Qwen2VLProcessor, Qwen2VLVideoProcessor

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    model_type = cfg.get("model_type")
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        tok = AutoTokenizer.from_pretrained(model_dir)
        template = json.loads((Path(model_dir) / "chat_template.json").read_text())["chat_template"]
        ip = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
        return Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                                chat_template=template), "qwen2_vl"
    if model_type == "idefics3":
        # preprocessor_config.json (or processor_config.json's image_processor entry),
        # image_seq_len from processor_config.json, chat_template.json, the tokenizer files.
        processor = AutoProcessor.from_pretrained(model_dir, backend="pil")
        name = type(processor.image_processor).__name__
        if name != "Idefics3ImageProcessorPil":
            sys.exit(f"expected Idefics3ImageProcessorPil, transformers built {name}")
        return processor, "idefics3"
    sys.exit(f"compare_transformers.py knows Qwen2-VL, Qwen2.5-VL and Idefics3 processors only (got {model_type})")


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
    mismatched = []
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
        if row["prompt_tokens"] != base["prompt_tokens"]:
            mismatched.append(label)
        if row.get("peak_rss_mb") and row.get("weights_mb"):
            print(f"| {label} | | peak RSS MB (weights MB in {name}) | {row['peak_rss_mb']:.0f} "
                  f"({row['weights_mb']:.0f}) | | {row['peak_rss_mb'] / row['weights_mb']:.2f}x weights |")
    print("\nratio: how many times faster we are (>1 = faster), per metric")
    print("vision_ms_per_image: vision tower + projector for all tiles of an image, per input image")
    if mismatched:
        print(f"WARNING: prompt token counts differ ({', '.join(mismatched)}): the two sides do not "
              "run the same prompt, so TTFT and prefill are not comparable")


if __name__ == "__main__":
    main()
