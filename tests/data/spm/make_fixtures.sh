#!/usr/bin/env bash
# Regenerates the SentencePiece fixtures of tests/test_sentencepiece.cpp with the reference implementation: the
# command-line tools of Debian's package `sentencepiece` (0.1.97: spm_train, spm_encode, spm_decode) and python3.
#
#   bpe400.model       BPE, 400 pieces, byte fallback, identity normalization, add_dummy_prefix and
#                      remove_extra_whitespaces (the defaults); unk 0, bos 1, eos 2 (Llama-2 layout)
#   bpe1000.model      BPE, 1000 pieces, byte fallback, identity, add_dummy_prefix=false,
#                      remove_extra_whitespaces=false; pad 0, unk 3, eos 4, bos 5; user-defined <sep>, ▁the▁end, @@;
#                      control <ctl>
#   bpe_llama.model    BPE, 500 pieces, byte fallback, identity, add_dummy_prefix but remove_extra_whitespaces=false,
#                      split_digits: the settings of Llama-2's tokenizer.model; unk 0, bos 1, eos 2
#   unigram_nfkc.model UNIGRAM, 400 pieces, nmt_nfkc normalization (a precompiled charsmap), no byte fallback and
#                      character_coverage 0.98 (so some characters are unknown); unk 0, no bos, eos 1;
#                      user-defined <sep>, ﬁ, @@
#   fixtures.json      for every model and every test string: the ids spm_encode --output_format=id gives and the
#                      text spm_decode gives back for them, less the " \u2047 " it writes for each <unk> (sinkflow's
#                      decode() skips special tokens; spm_decode already writes nothing for control pieces)
#
# spm_encode and spm_decode work line by line, so a string holding '\n' cannot be given to them as is. For the
# identity-normalized models (where '\n' is an ordinary character that no piece contains) such a string is encoded
# with U+E000 (also in no piece, also not a space) in place of '\n', and the byte-fallback ids of U+E000
# (<0xEE> <0x80> <0x80>) are then replaced by the id of <0x0A>; the decoded text gets '\n' back the same way.
# The unigram_nfkc model (whose charsmap may map '\n') gets no string with '\n'.
set -euo pipefail
cd "$(dirname "$0")"

common=(--input=train.txt --num_threads=1 --minloglevel=2)
spm_train "${common[@]}" --model_prefix=bpe400 --vocab_size=400 --model_type=bpe --byte_fallback=true \
  --normalization_rule_name=identity --character_coverage=1.0 --unk_id=0 --bos_id=1 --eos_id=2
spm_train "${common[@]}" --model_prefix=bpe1000 --vocab_size=1000 --model_type=bpe --byte_fallback=true \
  --normalization_rule_name=identity --character_coverage=1.0 --add_dummy_prefix=false \
  --remove_extra_whitespaces=false --pad_id=0 --unk_id=3 --eos_id=4 --bos_id=5 \
  --user_defined_symbols='<sep>,▁the▁end,@@' --control_symbols='<ctl>'
spm_train "${common[@]}" --model_prefix=bpe_llama --vocab_size=500 --model_type=bpe --byte_fallback=true \
  --normalization_rule_name=identity --character_coverage=1.0 --remove_extra_whitespaces=false --split_digits=true \
  --unk_id=0 --bos_id=1 --eos_id=2
spm_train "${common[@]}" --model_prefix=unigram_nfkc --vocab_size=400 --model_type=unigram \
  --character_coverage=0.98 --unk_id=0 --bos_id=-1 --eos_id=1 --user_defined_symbols='<sep>,ﬁ,@@'
rm -f bpe400.vocab bpe1000.vocab bpe_llama.vocab unigram_nfkc.vocab

python3 - <<'PYTHON'
import json, subprocess

MODELS = {
    # name: (identity normalization, so that '\n' strings can be encoded with the U+E000 stand-in)
    "bpe400": True,
    "bpe1000": True,
    "bpe_llama": True,
    "unigram_nfkc": False,
}

def b(s):
    return s.encode("utf-8") if isinstance(s, str) else s

