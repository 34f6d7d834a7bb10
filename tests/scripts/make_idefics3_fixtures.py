#!/usr/bin/env python3
"""Build the tiny Idefics3 (SmolVLM architecture) checkpoints and the transformers reference outputs.

Writes (and only writes) these paths under tests/fixtures/:

* `reference/images/idefics3_*.png` - extra test photographs (a 3:1 panorama) from skimage.data.
* `idefics3-tiny/` - Idefics3 with a SigLIP tower (24 px tiles, patch 4, so 6x6 patches whose
  position buckets exercise torch's float arange), scale factor 2 (9 tokens per tile), a Llama
  decoder (GQA, untied head), in the layout of the published HuggingFaceTB/SmolVLM-*-Instruct
  repos: `config.json` in the transformers 4.4x dialect (`rope_theta`, `torch_dtype`,
  `vision_config.model_type: idefics3`, SmolVLM's extra keys), one `model.safetensors` with the
  published key names (`model.vision_model.*`, `model.connector.*`, `model.text_model.*`,
  `lm_head.weight`: the same names transformers 5.23 uses in memory and writes), a flat
  `preprocessor_config.json` with splitting on, `processor_config.json` holding only
  `image_seq_len`, `chat_template.json` with SmolVLM's template, tokenizer files,
  `generation_config.json`.
* `idefics3-tiny-nosplit/` - the same weights, written by transformers 5 `save_pretrained`
  (config with `rope_parameters`/`dtype`, `processor_config.json` with a nested
  `image_processor` entry, `do_image_splitting: false`, `chat_template.jinja`).
* `reference/idefics3-tiny.safetensors` + `reference/idefics3-tiny.json` - per case: input ids,
  pixel values and pixel_attention_mask of the tiles, the vision tower's output, the connector
  output (`image_features`, rows in placeholder order), whole-prompt logits, greedy ids with and
  without EOS; the rendered and the expanded prompt and each image's tile grid. Also a vision
  check with a partly padded tile and an all-zero padding tile (`vision_padded.*`), the
  bucketize tables of the position ids (`bucketize.*`), expansion strings of the processor for
  several grids, and what the processor does with mismatched `<image>` markers.

The image processor is the Pillow-backed `Idefics3ImageProcessorPil`.
Deterministic: rerunning reproduces identical files.
Needs: pip install -r tests/scripts/requirements.txt
Usage: python3 tests/scripts/make_idefics3_fixtures.py
"""

import json
import math
import shutil
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import processors  # noqa: E402

from make_fixtures import (  # noqa: E402  (shared helpers; importing runs nothing)
    FIX,
    IMG_DIR,
    MIN_MARGIN,
    REF_DIR,
    TOK_DIR,
    fresh_dir,
    reinit_,
    top2_margin,
)
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
)

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
torch.set_num_threads(1)

MODEL = "idefics3-tiny"
MODEL_NOSPLIT = "idefics3-tiny-nosplit"
MAX_NEW_TOKENS = 10
EOS_ROW_SCALE = 2.5
TILE = 24  # vision image_size = max_image_size
PATCH = 4
SCALE = 2
LONGEST_EDGE = 3 * TILE
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE**2
# HuggingFaceTB/SmolVLM-256M-Instruct's chat_template.json, verbatim.
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
ROW_COL = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
# The order SmolVLM's tokenizer adds them in (<image> already exists in the base tokenizer).
ADDED = ["<global-img>", *ROW_COL, "<fake_token_around_image>", "<end_of_utterance>"]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def make_tokenizer():
    """The chatml fixture tokenizer plus SmolVLM's added tokens; BOS `<|im_start|>`, EOS
    `<end_of_utterance>` and no BOS added by the tokenizer (SmolVLM's template writes
    `<|im_start|>` itself)."""
    tok = AutoTokenizer.from_pretrained(TOK_DIR / "chatml")
    tok.add_special_tokens({"additional_special_tokens": ADDED})
    tok.bos_token = "<|im_start|>"
    tok.eos_token = "<end_of_utterance>"
    tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.chat_template = SMOLVLM_TEMPLATE
    ids = tok.convert_tokens_to_ids(["<image>", *ADDED])
    assert ids == [404, *range(407, 407 + len(ADDED))], ids
    assert tok("hi").input_ids == tok("hi", add_special_tokens=False).input_ids
    info = {name: tok.convert_tokens_to_ids(t) for name, t in [
        ("image", "<image>"), ("fake", "<fake_token_around_image>"), ("global", "<global-img>"),
        ("eou", "<end_of_utterance>"), ("im_start", "<|im_start|>"), ("pad", "<pad>")]}
    return tok, info


