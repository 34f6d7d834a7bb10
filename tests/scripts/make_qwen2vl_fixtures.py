#!/usr/bin/env python3
"""Build the tiny Qwen2-VL / Qwen2.5-VL checkpoints and the transformers reference outputs.

Writes (and only writes) these paths under tests/fixtures/:

* `reference/images/video_*.png` - video frames (crops of skimage photographs, sizes that are
  multiples of 28 so that the video resize is the identity in transformers' torchvision video
  processor and in our Pillow-exact one).
* `qwen2-vl-tiny/` - Qwen2-VL (LayerNorm/QuickGELU tower, tied LM head) in the layout of the
  published Qwen/Qwen2-VL-*-Instruct repos: `visual.*` + `model.*` keys, text fields at the top
  level of config.json with `rope_scaling: {"type": "mrope"}`, `preprocessor_config.json` with
  `min_pixels`/`max_pixels`, `video_preprocessor_config.json`, `chat_template.json`.
* `qwen2.5-vl-tiny/` - Qwen2.5-VL (RMSNorm/SwiGLU tower, window attention with one full-attention
  block, untied head) as transformers 5 `save_pretrained` writes it (`text_config` with
  `rope_parameters`, `processor_config.json` with `size: {shortest_edge, longest_edge}`).
* `reference/<model>.safetensors` + `reference/<model>.json` - per case: pixel values and grids of
  images and videos, input ids, 3-D position ids and rope delta, vision tower output (pre-merger
  hidden states and merged features), whole-prompt logits, greedy ids with and without EOS.

The image processors are the Pillow-backed `Qwen2VLImageProcessorPil`; videos go through
`Qwen2VLVideoProcessor` (torchvision) with frames whose resize is the identity.
Deterministic: rerunning reproduces identical files.
Needs: pip install -r tests/scripts/requirements.txt
Usage: python3 tests/scripts/make_qwen2vl_fixtures.py
"""

import json
import shutil
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from make_fixtures import (  # noqa: E402  (shared helpers; importing runs nothing)
    IMG_DIR,
    MIN_MARGIN,
    REF_DIR,
    FIX,
    TOK_DIR,
    fresh_dir,
    reinit_,
    top2_margin,
)
from transformers import (  # noqa: E402
    AutoTokenizer,
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.video_utils import VideoMetadata  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

MODEL_Q1 = "qwen2-vl-tiny"
MODEL_Q2 = "qwen2.5-vl-tiny"
MAX_NEW_TOKENS = 10
EOS_ROW_SCALE = 2.5
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Image token budgets (small, to keep fixtures small); Q2 allows more so that a large image spans
# several attention windows.
Q1_PIXELS = (56 * 56, 28 * 28 * 16)
Q2_PIXELS = (56 * 56, 28 * 28 * 40)
VIDEO_PIXELS = (28 * 28 * 2, 28 * 28 * 16)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def make_tokenizer():
    tok = AutoTokenizer.from_pretrained(TOK_DIR / "chatml")
    tok.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    tok.chat_template = QWEN2_VL_TEMPLATE
    ids = tok.convert_tokens_to_ids(VISION_TOKENS)
    assert ids == [407, 408, 409, 410], ids
    info = {
        "vision_start": 407,
        "vision_end": 408,
        "image_pad": 409,
        "video_pad": 410,
        "bos": tok.convert_tokens_to_ids("<s>"),
        "eos": tok.convert_tokens_to_ids("</s>"),
        "pad": tok.convert_tokens_to_ids("<pad>"),
        "im_end": tok.convert_tokens_to_ids("<|im_end|>"),
    }
    return tok, info


def make_video_frames():
    """Two short clips of 56x84 frames (a pan across a photograph); {name: [paths]}."""
    from skimage import data

    clips = {"pan_astronaut": (data.astronaut(), 3, (140, 60)), "pan_coffee": (data.coffee(), 4, (90, 30))}
    out = {}
    for name, (photo, n, (x0, y0)) in clips.items():
        img = Image.fromarray(photo)
        paths = []
        for k in range(n):
            box = (x0 + 24 * k, y0 + 8 * k, x0 + 24 * k + 252, y0 + 8 * k + 168)
            frame = img.crop(box).resize((84, 56), Image.LANCZOS)
            path = IMG_DIR / f"video_{name}_{k}.png"
            frame.save(path, format="PNG", optimize=True)
            paths.append(path)
        out[name] = paths
    return out


def load_frames(paths):
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def text_config(info, vocab, tie):
    return dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        tie_word_embeddings=tie,
        bos_token_id=info["bos"],
        eos_token_id=info["im_end"],
        pad_token_id=info["pad"],
    )