TEXTS = [b(t) for t in [
    "", " ", "   ", "a", "the", "The", "The river ran quietly past the old mill.",
    " leading space", "trailing space ", "  multiple   inner    spaces  ", "tab\there\tand\tthere",
    "new\nline", "\n", "two\n\nnewlines\n", "\n leading newline", "carriage\r\nreturn",
    "digits 0123456789 and 3.14159", "2023-04-15 12:30:45", "+1-555-0100 or someone@example.com",
    "punctuation!?.,;:'\"()[]{}<>-_/\\|#$%^&*~`", "don't won't it's we'll you'd",
    "café crème brûlée naïve façade", "Ünïcödé ÀÉÎÕÜ", "日本語のテキスト", "中文文本", "한국어",
    "emoji 😀👋🏽🇩🇪", "mixed: the 猫 sat on the 🧶 mat", "Ω≈ç√∫˜µ≤≥÷", "ﬁne ﬂoor", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "½ ⅓ ¼ ™ ℃", "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "e\u0301 combining accent",
    "literal \u2581 lower block", "<s> control </s> <unk> <ctl> <pad> text", "<sep>user @@ defined<sep>",
    "the end of the end", " the end", "antidisestablishmentarianism", "a" * 40,
    "the the the the the the the the", "\ufffd replacement character",
    b"bad \xff byte", b"\xc3 lone lead byte", b"over\xc0\xaflong", b"surrogate \xed\xa0\x80 half",
    b"cut \xe6\x97",
]]
with open("train.txt", "rb") as f:
    TEXTS.append(b" ".join(f.read().split(b"\n")).strip())  # a long line: the whole training text

PLACEHOLDER = "\ue000".encode("utf-8")
UNK_SURFACE = " \u2047 ".encode("utf-8")

def run(tool, model, extra, lines):
    out = subprocess.run([tool, "--model=" + model + ".model"] + extra, input=b"".join(l + b"\n" for l in lines),
                         capture_output=True, check=True).stdout
    result = out.split(b"\n")
    assert result[-1] == b"" and len(result) == len(lines) + 1, (tool, model, len(result), len(lines))
    return result[:-1]

def piece_ids(model):
    vocab = subprocess.run(["spm_export_vocab", "--model=" + model + ".model"], capture_output=True,
                           check=True).stdout.decode("utf-8").split("\n")
    return {line.split("\t")[0]: i for i, line in enumerate(vocab) if line}

cases = []
for model, identity in MODELS.items():
    pieces = piece_ids(model)
    texts = [t for t in TEXTS if identity or b"\n" not in t]
    if identity:
        assert not any("\n" in p or "\ue000" in p for p in pieces), model
        lf, ee, x80 = pieces["<0x0A>"], pieces["<0xEE>"], pieces["<0x80>"]
    encoded = run("spm_encode", model, ["--output_format=id"], [t.replace(b"\n", PLACEHOLDER) for t in texts])
    ids = []
    for line in encoded:
        seq = [int(x) for x in line.split()]
        if identity:
            out, i = [], 0
            while i < len(seq):
                if seq[i:i + 3] == [ee, x80, x80]:
                    out.append(lf)
                    i += 3
                else:
                    out.append(seq[i])
                    i += 1
            seq = out
        ids.append(seq)
    decoded_lines = []
    for seq in ids:  # '\n' ids go back to U+E000 for spm_decode
        line = []
        for x in seq:
            line += [ee, x80, x80] if identity and x == lf else [x]
        decoded_lines.append(" ".join(map(str, line)).encode())
    decoded = run("spm_decode", model, ["--input_format=id"], decoded_lines)
    for text, seq, dec in zip(texts, ids, decoded):
        case = {"model": model}
        try:
            case["text"] = text.decode("utf-8")
        except UnicodeDecodeError:
            case["text_hex"] = text.hex()
        case["ids"] = seq
        assert UNK_SURFACE not in text
        case["decoded"] = dec.replace(UNK_SURFACE, b"").replace(PLACEHOLDER, b"\n").decode("utf-8")
        cases.append(case)

with open("fixtures.json", "w", encoding="utf-8") as f:
    f.write('{\n"generator": "tests/data/spm/make_fixtures.sh with spm_encode/spm_decode 0.1.97",\n"cases": [\n')
    f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in cases))
    f.write("\n]\n}\n")
print(f"fixtures.json: {len(cases)} cases")
PYTHON
