#!/usr/bin/env python3
"""Build the tiny tokenizer fixtures used by `vlm-prompt` (and the tiny test models).

Writes, under tests/fixtures/tokenizer/:

* `llava/`  - byte-level BPE tokenizer + a LLaVA-1.5-style chat template saved as
  `chat_template.jinja` (the transformers 5 layout);
* `chatml/` - the same tokenizer + a Qwen2 / llava-interleave-style ChatML template saved the
  older way, as the `chat_template` key of `tokenizer_config.json`;
* `expected.json` - transformers' renderings (`apply_chat_template(..., tokenize=False)`) of a set
  of conversations on both templates and the token ids of rendered prompts and tricky strings;
* `READY` - JSON with the vocabulary size and the ids of the special tokens.

The tokenizer is trained from scratch (byte-level BPE like Llama-3 / Qwen2) on a few KB of English
text written below, so the script needs no network access. Training is deterministic, so rerunning
it reproduces the same files.

Usage: python3 tests/scripts/make_tokenizer.py   (needs `tokenizers` and `transformers` 5.x)
"""

import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "tokenizer")

# Size of the trained part: 256 byte symbols + 144 merges.
TRAINED_VOCAB = 400

SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<pad>", "<image>", "<|im_start|>", "<|im_end|>"]

CORPUS = """\
The little robot looked at the picture on the table. It saw a red apple, a blue cup and a small
brown dog sleeping next to the window. The sun was shining and the sky was clear.
What is in the image? The image shows a cat sitting on a wooden chair in front of a garden.
Describe the picture in one sentence. A man is riding a bicycle along the river in the morning.
How many people are there in the photo? There are three people standing near the old bridge.
The assistant answers questions about images. The user asks, and the assistant gives a short,
helpful and honest answer. If the question cannot be answered from the picture, the assistant
says so and explains why.
A chat between a curious human and an artificial intelligence assistant. The assistant gives
helpful, detailed, and polite answers to the human's questions.
You are a helpful assistant. Please look at the images carefully before you answer.
The first image shows a mountain with snow on the top. The second image shows a beach with
white sand and palm trees. Both pictures were taken in the summer.
Compare the two images and tell me what is different. In the first picture the door is open,
in the second picture the door is closed and the light is on.
Read the text in the image. The sign says: "Welcome to the city library, open every day from
nine to five." There is also a small note under the sign that says "Please be quiet."
Count the objects: one, two, three, four, five, six, seven, eight, nine, ten.
The numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024 appear on the chart. The chart shows that sales
grew by 25 percent between the first and the second quarter of the year.
Where was this photo taken? It looks like it was taken in a park in the city, because there
are many trees, a path, some benches and a fountain in the middle.
What color is the car? The car is green and it is parked in front of a yellow house.
Is there a person in the image? Yes, there is a woman holding an umbrella in the rain.
The weather is cold and windy, and the streets are wet. People are walking quickly to work.
The model reads the image, turns it into a sequence of tokens, and the language model then
writes an answer one token at a time until it reaches the end of the sequence.
The quick brown fox jumps over the lazy dog. The lazy dog does not move at all.
She sells sea shells by the sea shore. The shells she sells are surely sea shells.
This is a test of the tokenizer. It should split words into pieces that it has seen before,
and fall back to single bytes for anything it has never seen, like rare words or symbols.
Thank you for your question. I hope this answer helps. Let me know if you need anything else.
"""

LLAVA_TEMPLATE = """\
{#- LLaVA-1.5 style: "<s>SYSTEM USER: <image>\\n{text} ASSISTANT: {answer}</s>" -#}
{{- bos_token -}}
{%- for message in messages -%}
    {%- if message['content'] is string -%}
        {%- set parts = [{'type': 'text', 'text': message['content']}] -%}
    {%- else -%}
        {%- set parts = message['content'] -%}
    {%- endif -%}
    {%- if message['role'] == 'system' -%}
        {%- for part in parts | selectattr('type', 'equalto', 'text') -%}
            {{- part['text'] + ' ' -}}
        {%- endfor -%}
    {%- else -%}
        {%- if not loop.first and messages[loop.index0 - 1]['role'] == 'user' -%}
            {{- ' ' -}}
        {%- endif -%}
        {{- message['role'].upper() + ': ' -}}
        {#- Images first, then the text, whatever their order in the message -#}
        {%- for part in parts | selectattr('type', 'equalto', 'image') -%}
            {{- '<image>\\n' -}}
        {%- endfor -%}
        {%- if message['role'] == 'assistant' -%}
            {%- generation -%}
            {%- for part in parts | selectattr('type', 'equalto', 'text') -%}
                {{- part['text'] | trim -}}
            {%- endfor -%}
            {{- eos_token -}}
            {%- endgeneration -%}
        {%- else -%}
            {%- for part in parts | selectattr('type', 'equalto', 'text') -%}
                {%- if not loop.first -%}{{- ' ' -}}{%- endif -%}
                {{- part['text'] -}}
            {%- endfor -%}
        {%- endif -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- ' ASSISTANT:' -}}
{%- endif -%}
"""

