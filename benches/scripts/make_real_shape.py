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

Token ids: the checkpoints keep the real vocabulary size (the embedding and head shapes), but
their tokenizer is the test tokenizer, so the config's special ids (image_token_id, bos, eos,
pad) are that tokenizer's ids, not the published ones (e.g. SmolVLM's <image> is 49190 in the
published tokenizer and 404 here). Prompts therefore tokenize to other lengths than with the
real tokenizer; image placeholders count the same.
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
    return Qwen2VLForConditionalGeneration, config, write_qwen2_vl_files


def write_qwen2_vl_files(out, model, dtype):
    tok, _ = make_tokenizer()
    tok.save_pretrained(out)
    (out / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_TEMPLATE}) + "\n")
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
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")


# HuggingFaceTB/SmolVLM-256M-Instruct (Idefics3ForConditionalGeneration, ~256M parameters).
# Sources of the values (the Hub is not reachable; cross-checked in public code):
# - vision tower = google/siglip-base-patch16-512: hidden 768, 12 layers, 12 heads, MLP 3072,
#   patch 16, 512 px, gelu_pytorch_tanh, LayerNorm eps 1e-6, q/k/v/out and fc biases
#   (google-ai-edge/ai-edge-torch ai_edge_torch/generative/examples/smalvlm/image_encoder.py;
#   the model card's base_model list);
# - connector: scale_factor 4, modality_projection 768*16 = 12288 -> 576, no bias; 64 tokens per
#   512 px tile (ai-edge-torch smalvlm/smalvlm.py; the model card: "64 visual tokens to encode
#   image patches of size 512x512"); image_token_id 49190 in the published tokenizer;
# - text model = SmolLM2-135M: Llama, hidden 576, 30 layers, 9 heads, 3 KV heads, head_dim 64,
#   MLP 1536, vocab 49280 (49152 + 128 added tokens), RoPE theta 100000, 8192 positions, RMSNorm
#   1e-5, a separate lm_head (untied: lm_head_share_weight_with_embedding=False in ai-edge-torch
#   smalvlm/text_model.py; 256.5M parameters and ~513 MB in bf16 only with the untied head);
# - preprocessor: splitting on, size.longest_edge 2048, max_image_size.longest_edge 512,
#   resample 1 (LANCZOS), mean/std 0.5, rescale 1/255 (the published preprocessor_config.json
#   quoted in JohnSnowLabs spark-nlp's SmolVLM.scala and in this repo's
#   tests/scripts/idefics3_preprocess_fixtures.py); processor_config.json image_seq_len 64.
# The vision_config keys are the published ones: num_hidden_layers and intermediate_size are not
# written there and come from the class defaults (12 and 3072), as for the real checkpoint.
SMOLVLM_TILE = 512
SMOLVLM_LONGEST_EDGE = 2048
SMOLVLM_SCALE = 4


def smolvlm_256m():
    """HuggingFaceTB/SmolVLM-256M-Instruct (config.json written in the published dialect)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    tok, info = smolvlm_tokenizer()
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_channels=3,
            image_size=SMOLVLM_TILE,
            patch_size=16,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=49280,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
            hidden_act="silu",
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
            tie_word_embeddings=False,
            bos_token_id=info["im_start"],
            eos_token_id=info["eou"],
            pad_token_id=info["pad"],
        ),
        image_token_id=info["image"],
        scale_factor=SMOLVLM_SCALE,
        tie_word_embeddings=False,
    )
    assert max(info.values()) < config.text_config.vocab_size and len(tok) <= config.text_config.vocab_size
    return Idefics3ForConditionalGeneration, config, write_smolvlm_files


def smolvlm_tokenizer():
    """The Idefics3 fixture tokenizer: the chatml test tokenizer plus SmolVLM's added tokens
    (<fake_token_around_image>, <global-img>, <row_r_col_c> up to 6 x 6, <end_of_utterance>),
    BOS <|im_start|>, EOS <end_of_utterance>, SmolVLM's chat template."""
    threads = torch.get_num_threads()
    from make_idefics3_fixtures import make_tokenizer as make_idefics3_tokenizer  # sets 1 thread

    torch.set_num_threads(threads)
    return make_idefics3_tokenizer()