def make_images():
    """New idefics3_* photographs (existing images are never rewritten)."""
    from skimage import data

    coffee = Image.fromarray(data.coffee())  # 600x400
    pano = coffee.crop((0, 120, 600, 320)).resize((90, 30), Image.LANCZOS)
    path = IMG_DIR / "idefics3_panorama.png"
    pano.save(path, format="PNG", optimize=True)
    return {"idefics3_panorama.png": path}


# --------------------------------------------------------------------------------------------
# Model and processor
# --------------------------------------------------------------------------------------------


def make_config(info, vocab):
    return Idefics3Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_channels=3,
            image_size=TILE,
            patch_size=PATCH,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            hidden_act="silu",
            max_position_embeddings=1024,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
            tie_word_embeddings=False,
            bos_token_id=info["im_start"],
            eos_token_id=info["eou"],
            pad_token_id=info["pad"],
        ),
        image_token_id=info["image"],
        scale_factor=SCALE,
        tie_word_embeddings=False,
    )


def instantiate(config, seed, eos_row):
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.set_attn_implementation("eager")
    model = model.float()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reinit_(model, seed + 1, token_embed_std=1.0)
    untouched = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not untouched, f"parameters not re-initialised: {untouched}"
    with torch.no_grad():
        model.lm_head.weight[eos_row] *= EOS_ROW_SCALE
    assert model.lm_head.weight.data_ptr() != model.model.text_model.embed_tokens.weight.data_ptr()
    assert model.config.vision_config._attn_implementation == "eager"
    model.eval()
    return model


def make_processor(tok, splitting):
    ip = Idefics3ImageProcessorPil(
        size={"longest_edge": LONGEST_EDGE},
        max_image_size={"longest_edge": TILE},
        do_image_splitting=splitting,
    )
    return Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=IMAGE_SEQ_LEN,
                             chat_template=SMOLVLM_TEMPLATE)


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def state_dict(model):
    return {k: v.detach().clone().contiguous() for k, v in sorted(model.state_dict().items())}


def published_config(model):
    """config.json the way the published SmolVLM-256M-Instruct repo writes it (transformers 4.4x)."""
    cfg = model.config.to_dict()
    text, vision = cfg["text_config"], cfg["vision_config"]
    text_out = {
        "_flash_attn_2_enabled": True,
        "architectures": ["VLlama3ForCausalLM"],
        "head_dim": text["head_dim"],
        "hidden_size": text["hidden_size"],
        "intermediate_size": text["intermediate_size"],
        "is_llama_config": True,
        "max_position_embeddings": text["max_position_embeddings"],
        "model_type": "llama",
        "neftune_noise_alpha": 0.0,
        "num_attention_heads": text["num_attention_heads"],
        "num_hidden_layers": text["num_hidden_layers"],
        "num_key_value_heads": text["num_key_value_heads"],
        "pad_token_id": text["pad_token_id"],
        "pixel_shuffle_factor": SCALE,
        "qk_layer_norms": False,
        "rms_norm_eps": text["rms_norm_eps"],
        "rope_interleaved": False,
        "rope_theta": text["rope_parameters"]["rope_theta"],
        "torch_dtype": "float32",
        "use_resampler": False,
        "vocab_size": text["vocab_size"],
        "bos_token_id": text["bos_token_id"],
        "eos_token_id": text["eos_token_id"],
    }
    # hidden_act / layer_norm_eps / num_channels are left to Idefics3VisionConfig's defaults, as
    # in the published file.
    vision_out = {
        "hidden_size": vision["hidden_size"],
        "image_size": vision["image_size"],
        "intermediate_size": vision["intermediate_size"],
        "max_image_size": {"longest_edge": TILE},
        "model_type": "idefics3",
        "num_attention_heads": vision["num_attention_heads"],
        "num_hidden_layers": vision["num_hidden_layers"],
        "patch_size": vision["patch_size"],
        "size": {"longest_edge": LONGEST_EDGE},
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_base_siglip": False,
    }
    assert vision["hidden_act"] == "gelu_pytorch_tanh" and vision["layer_norm_eps"] == 1e-6
    return {
        "architectures": ["Idefics3ForConditionalGeneration"],
        "image_token_id": cfg["image_token_id"],
        "model_type": "idefics3",
        "pad_token_id": 128002,
        "scale_factor": cfg["scale_factor"],
        "text_config": dict(sorted(text_out.items())),
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.46.0",
        "use_cache": True,
        "vision_config": vision_out,
        "vocab_size": text["vocab_size"],
    }