CHATML_TEMPLATE = """\
{%- if tools -%}
    {{- '<|im_start|>system\\n' -}}
    {%- if messages[0]['role'] == 'system' and messages[0]['content'] is string -%}
        {{- messages[0]['content'] + '\\n\\n' -}}
    {%- endif -%}
    {{- '# Tools\\n<tools>' -}}
    {%- for tool in tools -%}
        {{- '\\n' + (tool | tojson) -}}
    {%- endfor -%}
    {{- '\\n</tools><|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {%- if loop.first and message['role'] != 'system' and not tools -%}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}
    {%- endif -%}
    {%- if message['role'] not in ['system', 'user', 'assistant'] -%}
        {{- raise_exception('Conversation roles must be system, user or assistant, but got ' + message['role']) -}}
    {%- endif -%}
    {%- if not (message['role'] == 'system' and tools) -%}
        {{- '<|im_start|>' + message['role'] + '\\n' -}}
        {%- if message['content'] is string -%}
            {{- message['content'] -}}
        {%- else -%}
            {%- for part in message['content'] -%}
                {%- if part['type'] == 'image' or 'image' in part -%}
                    {{- '<image>\\n' -}}
                {%- elif part['type'] == 'text' -%}
                    {{- part['text'] -}}
                {%- endif -%}
            {%- endfor -%}
        {%- endif -%}
        {{- '<|im_end|>\\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""


def train_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    if tok.get_vocab_size() != TRAINED_VOCAB:
        sys.exit(f"expected {TRAINED_VOCAB} trained tokens, got {tok.get_vocab_size()}")
    tok.add_special_tokens(SPECIAL_TOKENS)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A",
        pair="<s> $A <s> $B",
        special_tokens=[("<s>", bos_id)],
    )
    return tok


def wrap(tok: Tokenizer, chat_template: str):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=["<image>", "<|im_start|>", "<|im_end|>"],
        chat_template=chat_template,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )


def legacyfy(tok: Tokenizer, d: str):
    """Rewrite the configs of `d` the way transformers 4.x wrote them.

    Many Hub checkpoints still ship this layout: a `special_tokens_map.json`, special tokens as
    AddedToken objects (`{"content": ..., "lstrip": ...}`) and an `added_tokens_decoder` table in
    `tokenizer_config.json`. transformers 5 still reads it; the Rust side must too.
    """

    def added(content):
        return {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        }

    path = os.path.join(d, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    legacy = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(tok.token_to_id(t)): {**added(t), "special": True} for t in SPECIAL_TOKENS
        },
        "additional_special_tokens": ["<image>", "<|im_start|>", "<|im_end|>"],
        # transformers 4 tagged these objects so that it could rebuild AddedToken instances.
        "bos_token": {"__type": "AddedToken", **added("<s>")},
        "chat_template": cfg["chat_template"],
        "clean_up_tokenization_spaces": False,
        "eos_token": {"__type": "AddedToken", **added("</s>")},
        "legacy": False,
        "model_max_length": 4096,
        "pad_token": "<pad>",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": {"__type": "AddedToken", **added("<unk>")},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(legacy, f, indent=2, ensure_ascii=False)
        f.write("\n")
    special_map = {
        "additional_special_tokens": [added(t) for t in ("<image>", "<|im_start|>", "<|im_end|>")],
        "bos_token": added("<s>"),
        "eos_token": added("</s>"),
        "pad_token": added("<pad>"),
        "unk_token": added("<unk>"),
    }
    with open(os.path.join(d, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special_map, f, indent=2, ensure_ascii=False)
        f.write("\n")


def build_fixtures():
    from transformers import AutoTokenizer

    tok = train_tokenizer()
    llava_dir = os.path.join(ROOT, "llava")
    chatml_dir = os.path.join(ROOT, "chatml")
    for d in (llava_dir, chatml_dir):
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            os.remove(os.path.join(d, f))

    wrap(tok, LLAVA_TEMPLATE).save_pretrained(llava_dir)
    # The older layout: the template lives in tokenizer_config.json.
    wrap(tok, CHATML_TEMPLATE).save_pretrained(chatml_dir, save_jinja_files=False)
    legacyfy(tok, chatml_dir)

    loaded = {}
    for name, d, template in (("llava", llava_dir, LLAVA_TEMPLATE), ("chatml", chatml_dir, CHATML_TEMPLATE)):
        t = AutoTokenizer.from_pretrained(d)
        if t.chat_template != template:
            sys.exit(f"{name}: the chat template did not round-trip through save_pretrained")
        if (t.bos_token, t.eos_token, t.pad_token, t.unk_token) != ("<s>", "</s>", "<pad>", "<unk>"):
            sys.exit(f"{name}: special tokens did not round-trip")
        if t("a b").input_ids[0] != t.bos_token_id:
            sys.exit(f"{name}: the post-processor does not prepend <s>")
        loaded[name] = t
    if not os.path.exists(os.path.join(llava_dir, "chat_template.jinja")):
        sys.exit("llava: chat_template.jinja was not written")
    with open(os.path.join(chatml_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        if "chat_template" not in json.load(f):
            sys.exit("chatml: chat_template is not in tokenizer_config.json")

    t = loaded["llava"]
    ready = {"vocab_size": len(t)}
    for key, token in (
        ("bos", "<s>"),
        ("eos", "</s>"),
        ("unk", "<unk>"),
        ("pad", "<pad>"),
        ("image", "<image>"),
        ("im_start", "<|im_start|>"),
        ("im_end", "<|im_end|>"),
    ):
        ready[key] = t.convert_tokens_to_ids(token)
    return loaded, ready


# ---------------------------------------------------------------------------------------------
# Expected renderings and ids for the Rust tests.

IMG = {"type": "image"}


def text(s):
    return {"type": "text", "text": s}


CONVERSATIONS = [
    ("single_turn_image", [{"role": "user", "content": [IMG, text("What is shown in this image?")]}]),
    (
        "text_after_image_order",
        # Text before the image in the list: LLaVA puts images first, ChatML keeps the order.
        [{"role": "user", "content": [text("Describe this picture."), IMG]}],
    ),
    (
        "multi_turn",
        [
            {"role": "user", "content": [IMG, text("What color is the car?")]},
            {"role": "assistant", "content": [text("The car is green.")]},
            {"role": "user", "content": [text("And the house?")]},
        ],
    ),
    (
        "system_message",
        [
            {"role": "system", "content": [text("You are a helpful assistant.")]},
            {"role": "user", "content": [IMG, text("How many people are there?")]},
        ],
    ),
    (
        "two_images",
        [{"role": "user", "content": [IMG, IMG, text("Compare the two images.")]}],
    ),
    ("text_only_string", [{"role": "user", "content": "Hello, how are you?"}]),
    (
        "string_system_and_answers",
        [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Is the sky blue?"},
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": [IMG, text("Is this a cat?")]},
            {"role": "assistant", "content": "No."},
        ],
    ),
    (
        "unicode_content",
        [{"role": "user", "content": [IMG, text("Qu'est-ce que c'est ? 日本語 🐱 café\nnew line")]}],
    ),
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city, e.g. \"Zürich\" <b>now</b>",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer", "default": 1}},
                "required": ["city"],
            },
        },
    }
]

TRICKY_STRINGS = [
    "Hello world",
    " leading spaces",
    "   three leading spaces and trailing   ",
    "line one\nline two\n\n  indented\ttab",
    "café naïve résumé",
    "日本語のテキスト",
    "emoji 🐱🐶 and 👨‍👩‍👧 family",
    "<image>\nWhat is this?<|im_end|>",
    "don't stop, it's 2024!",
    "",
]


def build_expected(loaded):
    expected = {"conversations": [], "tools_case": None, "encodings": []}
    for name, messages in CONVERSATIONS:
        case = {"name": name, "messages": messages, "renderings": {}}
        for tname, t in loaded.items():
            for agp in (False, True):
                rendered = t.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp)
                ids = t(rendered, add_special_tokens=False).input_ids
                ids_special = t(rendered).input_ids
                case["renderings"][f"{tname}/{'gen' if agp else 'nogen'}"] = {
                    "text": rendered,
                    "ids": ids,
                    "ids_with_special": ids_special,
                }
        expected["conversations"].append(case)

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Zürich?"},
    ]
    rendered = loaded["chatml"].apply_chat_template(
        messages, tools=TOOLS, tokenize=False, add_generation_prompt=True
    )
    expected["tools_case"] = {"messages": messages, "tools": TOOLS, "text": rendered}

    try:
        loaded["chatml"].apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)
        sys.exit("chatml: expected raise_exception for the tool role")
    except Exception as e:  # jinja2 TemplateError
        expected["raise_exception_message"] = str(e)

    t = loaded["llava"]
    for s in TRICKY_STRINGS:
        ids = t(s).input_ids
        expected["encodings"].append(
            {
                "text": s,
                "ids_with_special": ids,
                "ids": t(s, add_special_tokens=False).input_ids,
                "decoded": t.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": t.decode(ids, skip_special_tokens=True),
            }
        )
    return expected


def main():
    loaded, ready = build_fixtures()
    expected = build_expected(loaded)
    with open(os.path.join(ROOT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(ROOT, "READY"), "w", encoding="utf-8") as f:
        json.dump(ready, f)
        f.write("\n")
    print(json.dumps(ready))


if __name__ == "__main__":
    main()