def write_smolvlm_files(out, model, dtype):
    """Published layout: config.json in the transformers 4.4x dialect, flat
    preprocessor_config.json, processor_config.json with image_seq_len, chat_template.json,
    tokenizer.json + tokenizer_config.json, generation_config.json."""
    from make_idefics3_fixtures import SMOLVLM_TEMPLATE

    tok, info = smolvlm_tokenizer()
    cfg = model.config
    text, vision = cfg.text_config, cfg.vision_config
    dtype_name = str(dtype).removeprefix("torch.")
    text_out = {
        "_flash_attn_2_enabled": True,
        "architectures": ["VLlama3ForCausalLM"],
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "head_dim": text.head_dim,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "is_llama_config": True,
        "max_position_embeddings": text.max_position_embeddings,
        "model_type": "llama",
        "neftune_noise_alpha": 0.0,
        "num_attention_heads": text.num_attention_heads,
        "num_hidden_layers": text.num_hidden_layers,
        "num_key_value_heads": text.num_key_value_heads,
        "pad_token_id": text.pad_token_id,  # published: 2, the real tokenizer's <|im_end|>
        "pixel_shuffle_factor": cfg.scale_factor,
        "qk_layer_norms": False,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_interleaved": False,
        "rope_theta": text.rope_parameters["rope_theta"],
        "torch_dtype": dtype_name,
        "use_resampler": False,
        "vocab_size": text.vocab_size,
    }
    assert (vision.num_hidden_layers, vision.intermediate_size) == (12, 3072), "class defaults changed"
    assert (vision.hidden_act, vision.layer_norm_eps) == ("gelu_pytorch_tanh", 1e-6)
    vision_out = {
        "hidden_size": vision.hidden_size,
        "image_size": vision.image_size,
        "max_image_size": {"longest_edge": SMOLVLM_TILE},
        "model_type": "idefics3",
        "num_attention_heads": vision.num_attention_heads,
        "patch_size": vision.patch_size,
        "size": {"longest_edge": SMOLVLM_LONGEST_EDGE},
        "tie_word_embeddings": False,
        "use_base_siglip": False,
    }
    config = {
        "architectures": ["Idefics3ForConditionalGeneration"],
        "image_token_id": cfg.image_token_id,  # published: 49190
        "model_type": "idefics3",
        "pad_token_id": text.pad_token_id,  # published: 128002 (outside the vocabulary)
        "scale_factor": cfg.scale_factor,
        "text_config": text_out,
        "tie_word_embeddings": False,
        "torch_dtype": dtype_name,
        "transformers_version": "4.46.0",
        "use_cache": True,
        "vision_config": vision_out,
        "vocab_size": text.vocab_size,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": text.bos_token_id, "eos_token_id": text.eos_token_id,
           "pad_token_id": text.pad_token_id, "transformers_version": "4.46.0"}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    pre = {
        "do_convert_rgb": True,
        "do_image_splitting": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Idefics3ImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "max_image_size": {"longest_edge": SMOLVLM_TILE},
        "processor_class": "Idefics3Processor",
        "resample": 1,
        "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": SMOLVLM_LONGEST_EDGE},
    }
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    seq_len = (vision.image_size // vision.patch_size) ** 2 // cfg.scale_factor**2
    assert seq_len == 64
    proc = {"image_seq_len": seq_len, "processor_class": "Idefics3Processor"}
    (out / "processor_config.json").write_text(json.dumps(proc, indent=2) + "\n")
    (out / "chat_template.json").write_text(json.dumps({"chat_template": SMOLVLM_TEMPLATE}, indent=2) + "\n")
    tmp = out / "_tok"
    tok.save_pretrained(tmp)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tmp / f, out / f)
    shutil.rmtree(tmp)
    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    tcfg.pop("chat_template", None)  # the template lives in chat_template.json, as published
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2, sort_keys=True) + "\n")


ARCHES = {"qwen2-vl-2b": qwen2_vl_2b, "smolvlm-256m": smolvlm_256m}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("arch", choices=sorted(ARCHES))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = ap.parse_args()

    cls, config, write_files = ARCHES[args.arch]()
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = cls(config).float()
    reinit_(model, 1, token_embed_std=0.02 if config.tie_word_embeddings else 1.0)
    if config.tie_word_embeddings:
        model.tie_weights()
    dtype = getattr(torch, args.dtype)
    model = model.to(dtype).eval()

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    model.save_pretrained(args.out)
    write_files(args.out, model, dtype)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e9:.2f} GB, {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params)")


if __name__ == "__main__":
    main()
