#!/usr/bin/env python3
"""Build the tiny LLaVA checkpoints and the transformers reference outputs used by the Rust tests.

Writes (and only writes) these paths under tests/fixtures/:

* `reference/images/*.png` - small test photographs from `skimage.data`, cropped/downscaled with PIL
  and stored losslessly so that Rust decodes the very same pixels that transformers saw.
* `llava-clip-llama/`  - model A: CLIP vision tower + Llama (GQA, llama3 rope scaling, untied
  lm_head), saved with transformers 5 `save_pretrained(save_original_format=False)`
  ("transformers 5 layout": model.language_model.*, model.vision_tower.*, lm_head.*).
* `llava-siglip-qwen2/` - model B: SigLIP vision tower + Qwen2 (MHA, tied embeddings, two
  concatenated vision feature layers), rewritten into the layout of published llava-hf Hub repos
  (old key names, old config dialect, `preprocessor_config.json`, two safetensors shards + index).
* `reference/<model>.safetensors` + `reference/<model>.json` - per-case inputs and outputs of
  transformers (pixel values, input ids, selected vision states, projector output, full-prompt
  logits, greedy generations with and without EOS stopping).

Everything is deterministic (fixed seeds, fixed inputs); rerunning reproduces identical files.
Needs: pip install -r tests/scripts/requirements.txt   (torch CPU, transformers 5.23, pillow, scikit-image)
Usage: python3 tests/scripts/make_fixtures.py
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoProcessor,
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2Config,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parent.parent.parent
FIX = ROOT / "tests" / "fixtures"
TOK_DIR = FIX / "tokenizer"
REF_DIR = FIX / "reference"
IMG_DIR = REF_DIR / "images"
MODEL_A = "llava-clip-llama"
MODEL_B = "llava-siglip-qwen2"

MAX_NEW_TOKENS = 12
# Token-embedding init std. A (untied lm_head): N(0, 1). B ties lm_head to the embeddings, where
# N(0, 1) gives logits of std ~sqrt(hidden)=8 (one-hot softmax, image-independent argmax), so B
# uses a smaller std to keep the next-token distribution informative.
TOKEN_EMBED_STD_A = 1.0
TOKEN_EMBED_STD_B = 0.25
# The lm_head row of the stop token (A: </s>, B: <|im_end|>; for B it is the tied embedding row)
# is multiplied by this so that greedy decoding reaches EOS within MAX_NEW_TOKENS in some cases.
EOS_ROW_SCALE = 2.5
# Smallest accepted top-1/top-2 logit gap along every greedy path (>> f32 noise of ~1e-5).
MIN_MARGIN = 0.005
torch.set_num_threads(1)  # bit-stable CPU results between runs


# --------------------------------------------------------------------------------------------
# Inputs: tokenizer and images
# --------------------------------------------------------------------------------------------


def ensure_tokenizer():
    ready = TOK_DIR / "READY"
    if not ready.exists():
        script = ROOT / "tests" / "scripts" / "make_tokenizer.py"
        if not script.exists():
            sys.exit(f"missing {ready} and {script}: cannot build the tokenizer fixtures")
        print(f"[tokenizer] {ready} missing, running {script.relative_to(ROOT)}")
        subprocess.run([sys.executable, str(script)], check=True, cwd=ROOT)
    info = json.loads(ready.read_text())
    for sub in ("llava", "chatml"):
        if not (TOK_DIR / sub / "tokenizer.json").exists():
            sys.exit(f"tokenizer fixture {TOK_DIR / sub} is incomplete")
    return info


def make_images():
    """Crop/downscale skimage photographs into small PNGs; return {name: path}."""
    from skimage import data

    IMG_DIR.mkdir(parents=True, exist_ok=True)
    out = {}

    def save(name, img):
        path = IMG_DIR / name
        img.save(path, format="PNG", optimize=True)
        size = path.stat().st_size
        assert size < 40_000, f"{name} is {size} bytes"
        out[name] = path
        print(f"[images] {name}: {img.mode} {img.size[0]}x{img.size[1]} ({size} bytes)")

    # wider than tall (RGB): astronaut, upper body, 64x44
    astro = Image.fromarray(data.astronaut())  # 512x512 RGB
    save("wide_astronaut.png", astro.crop((0, 40, 512, 392)).resize((64, 44), Image.LANCZOS))
    # taller than wide (RGB): chelsea the cat, 36x56
    cat = Image.fromarray(data.chelsea())  # 451x300 RGB
    save("tall_chelsea.png", cat.crop((60, 0, 253, 300)).resize((36, 56), Image.LANCZOS))
    # grayscale ("L" mode): cameraman, 48x40
    cam = Image.fromarray(data.camera())  # 512x512 uint8
    assert cam.mode == "L"
    save("gray_camera.png", cam.crop((0, 40, 512, 467)).resize((48, 40), Image.LANCZOS))
    # RGBA with varying alpha: coffee, 60x40, alpha is a diagonal ramp 0..255 plus a hole
    coffee = Image.fromarray(data.coffee()).resize((60, 40), Image.LANCZOS)  # 600x400 RGB
    yy, xx = np.mgrid[0:40, 0:60]
    alpha = np.clip((xx / 59.0 * 0.7 + yy / 39.0 * 0.3) * 255.0, 0, 255).round().astype(np.uint8)
    alpha[15:25, 25:35] = 0  # fully transparent block
    rgba = coffee.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha, mode="L"))
    save("rgba_coffee.png", rgba)
    # smaller than the crop size of both models: rocket, 20x14
    rocket = Image.fromarray(data.rocket())  # 427x640 RGB
    save("small_rocket.png", rocket.crop((0, 100, 640, 548)).resize((20, 14), Image.LANCZOS))
    # much larger: astronaut 300x200, posterized a little so the PNG stays small
    big = astro.crop((0, 0, 512, 341)).resize((300, 200), Image.LANCZOS)
    big = Image.eval(big, lambda v: (v // 16) * 16 + 8)
    save("large_astronaut.png", big)
    return out


# --------------------------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------------------------


def reinit_(model, seed, token_embed_std=1.0):
    """Variance-preserving random init (transformers' std 0.02 gives near-uniform logits)."""
    gen = torch.Generator().manual_seed(seed)

    def normal(t, std, mean=0.0):
        with torch.no_grad():
            t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float32) * std + mean)

    seen = set()
    modules = sorted(model.named_modules(), key=lambda kv: kv[0])
    # embeddings first, so that a tied lm_head keeps the embedding init N(0, 1)
    modules = [m for m in modules if isinstance(m[1], torch.nn.Embedding)] + [
        m for m in modules if not isinstance(m[1], torch.nn.Embedding)
    ]
    for name, module in modules:
        cls = type(module).__name__
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)):
            w = module.weight
            if id(w) in seen:
                continue
            seen.add(id(w))
            fan_in = w[0].numel()
            normal(w, fan_in**-0.5)
            if module.bias is not None:
                normal(module.bias, 0.02)
        elif isinstance(module, torch.nn.Embedding):
            if id(module.weight) in seen:
                continue
            seen.add(id(module.weight))
            std = 0.5 if name.endswith("position_embedding") else token_embed_std
            normal(module.weight, std)
        elif isinstance(module, torch.nn.LayerNorm) or cls.endswith("RMSNorm"):
            normal(module.weight, 0.1, mean=1.0)
            if getattr(module, "bias", None) is not None:
                normal(module.bias, 0.1)
        elif cls == "CLIPVisionEmbeddings":
            normal(module.class_embedding, 0.5)
    return seen