def save_published(model, processor, tok, out_dir, gen_cfg):
    fresh_dir(out_dir)
    save_file(state_dict(model), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(published_config(model), indent=2) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": gen_cfg.bos_token_id, "eos_token_id": gen_cfg.eos_token_id,
           "pad_token_id": gen_cfg.pad_token_id, "transformers_version": "4.46.0"}
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    ip = processor.image_processor
    pre = {
        "do_convert_rgb": True,
        "do_image_splitting": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(ip.image_mean),
        "image_processor_type": "Idefics3ImageProcessor",
        "image_std": list(ip.image_std),
        "max_image_size": {"longest_edge": TILE},
        "processor_class": "Idefics3Processor",
        "resample": int(ip.resample),
        "rescale_factor": ip.rescale_factor,
        "size": {"longest_edge": LONGEST_EDGE},
    }
    (out_dir / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    proc = {"image_seq_len": IMAGE_SEQ_LEN, "processor_class": "Idefics3Processor"}
    (out_dir / "processor_config.json").write_text(json.dumps(proc, indent=2) + "\n")
    (out_dir / "chat_template.json").write_text(json.dumps({"chat_template": SMOLVLM_TEMPLATE}, indent=2) + "\n")
    tmp = out_dir / "_tok"
    tok.save_pretrained(tmp)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tmp / f, out_dir / f)
    shutil.rmtree(tmp)
    cfg = json.loads((out_dir / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    assert not (out_dir / "chat_template.jinja").exists()


def save_transformers5(model, processor, out_dir, gen_cfg, published_dir):
    fresh_dir(out_dir)
    model.generation_config = gen_cfg
    model.save_pretrained(out_dir)  # the default save_original_format=True: idefics3 has no rename rule
    processor.save_pretrained(out_dir)
    written = (out_dir / "model.safetensors").read_bytes()
    same = written == (published_dir / "model.safetensors").read_bytes()
    if not same:
        from safetensors import safe_open

        with safe_open(out_dir / "model.safetensors", "pt") as a, safe_open(published_dir / "model.safetensors", "pt") as b:
            assert sorted(a.keys()) == sorted(b.keys()), "save_pretrained wrote other key names"
            for k in a.keys():
                assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k
        # Same names and values but other bytes (order/metadata): keep one blob for both folders.
        shutil.copy2(published_dir / "model.safetensors", out_dir / "model.safetensors")
    return same


@torch.no_grad()
def verify_reload(out_dir, model, tensors, cases, ids_by_case):
    m2 = Idefics3ForConditionalGeneration.from_pretrained(out_dir, attn_implementation="eager", dtype=torch.float32)
    m2.eval()
    sd1, sd2 = model.state_dict(), m2.state_dict()
    assert sorted(sd1) == sorted(sd2), set(sd1) ^ set(sd2)
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), f"{out_dir.name}: weight {k} differs after reload"
    assert not m2.config.tie_word_embeddings
    p2 = AutoProcessor.from_pretrained(out_dir, backend="pil")
    assert type(p2.image_processor).__name__ == "Idefics3ImageProcessorPil", type(p2.image_processor)
    assert p2.image_seq_len == IMAGE_SEQ_LEN
    n = 0
    for ci, case in enumerate(cases, start=1):
        if case["model"] != out_dir.name:
            continue
        prompt, inputs, _ = case_inputs(p2, case)
        assert torch.equal(inputs["input_ids"][0], tensors[f"case{ci}.input_ids"]), f"case{ci}: ids differ on reload"
        if "pixel_values" in inputs:
            assert torch.equal(inputs["pixel_values"][0], tensors[f"case{ci}.pixel_values"])
        logits = m2(**inputs).logits[0]
        assert torch.equal(logits, tensors[f"case{ci}.logits"]), f"case{ci}: logits differ on reload"
        n += 1
    print(f"[reload] {out_dir.name}: weights, processor, ids, pixels and logits identical ({n} cases); "
          f"eos {m2.generation_config.eos_token_id}")


# --------------------------------------------------------------------------------------------
# Reference computation
# --------------------------------------------------------------------------------------------


def case_inputs(processor, case):
    """(rendered prompt, processor outputs, expanded prompt text)."""
    prompt = processor.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=False)
    images = [Image.open(IMG_DIR / f) for f in case["images"]]
    captured = []
    orig = processor.get_text_with_replacements

    def spy(*a, **k):
        out = orig(*a, **k)
        captured.append(list(out[0]))
        return out

    processor.get_text_with_replacements = spy
    try:
        # As apply_chat_template(tokenize=True): SmolVLM's template writes <|im_start|> itself.
        bos = processor.tokenizer.bos_token
        kwargs = {"images": images} if images else {}
        inputs = processor(text=[prompt], add_special_tokens=not prompt.startswith(bos), return_tensors="pt", **kwargs)
    finally:
        processor.get_text_with_replacements = orig
    expanded = captured[0][0] if captured else prompt
    inputs.pop("mm_token_type_ids", None)
    return prompt, inputs, expanded