def config_q1(info, vocab):
    return Qwen2VLConfig(
        text_config=text_config(info, vocab, True),
        vision_config=dict(
            depth=3,
            embed_dim=32,
            hidden_size=64,
            num_heads=4,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=info["image_pad"],
        video_token_id=info["video_pad"],
        vision_start_token_id=info["vision_start"],
        vision_end_token_id=info["vision_end"],
        tie_word_embeddings=True,
    )


def config_q2(info, vocab):
    return Qwen2_5_VLConfig(
        text_config=text_config(info, vocab, False),
        vision_config=dict(
            depth=3,
            hidden_size=32,
            intermediate_size=48,
            num_heads=4,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        ),
        image_token_id=info["image_pad"],
        video_token_id=info["video_pad"],
        vision_start_token_id=info["vision_start"],
        vision_end_token_id=info["vision_end"],
        tie_word_embeddings=False,
    )


def instantiate(cls, config, seed, eos_row):
    torch.manual_seed(seed)
    model = cls(config)
    model.set_attn_implementation("eager")
    model = model.float()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tied = config.tie_word_embeddings
    reinit_(model, seed + 1, token_embed_std=0.25 if tied else 1.0)
    untouched = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not untouched, f"parameters not re-initialised: {untouched}"
    with torch.no_grad():
        model.lm_head.weight[eos_row] *= EOS_ROW_SCALE
    embed = model.model.language_model.embed_tokens.weight
    assert (model.lm_head.weight.data_ptr() == embed.data_ptr()) == tied
    model.eval()
    return model


def make_processor(cls, tok, pixels):
    ip = Qwen2VLImageProcessorPil(min_pixels=pixels[0], max_pixels=pixels[1])
    vp = Qwen2VLVideoProcessor(min_pixels=VIDEO_PIXELS[0], max_pixels=VIDEO_PIXELS[1])
    return cls(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=QWEN2_VL_TEMPLATE)


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def copy_tokenizer(tok, out_dir):
    tmp = out_dir / "_tok"
    tok.save_pretrained(tmp)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tmp / f).exists():
            shutil.copy2(tmp / f, out_dir / f)
    shutil.rmtree(tmp)