def build_model_a(tok_info, vocab):
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_channels=3,
        image_size=28,
        patch_size=7,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        hidden_act="silu",
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        tie_word_embeddings=False,
        bos_token_id=tok_info["bos"],
        eos_token_id=tok_info["eos"],
        pad_token_id=tok_info["pad"],
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok_info["image"],
        image_seq_length=16,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    return config


def build_model_b(tok_info, vocab):
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_channels=3,
        image_size=30,
        patch_size=6,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        hidden_act="silu",
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False,
        tie_word_embeddings=True,
        bos_token_id=tok_info["bos"],
        eos_token_id=tok_info["im_end"],
        pad_token_id=tok_info["pad"],
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok_info["image"],
        image_seq_length=25,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=[-3, -1],
        multimodal_projector_bias=False,
        tie_word_embeddings=True,
    )
    return config


def instantiate(config, seed, token_embed_std=1.0, eos_rows=(), eos_row_scale=1.0):
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.set_attn_implementation("eager")
    model = model.float()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reinit_(model, seed + 1, token_embed_std)
    untouched = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not untouched, f"parameters not re-initialised: {untouched}"
    with torch.no_grad():
        for row in eos_rows:  # make EOS reachable by greedy decoding within a few tokens
            model.lm_head.weight[row] *= eos_row_scale
    if config.tie_word_embeddings:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    else:
        assert model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr()
    model.eval()
    return model


def make_processor_a(tok_dir):
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    ip = CLIPImageProcessorPil(
        size={"shortest_edge": 28},
        crop_size={"height": 28, "width": 28},
        resample=3,  # bicubic
        do_center_crop=True,
    )
    return LlavaProcessor(
        image_processor=ip,
        tokenizer=tokenizer,
        patch_size=7,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )


def make_processor_b(tok_dir):
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    ip = SiglipImageProcessorPil(size={"height": 30, "width": 30}, resample=3)
    return LlavaProcessor(
        image_processor=ip,
        tokenizer=tokenizer,
        patch_size=6,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=tokenizer.chat_template,
    )


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def fresh_dir(path):
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def save_model_a(model, processor, out_dir, gen_cfg):
    fresh_dir(out_dir)
    model.generation_config = gen_cfg
    # transformers 5.23's save_pretrained defaults to save_original_format=True, which reverts the
    # checkpoint key names to the legacy layout (language_model.model.*, language_model.lm_head.*,
    # vision_tower.*, multi_modal_projector.*). Model B already covers that layout, so A is saved with
    # the in-memory transformers-5 names (model.language_model.*, model.vision_tower.*, lm_head.*).
    model.save_pretrained(out_dir, save_original_format=False)
    processor.save_pretrained(out_dir)
    with open(out_dir / "model.safetensors", "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        keys = [k for k in json.loads(fh.read(n)) if k != "__metadata__"]
    assert "lm_head.weight" in keys and any(k.startswith("model.language_model.") for k in keys), keys


def to_old_dialect(cfg: dict) -> dict:
    """transformers-5 config dict -> the dialect written by transformers 4.4x (Hub llava-hf repos)."""
    cfg = json.loads(json.dumps(cfg))
    out = {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_seq_length": cfg["image_seq_length"],
        "image_token_index": cfg.get("image_token_index", cfg.get("image_token_id")),
        "model_type": "llava",
        "multimodal_projector_bias": cfg["multimodal_projector_bias"],
        "projector_hidden_act": cfg["projector_hidden_act"],
    }
    text = cfg["text_config"]
    rope = text.pop("rope_parameters")
    assert rope["rope_type"] == "default"
    text["rope_theta"] = rope["rope_theta"]
    text["rope_scaling"] = None
    text.pop("dtype", None)
    text["torch_dtype"] = "float32"
    # drop transformers-5-only expansions and PreTrainedConfig boilerplate that published configs omit
    boilerplate = (
        "layer_types", "_name_or_path", "architectures", "chunk_size_feed_forward", "id2label", "label2id",
        "is_encoder_decoder", "output_attentions", "output_hidden_states", "problem_type", "return_dict",
    )
    for key in boilerplate:
        text.pop(key, None)
    # older dialect: tie_word_embeddings lives only in text_config
    text["tie_word_embeddings"] = True
    out["text_config"] = dict(sorted(text.items()))
    out["torch_dtype"] = "float32"
    out["transformers_version"] = "4.45.0"
    vision = cfg["vision_config"]
    vision.pop("dtype", None)
    for key in boilerplate:
        vision.pop(key, None)
    out["vision_config"] = dict(sorted(vision.items()))
    out["vision_feature_layer"] = cfg["vision_feature_layer"]
    out["vision_feature_select_strategy"] = cfg["vision_feature_select_strategy"]
    return out



def encode(processor, images, prompt):
    """Tokenize like `processor.apply_chat_template(..., tokenize=True)` in transformers 5: the
    tokenizer's own special tokens are skipped when the rendered prompt already starts with BOS,
    so BOS is never doubled (a plain `processor(text=prompt)` call would add a second one)."""
    bos = processor.tokenizer.bos_token
    add_special = not (bos is not None and prompt.startswith(bos))
    return processor(images=images, text=prompt, add_special_tokens=add_special, return_tensors="pt")


def rename_key_old_layout(key: str):
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model.") :]
    if key.startswith("lm_head."):
        return "language_model." + key
    if key.startswith("model.vision_tower."):
        # Published llava-hf repos keep the CLIP/SigLIP wrapper's `vision_model.` level.
        return "vision_tower.vision_model." + key[len("model.vision_tower.") :]
    if key.startswith("model.multi_modal_projector."):
        return key[len("model.") :]
    raise ValueError(f"unexpected key {key}")


def save_model_b(model, processor, out_dir, gen_cfg):
    """Write B the way published llava-hf Hub repos look (written by transformers 4.4x)."""
    fresh_dir(out_dir)
    # 1. weights: old key names, lm_head omitted (tied), two shards + index
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd.pop("lm_head.weight")  # tied to the input embeddings
    old = {rename_key_old_layout(k): v for k, v in sd.items()}
    keys = sorted(old)
    # split: the language model embeddings + everything sorting before them in shard 1 ...
    split = len(keys) // 2
    shards = [keys[:split], keys[split:]]
    names = [f"model-0000{i + 1}-of-00002.safetensors" for i in range(2)]
    weight_map = {}
    total = 0
    for fname, shard_keys in zip(names, shards):
        save_file({k: old[k] for k in shard_keys}, str(out_dir / fname), metadata={"format": "pt"})
        for k in shard_keys:
            weight_map[k] = fname
            total += old[k].numel() * old[k].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    # 2. config in the old dialect
    old_cfg = to_old_dialect(model.config.to_dict())
    (out_dir / "config.json").write_text(json.dumps(old_cfg, indent=2) + "\n")
    # 3. generation config (old style carries transformers_version too)
    gen = {k: v for k, v in gen_cfg.to_dict().items() if k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    gen["transformers_version"] = "4.45.0"
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    # 4. processor: image processor at the top level of preprocessor_config.json, processor-only
    #    keys in a small processor_config.json, template in chat_template.json, tokenizer files
    ip = processor.image_processor.to_dict()
    ip["image_processor_type"] = "SiglipImageProcessor"
    ip["processor_class"] = "LlavaProcessor"
    (out_dir / "preprocessor_config.json").write_text(json.dumps(dict(sorted(ip.items())), indent=2) + "\n")
    proc_cfg = {
        "image_token": processor.image_token,
        "num_additional_image_tokens": processor.num_additional_image_tokens,
        "patch_size": processor.patch_size,
        "processor_class": "LlavaProcessor",
        "vision_feature_select_strategy": processor.vision_feature_select_strategy,
    }
    (out_dir / "processor_config.json").write_text(json.dumps(proc_cfg, indent=2) + "\n")
    (out_dir / "chat_template.json").write_text(
        json.dumps({"chat_template": processor.chat_template}, indent=2) + "\n"
    )
    src = TOK_DIR / "chatml"
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copy2(f, out_dir / f.name)


# --------------------------------------------------------------------------------------------
# Reference computation
# --------------------------------------------------------------------------------------------


def select_vision(model, pixel_values):
    """Replicates LlavaModel.get_image_features' layer selection from the full hidden states."""
    cfg = model.config
    out = model.model.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
    hs = out.hidden_states
    layers = cfg.vision_feature_layer
    if isinstance(layers, int):
        layers = [layers]
    pool = [hs[i] for i in layers]
    if cfg.vision_feature_select_strategy == "default":
        pool = [h[:, 1:] for h in pool]
    return torch.cat(pool, dim=-1), len(hs)


def greedy_manual(model, inputs, steps, eos_ids):
    """Greedy decoding by full re-forward of the whole sequence each step (no KV cache)."""
    ids = inputs["input_ids"]
    new = []
    for _ in range(steps):
        logits = model(
            input_ids=ids, pixel_values=inputs["pixel_values"], attention_mask=torch.ones_like(ids)
        ).logits
        nxt = int(logits[0, -1].argmax())
        new.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        if eos_ids is not None and nxt in eos_ids:
            break
    return new


def top2_margin(logits_row):
    top = torch.topk(logits_row, 2).values
    return float(top[0] - top[1])


def generate_noeos(model, inputs, gen_cfg):
    """Greedy generate() with EOS disabled (always MAX_NEW_TOKENS new tokens, logits untouched).
    generate() fills the unset (None) fields of the passed config from model.generation_config,
    so the model's own generation config must not carry an EOS during the call either."""
    cfg = GenerationConfig(bos_token_id=gen_cfg.bos_token_id, pad_token_id=gen_cfg.pad_token_id, do_sample=False)
    cfg.eos_token_id = None
    saved = model.generation_config
    model.generation_config = cfg
    try:
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, generation_config=cfg)
    finally:
        model.generation_config = saved
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert len(new) == MAX_NEW_TOKENS, new
    return new


@torch.no_grad()
def probe(model, processor, cases, eos_ids):
    """Greedy (no EOS stop) per case: (new ids, index of the first EOS or None, min top-2 margin)."""
    res = []
    for case in cases:
        images = [Image.open(IMG_DIR / f) for f in case["images"]]
        prompt = processor.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=False)
        inputs = encode(processor, images, prompt)
        n = inputs["input_ids"].shape[1]
        new = torch.tensor(generate_noeos(model, inputs, GenerationConfig(pad_token_id=0)))
        if bool((new == model.config.image_token_id).any()):
            res.append((new.tolist(), None, -1.0))  # generated <image>: rejected (see choose_seed)
            continue
        full = torch.cat([inputs["input_ids"], new[None, :-1]], dim=1)
        lg = model(input_ids=full, pixel_values=inputs["pixel_values"]).logits[0, n - 1 :]
        margin = min(top2_margin(row) for row in lg)
        new = new.tolist()
        first = next((i for i, t in enumerate(new) if t in eos_ids), None)
        res.append((new, first, margin))
    return res