def grids_of(processor, case):
    images = [Image.open(IMG_DIR / f) for f in case["images"]]
    if not images:
        return []
    out = processor.image_processor(images, return_row_col_info=True)
    return [[int(r), int(c)] for r, c in zip(out["rows"][0], out["cols"][0])]


def greedy(model, inputs, gen_cfg, eos):
    cfg = GenerationConfig(bos_token_id=gen_cfg.bos_token_id, pad_token_id=gen_cfg.pad_token_id, do_sample=False)
    cfg.eos_token_id = gen_cfg.eos_token_id if eos else None
    saved = model.generation_config
    model.generation_config = cfg
    try:
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, generation_config=cfg)
    finally:
        model.generation_config = saved
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def margins_along(model, inputs, new):
    """Top-1/top-2 logit gaps at every greedy step, by one forward over prompt + answer."""
    ids = inputs["input_ids"]
    full = torch.cat([ids, torch.tensor([new[:-1]])], dim=1)
    extra = {k: v for k, v in inputs.items() if k in ("pixel_values", "pixel_attention_mask")}
    lg = model(input_ids=full, **extra).logits[0]
    n = ids.shape[1]
    return [top2_margin(lg[n - 1 + i]) for i in range(len(new))]


@torch.no_grad()
def choose_seed(config, processors, cases, gen_cfg, stop_id, image_id, base_seed, tries=300):
    for seed in range(base_seed, base_seed + tries):
        model = instantiate(config, seed, stop_id)
        res = []
        for case in cases:
            _, inputs, _ = case_inputs(processors[case["model"]], case)
            new = greedy(model, inputs, gen_cfg, eos=False)
            first = next((i for i, t in enumerate(new) if t == stop_id), None)
            res.append((first, -1.0 if image_id in new else min(margins_along(model, inputs, new))))
        stops = [r for r in res if r[0] is not None]
        if (stops and len(stops) < len(res) and all(r[0] is None or r[0] >= 2 for r in res)
                and min(r[1] for r in res) >= MIN_MARGIN):
            print(f"[{MODEL}] seed {seed}: first EOS per case {[r[0] for r in res]}")
            return seed, model
    raise SystemExit(f"{MODEL}: no suitable seed in [{base_seed}, {base_seed + tries})")


