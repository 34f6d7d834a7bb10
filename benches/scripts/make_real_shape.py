#!/usr/bin/env python3
"""Build random-weight checkpoints with the real architecture shapes of published VLMs.

The Hugging Face Hub is not reachable from our machines, but speed depends on shapes, not on
trained values: these folders load and run exactly like the published checkpoints (same config
dialect, tensor names, shapes and processor settings), with variance-preserving random weights
and the test tokenizer (its ids all fit the real vocabulary). They are large and NOT committed.

    python3 benches/scripts/make_real_shape.py qwen2-vl-2b  --out /tmp/real/qwen2-vl-2b
    python3 benches/scripts/make_real_shape.py smolvlm-256m --out /tmp/real/smolvlm-256m

Weights are written in bfloat16 (as published); pass --dtype float32 to store f32.
Needs the pinned environment of tests/scripts/requirements.txt.
"""

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "scripts"))

import torch  # noqa: E402

from make_fixtures import reinit_  # noqa: E402
from make_qwen2vl_fixtures import QWEN2_VL_TEMPLATE, make_tokenizer  # noqa: E402

warnings.filterwarnings("ignore")


def qwen2_vl_2b():
    """Qwen/Qwen2-VL-2B-Instruct's config.json (published dialect)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=151936,
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            tie_word_embeddings=True,
            bos_token_id=151643,
            eos_token_id=151645,
        ),
        vision_config=dict(
            depth=32,
            embed_dim=1280,
            hidden_size=1536,
            num_heads=16,
            mlp_ratio=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=409,
        video_token_id=410,
        vision_start_token_id=407,
        vision_end_token_id=408,
        tie_word_embeddings=True,
    )
    return Qwen2VLForConditionalGeneration, config


ARCHES = {"qwen2-vl-2b": qwen2_vl_2b}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("arch", choices=sorted(ARCHES))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = ap.parse_args()

    cls, config = ARCHES[args.arch]()
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = cls(config).float()
    reinit_(model, 1, token_embed_std=0.02 if config.tie_word_embeddings else 1.0)
    if config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(getattr(torch, args.dtype)).eval()

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    model.save_pretrained(args.out)
    tok, _ = make_tokenizer()
    tok.save_pretrained(args.out)
    (args.out / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_TEMPLATE}) + "\n")
    pre = {
        "min_pixels": 56 * 56,
        "max_pixels": 28 * 28 * 1280,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
    }
    (args.out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e9:.2f} GB, {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params)")


if __name__ == "__main__":
    main()