def save_q1_published(model, processor, tok, out_dir, gen_cfg):
    """Qwen2-VL the way the published Qwen/Qwen2-VL-2B-Instruct repo looks."""
    fresh_dir(out_dir)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd.pop("lm_head.weight")  # tied
    old = {}
    for k, v in sd.items():
        if k.startswith("model.visual."):
            old["visual." + k[len("model.visual.") :]] = v
        elif k.startswith("model.language_model."):
            old["model." + k[len("model.language_model.") :]] = v
        else:
            raise ValueError(k)
    save_file(dict(sorted(old.items())), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    text = cfg.pop("text_config")
    vision = cfg["vision_config"]
    rope = text.pop("rope_parameters")
    top = {k: v for k, v in text.items() if k not in ("model_type", "layer_types", "dtype")}
    top.update({k: v for k, v in cfg.items() if k not in ("transformers_version", "dtype")})
    top["rope_theta"] = rope["rope_theta"]
    top["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    top["torch_dtype"] = "float32"
    top["architectures"] = ["Qwen2VLForConditionalGeneration"]
    top["transformers_version"] = "4.41.2"
    top["vision_config"] = {
        "depth": vision["depth"],
        "embed_dim": vision["embed_dim"],
        "mlp_ratio": vision["mlp_ratio"],
        "num_heads": vision["num_heads"],
        "in_chans": vision["in_channels"],
        "hidden_size": vision["hidden_size"],
        "patch_size": vision["patch_size"],
        "spatial_merge_size": vision["spatial_merge_size"],
        "spatial_patch_size": vision["patch_size"],
        "temporal_patch_size": vision["temporal_patch_size"],
    }
    (out_dir / "config.json").write_text(json.dumps(dict(sorted(top.items())), indent=2) + "\n")
    gen = {"bos_token_id": gen_cfg.bos_token_id, "eos_token_id": gen_cfg.eos_token_id,
           "pad_token_id": gen_cfg.pad_token_id, "transformers_version": "4.41.2"}
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    ip = processor.image_processor
    pre = {
        "min_pixels": Q1_PIXELS[0],
        "max_pixels": Q1_PIXELS[1],
        "patch_size": ip.patch_size,
        "temporal_patch_size": ip.temporal_patch_size,
        "merge_size": ip.merge_size,
        "image_mean": list(ip.image_mean),
        "image_std": list(ip.image_std),
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
    }
    (out_dir / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    vpre = dict(pre, min_pixels=VIDEO_PIXELS[0], max_pixels=VIDEO_PIXELS[1],
                video_processor_type="Qwen2VLVideoProcessor")
    vpre.pop("image_processor_type")
    (out_dir / "video_preprocessor_config.json").write_text(json.dumps(vpre, indent=2) + "\n")
    (out_dir / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_TEMPLATE}, indent=2) + "\n")
    copy_tokenizer(tok, out_dir)


def save_q2_transformers5(model, processor, out_dir, gen_cfg):
    fresh_dir(out_dir)
    model.generation_config = gen_cfg
    model.save_pretrained(out_dir, save_original_format=False)
    processor.save_pretrained(out_dir)
    keys = json.loads((out_dir / "model.safetensors.index.json").read_text())["weight_map"] if (
        out_dir / "model.safetensors.index.json").exists() else None
    assert keys is None, "expected a single safetensors file"


# --------------------------------------------------------------------------------------------
# Reference computation
# --------------------------------------------------------------------------------------------


def encode(processor, images, videos, prompt):
    """Tokenize as `apply_chat_template(tokenize=True)` does (no second BOS)."""
    bos = processor.tokenizer.bos_token
    add_special = not (bos is not None and prompt.startswith(bos))
    kwargs = {}
    if images:
        kwargs["images"] = images
    if videos:
        kwargs["videos"] = [v["frames"] for v in videos]
        kwargs["video_metadata"] = [
            VideoMetadata(total_num_frames=len(v["frames"]), fps=v["fps"]) if v["fps"] else None for v in videos
        ]
        if all(m is None for m in kwargs["video_metadata"]):
            kwargs.pop("video_metadata")
    return processor(text=[prompt], add_special_tokens=add_special, return_tensors="pt", **kwargs)


def case_inputs(processor, case, clips):
    images = [Image.open(IMG_DIR / f) for f in case["images"]]
    videos = [{"frames": load_frames(clips[v["clip"]]), "fps": v.get("fps")} for v in case.get("videos", [])]
    prompt = processor.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=False)
    return prompt, encode(processor, images, videos, prompt)


def greedy(model, inputs, gen_cfg, eos):
    cfg = GenerationConfig(bos_token_id=gen_cfg.bos_token_id, pad_token_id=gen_cfg.pad_token_id, do_sample=False)
    cfg.eos_token_id = gen_cfg.eos_token_id if eos else None
    saved = model.generation_config
    model.generation_config = cfg
    try:
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, generation_config=cfg)
    finally:
        model.generation_config = saved
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def margins_along(model, inputs, new):
    """Top-1/top-2 logit gaps at every greedy step, by one forward over prompt + answer."""
    ids = inputs["input_ids"]
    full = torch.cat([ids, torch.tensor([new[:-1]])], dim=1)
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    mm = torch.cat([inputs["mm_token_type_ids"], torch.zeros((1, len(new) - 1), dtype=torch.int64)], dim=1)
    lg = model(input_ids=full, mm_token_type_ids=mm, **extra).logits[0]
    n = ids.shape[1]
    return [top2_margin(lg[n - 1 + i]) for i in range(len(new))]


@torch.no_grad()
def choose_seed(name, cls, config, processor, cases, clips, gen_cfg, stop_id, base_seed, tries=200):
    eos_ids = gen_cfg.eos_token_id
    for seed in range(base_seed, base_seed + tries):
        model = instantiate(cls, config, seed, stop_id)
        res = []
        for case in cases:
            _, inputs = case_inputs(processor, case, clips)
            new = greedy(model, inputs, gen_cfg, eos=False)
            bad = any(t in VISION_IDS for t in new)
            first = next((i for i, t in enumerate(new) if t in eos_ids), None)
            res.append((first, -1.0 if bad else min(margins_along(model, inputs, new))))
        stops = [r for r in res if r[0] is not None]
        if stops and len(stops) < len(res) and all(r[0] is None or r[0] >= 1 for r in res) and min(
            r[1] for r in res
        ) >= MIN_MARGIN:
            print(f"[{name}] seed {seed}: first EOS per case {[r[0] for r in res]}")
            return model
    raise SystemExit(f"{name}: no suitable seed in [{base_seed}, {base_seed + tries})")