@torch.no_grad()
def run_cases(model, processors, cases, gen_cfg):
    tensors, meta = {}, []
    first_last = None
    for ci, case in enumerate(cases, start=1):
        p = f"case{ci}."
        processor = processors[case["model"]]
        prompt, inputs, expanded = case_inputs(processor, case)
        ids = inputs["input_ids"]
        t = {"input_ids": ids[0].to(torch.int64)}
        grids = grids_of(processor, case)
        if "pixel_values" in inputs:
            pv, pam = inputs["pixel_values"], inputs["pixel_attention_mask"]
            assert pv.shape[0] == 1 and pam.dtype == torch.int64
            out = model.model.get_image_features(pv, pam)
            features = torch.cat(out.pooler_output)
            n_tiles = sum(1 if r == c == 0 else r * c + 1 for r, c in grids)
            assert out.last_hidden_state.shape[0] == pv.shape[1] == n_tiles
            assert int((ids == model.config.image_token_id).sum()) == features.shape[0] == n_tiles * IMAGE_SEQ_LEN
            t.update(pixel_values=pv[0], pixel_attention_mask=pam[0].to(torch.uint8),
                     vision_output=out.last_hidden_state, image_features=features)
        logits = model(**inputs).logits[0].float()
        t["logits"] = logits
        g = greedy(model, inputs, gen_cfg, eos=True)
        g_noeos = greedy(model, inputs, gen_cfg, eos=False)
        assert len(g_noeos) == MAX_NEW_TOKENS and g == g_noeos[: len(g)]
        t["greedy_ids"] = torch.tensor(g, dtype=torch.int64)
        t["greedy_ids_noeos"] = torch.tensor(g_noeos, dtype=torch.int64)
        margins = margins_along(model, inputs, g_noeos)
        last = logits[-1]
        diff = None if first_last is None else float((last - first_last).abs().max())
        first_last = last if first_last is None else first_last
        for k, v in t.items():
            tensors[p + k] = v.contiguous()
        meta.append({
            "case": ci,
            "description": case["description"],
            "model": case["model"],
            "images": case["images"],
            "image_sizes_wh": [list(Image.open(IMG_DIR / f).size) for f in case["images"]],
            "grids": grids,
            "messages": case["messages"],
            "prompt": prompt,
            "expanded_prompt": expanded,
            "seq_len": int(ids.shape[1]),
            "input_ids": ids[0].tolist(),
            "num_image_tokens": int((ids == model.config.image_token_id).sum()),
            "greedy_text": processor.tokenizer.decode(g, skip_special_tokens=False),
            "greedy_stopped_early": len(g) < MAX_NEW_TOKENS,
            "min_top2_margin_over_greedy_steps": min(margins),
            "last_logits_max_abs_diff_vs_case1": diff,
            "shapes": {k: list(v.shape) for k, v in t.items()},
        })
        print(f"[{MODEL}] case{ci} ({case['description']}): seq={ids.shape[1]} grids={grids} greedy={g} "
              f"noeos={g_noeos} min_margin={min(margins):.3f}")
    return tensors, meta


@torch.no_grad()
def vision_padded(model, tensors):
    """A tile whose lower right is padding (partial patch mask: 4 of 6 patch rows, 3 of 6 patch
    columns) and an all-zero padding tile, through get_image_features."""
    real = tensors["case1.pixel_values"][:2].clone()
    mask = torch.ones((3, TILE, TILE), dtype=torch.int64)
    mask[1, 16:, :] = 0
    mask[1, :, 12:] = 0
    real[1] = real[1] * mask[1]
    pv = torch.cat([real, torch.zeros((1, 3, TILE, TILE))])[None]
    mask[2] = 0
    out = model.model.get_image_features(pv, mask[None])
    assert out.last_hidden_state.shape[0] == 2, "the all-zero tile must be dropped"
    return {
        "vision_padded.pixel_values": pv[0].contiguous(),
        "vision_padded.pixel_attention_mask": mask.to(torch.uint8).contiguous(),
        "vision_padded.vision_output": out.last_hidden_state.contiguous(),
        "vision_padded.image_features": torch.cat(out.pooler_output).contiguous(),
    }


