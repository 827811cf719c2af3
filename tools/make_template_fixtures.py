#!/usr/bin/python3
"""Renders the real chat templates of tests/data/chat_templates/*.jinja with jinja2, the way Hugging Face
transformers' apply_chat_template does, over a fixed set of conversations, and writes the results to
tests/data/chat_templates/expected.json (the oracle of tests/test_chat_template.cpp).

The environment is transformers' own: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
extensions=[loopcontrols]), a tojson filter that is json.dumps(ensure_ascii=False, indent=...), the globals
raise_exception (raises with the template's message) and strftime_now (here on a fixed date, 2024-07-26, so that the
output is reproducible; the C++ test sets the same date), and the render arguments messages, tools=None,
documents=None, add_generation_prompt and the special tokens bos_token/eos_token (a token that is null in
tokenizer_config.json is left out, as transformers leaves it out of special_tokens_map). The project's own fallback
formats (tests/data/chat_templates/builtin/*.jinja, family "builtin/NAME") are rendered the same way, without special
tokens.

Run with Debian's python3-jinja2:  /usr/bin/python3 tools/make_template_fixtures.py
"""
import datetime
import json
import os
import random
import sys

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "tests", "data", "chat_templates")
FIXED_NOW = datetime.datetime(2024, 7, 26, 12, 0, 0)

# Special tokens of each family, as its tokenizer_config.json writes them (None = null there).
FAMILIES = {
    "gemma2": {"bos_token": "<bos>", "eos_token": "<eos>"},
    "gemma3": {"bos_token": "<bos>", "eos_token": "<end_of_turn>"},
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama3_2": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "mistral_nemo": {"bos_token": "<s>", "eos_token": "</s>"},
    "mistral_v0_2": {"bos_token": "<s>", "eos_token": "</s>"},
    "phi3": {"bos_token": "<s>", "eos_token": "<|endoftext|>"},
    "phi4_mini": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
    "qwen2_5": {"bos_token": None, "eos_token": "<|im_end|>"},
    "qwen3": {"bos_token": None, "eos_token": "<|im_end|>"},
    "qwen3_0_6b": {"bos_token": None, "eos_token": "<|im_end|>"},
    "smollm2": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"},
}

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
CASES = {
    "user": [{"role": "user", "content": "Hello!"}],
    "system_user": [SYSTEM, {"role": "user", "content": "What is 2+2?"}],
    "multi_turn": [
        {"role": "user", "content": "Hi there."},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Name a prime number."},
    ],
    "system_multi_turn": [
        SYSTEM,
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one."},
        {"role": "assistant", "content": "Green."},
    ],
    "tricky_text": [
        {"role": "user", "content": "  Quote \"this\" and 'that',\nnew line\ttab, {{ not a tag }} {% if %} \\ back  "},
        {"role": "assistant", "content": "\nÜnïcödé: 日本語, emoji 🙂, ß\n"},
        {"role": "user", "content": "<|im_end|> </s> [INST] <end_of_turn>"},
    ],
    "think": [
        {"role": "user", "content": "Think first."},
        {"role": "assistant", "content": "<think>\nreasoning here\n</think>\n\nThe answer."},
        {"role": "user", "content": "Again."},
    ],
    "empty_content": [{"role": "user", "content": ""}],
    "bad_alternation": [
        {"role": "user", "content": "One."},
        {"role": "user", "content": "Two."},
    ],
    "assistant_first": [
        {"role": "assistant", "content": "I speak first."},
        {"role": "user", "content": "Fine."},
    ],
}



def random_conversations(n, seed=1):
    """n conversations of 1 to 6 messages with random roles (system, user, assistant, tool) and contents: strings
    built of whitespace, quotes, unicode and template-like fragments, and now and then null, a list of parts or a
    number (most templates fail on those: the C++ engine must fail too)."""
    rng = random.Random(seed)
    words = ["hi", " ", "\n", "\t", "\u00e9", "\U0001F642", "'", '"', "{{", "%}", "<think>", "</think>",
             "<tool_response>", "</tool_response>", "a b", "  x  ", "\\", "[INST]", "None", "0"]
    roles = ["system", "user", "assistant", "user", "assistant", "tool"]
    out = {}
    for i in range(n):
        messages = []
        for _ in range(rng.randint(1, 6)):
            content = "".join(rng.choice(words) for _ in range(rng.randint(0, 6)))
            x = rng.random()
            if x < 0.08:
                content = None
            elif x < 0.16:
                content = [{"type": "text", "text": content}, {"type": "image"}]
            elif x < 0.2:
                content = 7
            messages.append({"role": rng.choice(roles), "content": content})
        out["random_%d" % i] = messages
    return out


CASES.update(random_conversations(12))


class TemplateRaised(Exception):
    pass


def make_env():
    def raise_exception(message):
        raise TemplateRaised(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return FIXED_NOW.strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    env = make_env()
    out = {"jinja2_version": jinja2.__version__, "now": FIXED_NOW.strftime("%Y-%m-%d"), "cases": CASES,
           "families": {}, "renders": []}
    families = list(FAMILIES.items())
    for name in sorted(os.listdir(os.path.join(DATA, "builtin"))):
        if name.endswith(".jinja"):
            families.append(("builtin/" + name[:-len(".jinja")], {"bos_token": None, "eos_token": None}))
    for family, tokens in families:
        with open(os.path.join(DATA, family + ".jinja"), encoding="utf-8") as f:
            source = f.read()
        template = env.from_string(source)
        out["families"][family] = {k: v for k, v in tokens.items()}
        special = {k: v for k, v in tokens.items() if v is not None}
        for case, messages in CASES.items():
            for agp in (False, True):
                row = {"family": family, "case": case, "add_generation_prompt": agp}
                try:
                    row["output"] = template.render(messages=messages, tools=None, documents=None,
                                                    add_generation_prompt=agp, **special)
                except TemplateRaised as e:
                    row["error"] = str(e)
                except Exception as e:  # a Python error (None + str, ...): the C++ engine must fail as well
                    row["fails"] = type(e).__name__ + ": " + str(e)
                out["renders"].append(row)
    path = os.path.join(DATA, "expected.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n_err = sum(1 for r in out["renders"] if "error" in r)
    n_fail = sum(1 for r in out["renders"] if "fails" in r)
    print(f"wrote {path}: {len(out['renders'])} renders ({n_err} raise, {n_fail} fail in Python)", file=sys.stderr)


if __name__ == "__main__":
    main()