def choose_seed(name, config, processor, cases, eos_ids, stop_id, base_seed, token_embed_std, tries=300):
    """Deterministic search for the first seed whose greedy generations exercise EOS handling:
    at least one case stops on `stop_id` after >= 2 tokens, at least one case never emits an EOS,
    every greedy step has a top-1/top-2 logit margin >= MIN_MARGIN (robust against f32 noise), and no
    generated token is the image placeholder (which a cache-free re-forward could not replay)."""
    for seed in range(base_seed, base_seed + tries):
        model = instantiate(config, seed, token_embed_std, [stop_id], EOS_ROW_SCALE)
        res = probe(model, processor, cases, eos_ids)
        stops = [r for r in res if r[1] is not None]
        ok = (
            any(r[1] >= 2 and r[0][r[1]] == stop_id for r in stops)
            and len(stops) < len(res)
            and all(r[1] is None or r[1] >= 1 for r in res)
            and min(r[2] for r in res) >= MIN_MARGIN
        )
        if ok:
            print(f"[{name}] seed {seed}: first EOS index per case {[r[1] for r in res]}")
            return seed, model
    raise SystemExit(f"{name}: no suitable seed in [{base_seed}, {base_seed + tries})")


@torch.no_grad()
def run_cases(name, model, processor, cases, gen_cfg):
    tensors = {}
    meta_cases = []
    eos_ids = gen_cfg.eos_token_id
    eos_ids = eos_ids if isinstance(eos_ids, list) else [eos_ids]
    vocab = model.config.text_config.vocab_size
    first_last_logits = None
    for ci, case in enumerate(cases, start=1):
        pfx = f"case{ci}."
        images = [Image.open(IMG_DIR / f) for f in case["images"]]  # not pre-converted
        modes = [im.mode for im in images]
        sizes = [list(im.size) for im in images]
        prompt = processor.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=False)
        inputs = encode(processor, images, prompt)
        pv = inputs["pixel_values"]
        ids = inputs["input_ids"]
        assert pv.dtype == torch.float32 and ids.shape[0] == 1
        n_img_tok = int((ids == model.config.image_token_id).sum())

        selected, n_hidden = select_vision(model, pv)
        feats = model.model.multi_modal_projector(selected)
        ref = model.get_image_features(pixel_values=pv)
        ref_feats = torch.stack(list(ref.pooler_output))
        assert torch.equal(ref_feats, feats), f"{name} case{ci}: get_image_features mismatch"
        assert n_img_tok == feats.shape[0] * feats.shape[1]

        out = model(**inputs)
        logits = out.logits[0].float()
        assert torch.equal(out.image_hidden_states, feats.reshape(-1, feats.shape[-1]))
        probs = torch.softmax(logits[-1], dim=-1)
        pmax = float(probs.max())
        assert pmax > 5.0 / vocab, f"{name} case{ci}: near-uniform logits (max prob {pmax})"

        gen = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, generation_config=gen_cfg)
        greedy = gen[0, ids.shape[1] :].tolist()
        greedy_noeos = generate_noeos(model, inputs, gen_cfg)
        assert len(greedy_noeos) == MAX_NEW_TOKENS, greedy_noeos
        stopped_early = len(greedy) < MAX_NEW_TOKENS
        if stopped_early:
            assert greedy[-1] in eos_ids and greedy == greedy_noeos[: len(greedy)]
        else:
            assert greedy == greedy_noeos
        # independent check: full re-forward greedy without cache
        manual = greedy_manual(model, inputs, MAX_NEW_TOKENS, None)
        assert manual == greedy_noeos, f"{name} case{ci}: generate {greedy_noeos} != manual {manual}"
        first_eos = next((i for i, t in enumerate(greedy_noeos) if t in eos_ids), None)

        tensors[pfx + "pixel_values"] = pv.contiguous()
        tensors[pfx + "input_ids"] = ids[0].to(torch.int64).contiguous()
        tensors[pfx + "vision_selected"] = selected.contiguous()
        tensors[pfx + "image_features"] = feats.contiguous()
        tensors[pfx + "logits"] = logits.contiguous()
        tensors[pfx + "greedy_ids"] = torch.tensor(greedy, dtype=torch.int64)
        tensors[pfx + "greedy_ids_noeos"] = torch.tensor(greedy_noeos, dtype=torch.int64)

        last = logits[-1]
        if first_last_logits is None:
            first_last_logits = last
            diff = None
        else:
            diff = float((last - first_last_logits).abs().max())
        entry = {
            "case": ci,
            "description": case["description"],
            "images": case["images"],
            "image_modes": modes,
            "image_sizes_wh": sizes,
            "messages": case["messages"],
            "prompt": prompt,
            "seq_len": int(ids.shape[1]),
            # the LLaVA template renders bos_token itself and the tokenizer adds one more: HF feeds both
            "starts_with_double_bos": ids[0, :2].tolist() == [gen_cfg.bos_token_id] * 2,
            "num_image_tokens": n_img_tok,
            "greedy_text": processor.tokenizer.decode(greedy, skip_special_tokens=False),
            "greedy_noeos_text": processor.tokenizer.decode(greedy_noeos, skip_special_tokens=False),
            "greedy_stopped_early": stopped_early,
            "first_eos_index_in_noeos": first_eos,
            "last_pos_max_prob": pmax,
            "last_pos_top2_margin": top2_margin(last),
            "min_top2_margin_over_greedy_steps": None,  # filled below
            "last_logits_max_abs_diff_vs_case1": diff,
            "last_logits_differ_from_case1": (diff is not None and diff > 1e-3),
            "shapes": {k[len(pfx) :]: list(v.shape) for k, v in tensors.items() if k.startswith(pfx)},
        }
        # smallest top-1/top-2 logit margin along the no-EOS greedy path (robustness of greedy ids)
        full = torch.cat([ids, torch.tensor([greedy_noeos[:-1]])], dim=1)
        lg = model(input_ids=full, pixel_values=pv, attention_mask=torch.ones_like(full)).logits[0]
        margins = [top2_margin(lg[ids.shape[1] - 1 + i]) for i in range(MAX_NEW_TOKENS)]
        entry["min_top2_margin_over_greedy_steps"] = min(margins)
        meta_cases.append(entry)
        print(
            f"[{name}] case{ci} ({case['description']}): seq={ids.shape[1]} img_tok={n_img_tok} "
            f"pv={list(pv.shape)} maxprob={pmax:.3f} (1/V={1 / vocab:.4f}) greedy={greedy} "
            f"stopped_early={stopped_early} noeos={greedy_noeos} diff_vs_case1={diff} "
            f"min_margin={min(margins):.3f}"
        )
    return tensors, meta_cases