def bucketize_tables():
    """For a position table of n x n: the boundaries torch.arange(1/n, 1, 1/n) and, for every
    count k of real patches along an axis, the buckets of the n coordinates (row k - 1)."""
    out = {}
    for n in [*range(1, 41), 48, 64, 73]:
        boundaries = torch.arange(1 / n, 1.0, 1 / n)
        rows = []
        for k in range(1, n + 1):
            step = 1.0 / torch.tensor([k])
            frac = torch.clamp(torch.arange(n, dtype=torch.float32)[None, :] * step[:, None], max=(1.0 - 1e-6))
            rows.append(torch.bucketize(frac, boundaries, right=True)[0])
        out[f"bucketize.boundaries_n{n}"] = boundaries.contiguous()
        out[f"bucketize.buckets_n{n}"] = torch.stack(rows).to(torch.uint8).contiguous()
    return out


def expansion_strings(processor):
    out = []
    saved = processor.image_seq_len
    try:
        for seq in (1, 3):
            processor.image_seq_len = seq
            for rows, cols in [(0, 0), (1, 2), (2, 1), (2, 3), (3, 3), (7, 2)]:
                text = processor.replace_image_token({"rows": [[rows]], "cols": [[cols]]}, image_idx=0)
                out.append({"rows": rows, "cols": cols, "image_seq_len": seq, "text": text})
    finally:
        processor.image_seq_len = saved
    return out


def processor_behaviour(processor):
    """What the reference does with mismatched markers and with chat image parts."""
    img = Image.open(IMG_DIR / "idefics3_panorama.png")
    res = {}
    for name, text, images in [
        ("no_marker_one_image", "<|im_start|>User: hi<end_of_utterance>\nAssistant:", [img]),
        ("two_markers_one_image", "<|im_start|>User:<image><image>hi<end_of_utterance>\nAssistant:", [img]),
        ("one_marker_no_image", "<|im_start|>User:<image>hi<end_of_utterance>\nAssistant:", None),
    ]:
        try:
            processor(text=[text], images=images)
            res[name] = "accepted"
        except ValueError as e:
            res[name] = f"ValueError: {e}"
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image"}]}]
    res["chat_text_then_image"] = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Look"}]}]
    res["chat_image_then_text"] = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    plain = processor(text=["<|im_start|>User: hi<end_of_utterance>\nAssistant:"], add_special_tokens=False)
    res["text_only_ids"] = plain["input_ids"][0]
    return res


@torch.no_grad()
def image_sensitivity(model, processor, case, other):
    swapped = dict(case, images=[other])
    _, a, _ = case_inputs(processor, case)
    _, b, _ = case_inputs(processor, swapped)
    assert torch.equal(a["input_ids"], b["input_ids"]), "the swapped image must have the same grid"
    la, lb = model(**a).logits[0, -1], model(**b).logits[0, -1]
    diff = float((la - lb).abs().max())
    tv = float((torch.softmax(la, -1) - torch.softmax(lb, -1)).abs().sum() / 2)
    print(f"[{MODEL}] image sensitivity {case['images']} -> {other}: max|dlogit|={diff:.3f} TV={tv:.3f}")
    assert diff > 0.5 and tv > 0.02, "changing the image barely changes the output"
    return {"swapped_image": other, "last_logits_max_abs_diff": diff, "last_probs_total_variation": tv}


def user(parts):
    """parts: "image" or text strings, in order."""
    content = [{"type": "image"} if p == "image" else {"type": "text", "text": p} for p in parts]
    return {"role": "user", "content": content}


def cases():
    return [
        {"description": "one wide image (300x200 -> 72x48): a 2x3 grid plus the global view",
         "model": MODEL, "images": ["large_astronaut.png"], "messages": [user(["image", "What is in the image?"])]},
        {"description": "one tall image (36x56 -> 46x72 -> 48x72): a 3x2 grid; text before the image",
         "model": MODEL, "images": ["tall_chelsea.png"], "messages": [user(["Describe this picture.", "image"])]},
        {"description": "an image smaller than one tile (20x14): enlarged to 72x50, then a 3x3 grid",
         "model": MODEL, "images": ["small_rocket.png"], "messages": [user(["image", "What is this?"])]},
        {"description": "two images in one prompt: a 90x30 panorama (1x3 grid) and an RGBA photo (2x3 grid)",
         "model": MODEL, "images": ["idefics3_panorama.png", "rgba_coffee.png"],
         "messages": [user(["image", "image", "Which one is brighter?"])]},
        {"description": "splitting off: two images, one 24x24 tile each (a wide RGB and a grayscale photo)",
         "model": MODEL_NOSPLIT, "images": ["wide_astronaut.png", "gray_camera.png"],
         "messages": [user(["image", "image", "Compare them."])]},
        {"description": "text only, second turn after an assistant answer",
         "model": MODEL, "images": [],
         "messages": [user(["Describe a sunset."]), {"role": "assistant", "content": [{"type": "text", "text": "Red sky."}]},
                      user(["And at night?"])]},
    ]