VISION_IDS = (407, 408, 409, 410)


@torch.no_grad()
def run_cases(name, model, processor, cases, clips, gen_cfg):
    tensors, meta = {}, []
    first_last = None
    visual = model.model.visual
    for ci, case in enumerate(cases, start=1):
        p = f"case{ci}."
        prompt, inputs = case_inputs(processor, case, clips)
        ids = inputs["input_ids"]
        t = {"input_ids": ids[0].to(torch.int64)}
        if "pixel_values" in inputs:
            pv, grid = inputs["pixel_values"], inputs["image_grid_thw"]
            out = visual(pv, grid_thw=grid)
            t.update(pixel_values=pv, image_grid_thw=grid.to(torch.int64),
                     image_hidden=out.last_hidden_state, image_features=out.pooler_output)
            ref = torch.cat(model.get_image_features(pixel_values=pv, image_grid_thw=grid).pooler_output)
            assert torch.equal(ref, out.pooler_output)
        if "pixel_values_videos" in inputs:
            pv, grid = inputs["pixel_values_videos"], inputs["video_grid_thw"]
            out = visual(pv, grid_thw=grid)
            t.update(pixel_values_videos=pv, video_grid_thw=grid.to(torch.int64),
                     video_hidden=out.last_hidden_state, video_features=out.pooler_output)
            if "second_per_grid_ts" in inputs:
                t["second_per_grid_ts"] = inputs["second_per_grid_ts"].to(torch.float32)
        kw = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in inputs}
        if "image_grid_thw" in kw or "video_grid_thw" in kw:
            pos, delta = model.model.get_rope_index(ids, inputs["mm_token_type_ids"], **kw)
        else:
            pos = torch.arange(ids.shape[1])[None, None].expand(3, 1, -1)
            delta = torch.zeros((1, 1), dtype=torch.int64)
        t["position_ids"] = pos[:, 0].to(torch.int64)
        t["rope_delta"] = delta.reshape(1).to(torch.int64)
        logits = model(**inputs).logits[0].float()
        t["logits"] = logits
        g = greedy(model, inputs, gen_cfg, eos=True)
        g_noeos = greedy(model, inputs, gen_cfg, eos=False)
        assert g == g_noeos[: len(g)]
        t["greedy_ids"] = torch.tensor(g, dtype=torch.int64)
        t["greedy_ids_noeos"] = torch.tensor(g_noeos, dtype=torch.int64)
        margins = margins_along(model, inputs, g_noeos)
        last = logits[-1]
        diff = None if first_last is None else float((last - first_last).abs().max())
        first_last = last if first_last is None else first_last
        for k, v in t.items():
            tensors[p + k] = v.contiguous()
        entry = {
            "case": ci,
            "description": case["description"],
            "images": case["images"],
            "videos": [
                {"frames": [str(f.relative_to(IMG_DIR)) for f in clips[v["clip"]]], "fps": v.get("fps")}
                for v in case.get("videos", [])
            ],
            "messages": case["messages"],
            "prompt": prompt,
            "seq_len": int(ids.shape[1]),
            "greedy_text": processor.tokenizer.decode(g, skip_special_tokens=False),
            "greedy_stopped_early": len(g) < MAX_NEW_TOKENS,
            "min_top2_margin_over_greedy_steps": min(margins),
            "last_logits_max_abs_diff_vs_case1": diff,
            "shapes": {k: list(v.shape) for k, v in t.items()},
        }
        meta.append(entry)
        print(f"[{name}] case{ci} ({case['description']}): seq={ids.shape[1]} greedy={g} "
              f"noeos={g_noeos} delta={int(delta)} min_margin={min(margins):.3f} diff_vs_1={diff}")
    return tensors, meta


@torch.no_grad()
def image_sensitivity(name, model, processor, case, other, clips):
    swapped = dict(case, images=[other])
    _, a = case_inputs(processor, case, clips)
    _, b = case_inputs(processor, swapped, clips)
    la, lb = model(**a).logits[0, -1], model(**b).logits[0, -1]
    diff = float((la - lb).abs().max())
    tv = float((torch.softmax(la, -1) - torch.softmax(lb, -1)).abs().sum() / 2)
    print(f"[{name}] image sensitivity {case['images']} -> {other}: max|dlogit|={diff:.3f} TV={tv:.3f}")
    assert diff > 0.5 and tv > 0.02, f"{name}: changing the image barely changes the output"
    return {"swapped_image": other, "last_logits_max_abs_diff": diff, "last_probs_total_variation": tv}