@torch.no_grad()
def image_sensitivity(name, model, processor, case, other_image):
    """Same prompt, different image -> the logits must change noticeably."""
    prompt = processor.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=False)
    a = encode(processor, [Image.open(IMG_DIR / f) for f in case["images"]], prompt)
    b = encode(processor, [Image.open(IMG_DIR / other_image)], prompt)
    assert torch.equal(a["input_ids"], b["input_ids"])
    la = model(**a).logits[0, -1]
    lb = model(**b).logits[0, -1]
    diff = float((la - lb).abs().max())
    pa, pb = torch.softmax(la, -1), torch.softmax(lb, -1)
    tv = float((pa - pb).abs().sum() / 2)
    print(f"[{name}] image sensitivity ({case['images']} -> {other_image}): max|dlogit|={diff:.3f} TV={tv:.3f}")
    assert diff > 0.5 and tv > 0.02, f"{name}: changing the image barely changes the output ({diff}, {tv})"
    return {"swapped_image": other_image, "last_logits_max_abs_diff": diff, "last_probs_total_variation": tv}


def msg_user(n_images, text):
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


def cases_a():
    return [
        {
            "description": "one wide RGB image + question",
            "images": ["wide_astronaut.png"],
            "messages": [msg_user(1, "What is in the image?")],
        },
        {
            "description": "two images of different aspect ratio (wide + tall) in one user message",
            "images": ["wide_astronaut.png", "tall_chelsea.png"],
            "messages": [msg_user(2, "Compare the two images.")],
        },
        {
            "description": "multi-turn: user with large image, assistant answer, user follow-up",
            "images": ["large_astronaut.png"],
            "messages": [
                msg_user(1, "Describe the picture in one sentence."),
                {"role": "assistant", "content": [{"type": "text", "text": "A man is standing in front of a flag."}]},
                {"role": "user", "content": [{"type": "text", "text": "What color is the flag?"}]},
            ],
        },
        {
            "description": "grayscale (L mode) image",
            "images": ["gray_camera.png"],
            "messages": [msg_user(1, "Is there a person in the image?")],
        },
        {
            "description": "RGBA image with varying alpha (composited onto white by the processor)",
            "images": ["rgba_coffee.png"],
            "messages": [msg_user(1, "What is on the table?")],
        },
    ]