def write_reference(tensors, meta):
    save_file(dict(sorted(tensors.items())), str(REF_DIR / f"{MODEL}.safetensors"), metadata={"format": "pt"})
    (REF_DIR / f"{MODEL}.json").write_text(json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def main():
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    tok, info = make_tokenizer()
    make_images()
    vocab = len(tok)
    config = make_config(info, vocab)
    processors = {MODEL: make_processor(tok, True), MODEL_NOSPLIT: make_processor(tok, False)}
    gen_cfg = GenerationConfig(bos_token_id=info["im_start"], eos_token_id=info["eou"], pad_token_id=info["pad"])
    all_cases = cases()
    seed, model = choose_seed(config, processors, all_cases, gen_cfg, info["eou"], info["image"], 300)
    out_dir = FIX / MODEL
    save_published(model, processors[MODEL], tok, out_dir, gen_cfg)
    same_bytes = save_transformers5(model, processors[MODEL_NOSPLIT], FIX / MODEL_NOSPLIT, gen_cfg, out_dir)
    tensors, meta_cases = run_cases(model, processors, all_cases, gen_cfg)
    tensors.update(vision_padded(model, tensors))
    tensors.update(bucketize_tables())
    for d in (out_dir, FIX / MODEL_NOSPLIT):
        verify_reload(d, model, tensors, all_cases, None)
    sens = image_sensitivity(model, processors[MODEL], all_cases[0], "rgba_coffee.png")
    meta = {
        "model": MODEL,
        "models": {MODEL: "published SmolVLM layout, splitting on", MODEL_NOSPLIT: "transformers 5 save_pretrained, splitting off"},
        "generated_by": "tests/scripts/make_idefics3_fixtures.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "attn_implementation": "eager",
        "dtype": "float32",
        "seed": seed,
        "image_seq_len": IMAGE_SEQ_LEN,
        "image_token_id": info["image"],
        "eos_token_id": info["eou"],
        "max_new_tokens": MAX_NEW_TOKENS,
        "save_pretrained_wrote_identical_safetensors": same_bytes,
        "cases": meta_cases,
        "expansions": expansion_strings(processors[MODEL]),
        "processor_behaviour": processor_behaviour(processors[MODEL]),
        "image_sensitivity": sens,
        "tensor_name_pattern": "case<N>.<name>; vision_padded.<name>; bucketize.{boundaries,buckets}_n<N>",
        "notes": {
            "pixel_values": "[tiles, 3, 24, 24]: the processor's (1, tiles, ...) batch of the prompt without its batch axis",
            "pixel_attention_mask": "the processor's int64 mask stored as uint8",
            "vision_output": "post_layernorm output of the real tiles, [tiles, 36, 32]",
            "image_features": "connector output of all tiles, concatenated in placeholder order, [tiles * 9, 64]",
            "logits": "f32, one full-prompt forward, eager attention",
            "bucketize.buckets_n<N>": "row k-1: torch.bucketize(clamp(arange(N) * (1/k), max=1-1e-6), "
                                      "arange(1/N, 1, 1/N), right=True) as uint8",
        },
    }
    write_reference(tensors, meta)
    size = sum(f.stat().st_size for d in (out_dir, FIX / MODEL_NOSPLIT) for f in d.iterdir())
    ref = sum((REF_DIR / f"{MODEL}.{e}").stat().st_size for e in ("json", "safetensors"))
    print(f"[{MODEL}] wrote {out_dir.name} + {MODEL_NOSPLIT} ({size} bytes), reference ({ref} bytes)")


if __name__ == "__main__":
    main()