def user(parts, text):
    content = [{"type": k} for k in parts] + [{"type": "text", "text": text}]
    return {"role": "user", "content": content}


def cases_q1():
    return [
        {"description": "one image, not a multiple of 28 (64x44)", "images": ["wide_astronaut.png"],
         "messages": [user(["image"], "What is in the image?")]},
        {"description": "two images of different sizes", "images": ["large_astronaut.png", "tall_chelsea.png"],
         "messages": [user(["image", "image"], "Compare them")]},
        {"description": "a 3-frame video (padded to 4 frames)", "images": [], "videos": [{"clip": "pan_astronaut"}],
         "messages": [user(["video"], "What happens in the video?")]},
        {"description": "second turn with a new image", "images": ["wide_astronaut.png", "tall_chelsea.png"],
         "messages": [user(["image"], "What is in the image?"),
                      {"role": "assistant", "content": [{"type": "text", "text": "A man in a suit."}]},
                      user(["image"], "And in this one?")]},
        {"description": "the same image twice", "images": ["gray_camera.png", "gray_camera.png"],
         "messages": [user(["image", "image"], "Are these the same picture?")]},
        {"description": "text only", "images": [], "messages": [user([], "Describe the picture in one sentence.")]},
    ]


def cases_q2():
    return [
        {"description": "one large image over several attention windows", "images": ["large_astronaut.png"],
         "messages": [user(["image"], "What is in the image?")]},
        {"description": "an image and a video at 3 fps in one message", "images": ["rgba_coffee.png"],
         "videos": [{"clip": "pan_coffee", "fps": 3.0}],
         "messages": [user(["image", "video"], "Compare the picture with the video")]},
        {"description": "two images, one below min_pixels", "images": ["small_rocket.png", "wide_astronaut.png"],
         "messages": [user(["image", "image"], "Compare them")]},
        {"description": "second turn with a new image", "images": ["tall_chelsea.png", "gray_camera.png"],
         "messages": [user(["image"], "What is in the image?"),
                      {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
                      user(["image"], "And in this one?")]},
        {"description": "a video without fps (processor default 24)", "images": [],
         "videos": [{"clip": "pan_coffee"}], "messages": [user(["video"], "What happens in the video?")]},
    ]


def write_reference(name, tensors, meta):
    save_file(tensors, str(REF_DIR / f"{name}.safetensors"), metadata={"format": "pt"})
    (REF_DIR / f"{name}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def build(name, cls, config, proc_cls, pixels, tok, info, cases, clips, seed, save):
    processor = make_processor(proc_cls, tok, pixels)
    gen_cfg = GenerationConfig(bos_token_id=info["bos"], eos_token_id=[info["im_end"], info["eos"]],
                               pad_token_id=info["pad"])
    model = choose_seed(name, cls, config, processor, cases, clips, gen_cfg, info["im_end"], seed)
    out_dir = FIX / name
    save(model, processor, out_dir, gen_cfg)
    tensors, meta_cases = run_cases(name, model, processor, cases, clips, gen_cfg)
    sens = image_sensitivity(name, model, processor, cases[0], "tall_chelsea.png", clips)
    meta = {"model": name, "cases": meta_cases, "image_sensitivity": sens,
            "eos_token_ids": gen_cfg.eos_token_id, "max_new_tokens": MAX_NEW_TOKENS,
            "tolerances_note": "f32; logits compared with max abs diff"}
    write_reference(name, tensors, meta)
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    print(f"[{name}] wrote {out_dir.relative_to(FIX.parent.parent)} ({size} bytes)")


def main():
    tok, info = make_tokenizer()
    vocab = len(tok)
    clips = make_video_frames()
    build(MODEL_Q1, Qwen2VLForConditionalGeneration, config_q1(info, vocab), Qwen2VLProcessor, Q1_PIXELS,
          tok, info, cases_q1(), clips, 100,
          lambda m, p, d, g: save_q1_published(m, p, tok, d, g))
    build(MODEL_Q2, Qwen2_5_VLForConditionalGeneration, config_q2(info, vocab), Qwen2_5_VLProcessor, Q2_PIXELS,
          tok, info, cases_q2(), clips, 200, save_q2_transformers5)


if __name__ == "__main__":
    main()