def cases_b():
    return [
        {
            "description": "one tall RGB image + question",
            "images": ["tall_chelsea.png"],
            "messages": [msg_user(1, "What is in the image?")],
        },
        {
            "description": "two images of different aspect ratio (large 3:2 + tall) in one user message",
            "images": ["large_astronaut.png", "tall_chelsea.png"],
            "messages": [msg_user(2, "Compare the two images.")],
        },
        {
            "description": "multi-turn with system prompt: user with wide image, assistant answer, user follow-up",
            "images": ["wide_astronaut.png"],
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
                msg_user(1, "Describe the picture in one sentence."),
                {"role": "assistant", "content": [{"type": "text", "text": "A man is standing in front of a flag."}]},
                {"role": "user", "content": [{"type": "text", "text": "How many people are there?"}]},
            ],
        },
        {
            "description": "image smaller than the model input (20x14, upscaled by the processor)",
            "images": ["small_rocket.png"],
            "messages": [msg_user(1, "What is in the image?")],
        },
    ]


def config_summary(model, processor, gen_cfg, layout):
    cfg = model.config
    v, t = cfg.vision_config, cfg.text_config
    patches = (v.image_size // v.patch_size) ** 2
    return {
        "layout": layout,
        "model_type": "llava",
        "image_token_id": cfg.image_token_id,
        "image_tokens_per_image": patches + (1 if v.model_type == "clip_vision_model" else 0)
        - (1 if cfg.vision_feature_select_strategy == "default" else 0),
        "vision_feature_layer": cfg.vision_feature_layer,
        "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
        "projector_hidden_act": cfg.projector_hidden_act,
        "multimodal_projector_bias": cfg.multimodal_projector_bias,
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "vision": {
            "model_type": v.model_type,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_hidden_layers,
            "num_attention_heads": v.num_attention_heads,
            "hidden_act": v.hidden_act,
            "layer_norm_eps": v.layer_norm_eps,
            "num_positions": patches + (1 if v.model_type == "clip_vision_model" else 0),
        },
        "text": {
            "model_type": t.model_type,
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "head_dim": getattr(t, "head_dim", t.hidden_size // t.num_attention_heads),
            "rms_norm_eps": t.rms_norm_eps,
            "rope_parameters": dict(t.rope_parameters),
            "hidden_act": t.hidden_act,
        },
        "processor": {
            "image_processor": type(processor.image_processor).__name__,
            "patch_size": processor.patch_size,
            "num_additional_image_tokens": processor.num_additional_image_tokens,
            "vision_feature_select_strategy": processor.vision_feature_select_strategy,
            "image_processor_config": processor.image_processor.to_dict(),
        },
        "generation": {
            "eos_token_id": gen_cfg.eos_token_id,
            "bos_token_id": gen_cfg.bos_token_id,
            "pad_token_id": gen_cfg.pad_token_id,
            "max_new_tokens": MAX_NEW_TOKENS,
            "do_sample": False,
        },
    }


TOLERANCE_NOTES = {
    "pixel_values": "PIL backend: convert_to_rgb (RGBA alpha-composited onto white with PIL.Image.alpha_composite, "
    "L -> RGB replicate), PIL bicubic resize on uint8, then float rescale/normalize. A bit-exact port of PIL's "
    "resize gives |diff| <= 1e-6; an approximate bicubic will differ by up to a few 1/255 steps / std.",
    "vision_selected": "f32, eager attention: expect max |diff| <= 1e-4 given identical pixel_values.",
    "image_features": "f32: expect max |diff| <= 1e-4.",
    "logits": "f32 full-prompt forward: expect max |diff| <= 1e-3 (typically ~1e-5).",
    "greedy_ids": "exact. Each case records min_top2_margin_over_greedy_steps; argmax ties are not an issue "
    "when it is >> 1e-3. greedy_ids includes the EOS token when generation stopped on it.",
    "greedy_ids_noeos": "exact; same greedy decoding with eos_token_id=None (always MAX_NEW_TOKENS tokens). "
    "Verified equal to a cache-free full re-forward argmax loop.",
}


def init_notes(seed, token_embed_std):
    return {
        "seed": seed,
        "scheme": "Linear/Conv weight N(0, 1/fan_in), bias N(0, 0.02); token embeddings N(0, s); "
        "vision position embeddings and CLIP class_embedding N(0, 0.5); norm weight 1+N(0, 0.1), norm bias N(0, 0.1)",
        "token_embedding_std": token_embed_std,
        "seed_selection": "first seed >= base whose greedy runs stop on EOS in some (not all) cases and whose "
        "greedy top-1/top-2 logit margins are all >= 0.02",
    }


def write_reference(name, tensors, meta):
    REF_DIR.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(REF_DIR / f"{name}.safetensors"), metadata={"format": "pt"})
    (REF_DIR / f"{name}.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


@torch.no_grad()
def verify_reload(out_dir, model, processor, tensors, cases, backend="pil"):
    """Load the saved folder back with transformers 5 and compare against the in-memory model."""
    m2 = LlavaForConditionalGeneration.from_pretrained(out_dir, attn_implementation="eager", dtype=torch.float32)
    m2.eval()
    sd1 = model.state_dict()
    sd2 = m2.state_dict()
    assert sorted(sd1) == sorted(sd2), set(sd1) ^ set(sd2)
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), f"weight {k} differs after reload"
    assert bool(m2.config.tie_word_embeddings) == bool(model.config.tie_word_embeddings)
    p2 = AutoProcessor.from_pretrained(out_dir, backend=backend)
    assert type(p2.image_processor).__name__ == type(processor.image_processor).__name__, type(p2.image_processor)
    for ci, case in enumerate(cases, start=1):
        images = [Image.open(IMG_DIR / f) for f in case["images"]]
        prompt = p2.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=False)
        inp = encode(p2, images, prompt)
        assert torch.equal(inp["input_ids"][0], tensors[f"case{ci}.input_ids"]), f"case{ci} ids differ on reload"
        assert torch.equal(inp["pixel_values"], tensors[f"case{ci}.pixel_values"]), f"case{ci} pixels differ"
        logits = m2(**inp).logits[0]
        assert torch.equal(logits, tensors[f"case{ci}.logits"]), f"case{ci} logits differ on reload"
    gc = m2.generation_config
    print(f"[reload] {out_dir.name}: weights, processor, input ids, pixel values and logits identical; "
          f"generation eos={gc.eos_token_id}")
    return m2, p2


def main():
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    tok_info = ensure_tokenizer()
    make_images()

    # ---------------------------------------------------------------- model A
    proc_a = make_processor_a(TOK_DIR / "llava")
    vocab = len(proc_a.tokenizer)
    assert vocab == tok_info["vocab_size"], (vocab, tok_info)
    cfg_a = build_model_a(tok_info, vocab)
    seed_a, model_a = choose_seed(
        MODEL_A, cfg_a, proc_a, cases_a(), [tok_info["eos"]], tok_info["eos"], 1000, TOKEN_EMBED_STD_A
    )
    gen_a = GenerationConfig(
        bos_token_id=tok_info["bos"], eos_token_id=tok_info["eos"], pad_token_id=tok_info["pad"]
    )
    model_a.generation_config = gen_a
    tensors_a, meta_cases_a = run_cases(MODEL_A, model_a, proc_a, cases_a(), gen_a)
    sens_a = image_sensitivity(MODEL_A, model_a, proc_a, cases_a()[0], "tall_chelsea.png")
    out_a = FIX / MODEL_A
    save_model_a(model_a, proc_a, out_a, gen_a)
    verify_reload(out_a, model_a, proc_a, tensors_a, cases_a())
    meta_a = {
        "model": MODEL_A,
        "generated_by": "tests/scripts/make_fixtures.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "attn_implementation": "eager",
        "dtype": "float32",
        "config": config_summary(model_a, proc_a, gen_a, "transformers-5 save_pretrained(save_original_format=False)"),
        "init": init_notes(seed_a, TOKEN_EMBED_STD_A),
        "tolerances": TOLERANCE_NOTES,
        "image_sensitivity_check": sens_a,
        "tensor_name_pattern": "case<N>.<name>",
        "cases": meta_cases_a,
    }
    write_reference(MODEL_A, tensors_a, meta_a)

    # ---------------------------------------------------------------- model B
    proc_b = make_processor_b(TOK_DIR / "chatml")
    assert len(proc_b.tokenizer) == vocab
    cfg_b = build_model_b(tok_info, vocab)
    seed_b, model_b = choose_seed(
        MODEL_B, cfg_b, proc_b, cases_b(), [tok_info["eos"], tok_info["im_end"]], tok_info["im_end"], 2000,
        TOKEN_EMBED_STD_B,
    )
    gen_b = GenerationConfig(
        bos_token_id=tok_info["bos"],
        eos_token_id=[tok_info["eos"], tok_info["im_end"]],
        pad_token_id=tok_info["pad"],
    )
    model_b.generation_config = gen_b
    tensors_b, meta_cases_b = run_cases(MODEL_B, model_b, proc_b, cases_b(), gen_b)
    sens_b = image_sensitivity(MODEL_B, model_b, proc_b, cases_b()[0], "wide_astronaut.png")
    out_b = FIX / MODEL_B
    save_model_b(model_b, proc_b, out_b, gen_b)
    m2, _ = verify_reload(out_b, model_b, proc_b, tensors_b, cases_b())
    assert m2.generation_config.eos_token_id == gen_b.eos_token_id
    # the torchvision backend (AutoProcessor's default) is NOT what the references use
    p_tv = AutoProcessor.from_pretrained(out_b)
    tv_diff = 0.0
    for case in cases_b():
        ims = [Image.open(IMG_DIR / f) for f in case["images"]]
        pv_tv = p_tv.image_processor(ims, return_tensors="pt")["pixel_values"]
        pv_pil = proc_b.image_processor(ims, return_tensors="pt")["pixel_values"]
        tv_diff = max(tv_diff, float((pv_tv - pv_pil).abs().max()))
    print(f"[{MODEL_B}] torchvision-backend vs PIL-backend pixel_values max|diff| = {tv_diff:.4f} "
          f"(default AutoProcessor backend: {type(p_tv.image_processor).__name__})")
    meta_b = {
        "model": MODEL_B,
        "generated_by": "tests/scripts/make_fixtures.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "attn_implementation": "eager",
        "dtype": "float32",
        "config": config_summary(model_b, proc_b, gen_b, "published llava-hf Hub layout (transformers 4.4x)"),
        "init": init_notes(seed_b, TOKEN_EMBED_STD_B),
        "tolerances": TOLERANCE_NOTES,
        "image_sensitivity_check": sens_b,
        "torchvision_backend_pixel_values_max_abs_diff": tv_diff,
        "tensor_name_pattern": "case<N>.<name>",
        "cases": meta_cases_b,
    }
    write_reference(MODEL_B, tensors_b, meta_b)

    total = sum(f.stat().st_size for d in (out_a, out_b, REF_DIR) for f in d.rglob("*") if f.is_file())
    print(f"fixtures written ({total / 1e6:.2f} MB): {out_a}, {out_b}, {REF_DIR}")
    assert total < 3_000_000, total


if __name__ == "__main__":
    main()
