#!/usr/bin/python3
"""Copy-curriculum corpus: a first training phase meant to form induction heads (configs/train/llama-copy-curriculum.json).

A token stream of segments, each: 0-48 tokens of corpus text, a span of 4-80 tokens, 0-64 tokens of corpus text,
the same span again. Half of the spans are tokens drawn uniformly from the vocabulary (only copying predicts
their repeat), half are corpus text (copying beats the language prior). Span lengths and gaps vary, so that no
fixed look-back offset predicts the repeat: the model has to match content (induction heads).

Runs on Debian's system python3 with numpy. Reads the int32 token files of tools/build_corpus.sh and writes
int32 token files of the same kind (the `train_ids` / `heldout_ids` of a training config).
Usage: /usr/bin/python3 tools/make_copy_corpus.py [CORPUS_DIR]   (default data/corpus)
"""
import os
import sys

import numpy as np

VOCAB = 4096     # tokenizer.model's size; ids 0-2 are <unk>, <s>, </s>
SEED = 2026


def build(corpus, segments, rng):
    out = []

    def text(n):
        o = rng.integers(0, len(corpus) - n - 1)
        return list(corpus[o:o + n])

    for _ in range(segments):
        out += text(int(rng.integers(0, 49)))
        length = int(rng.integers(4, 81))
        span = list(rng.integers(3, VOCAB, length)) if rng.random() < 0.5 else text(length)
        out += span
        out += text(int(rng.integers(0, 65)))
        out += span
    return np.array(out, dtype=np.int32)


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "data/corpus"
    rng = np.random.default_rng(SEED)
    for name, src, segments in (("train", "train.ids.bin", 60000), ("heldout", "heldout.ids.bin", 600)):
        path = os.path.join(d, src)
        if not os.path.exists(path):
            sys.exit(f"{path}: not found (run tools/build_corpus.sh first)")
        corpus = np.fromfile(path, dtype=np.int32)
        if len(corpus) < 1000 or corpus.min() < 0 or corpus.max() >= VOCAB:
            sys.exit(f"{path}: expected int32 token ids in [0, {VOCAB}), at least 1000 of them; "
                     f"found {len(corpus)} ids in [{corpus.min()}, {corpus.max()}]")
        ids = build(corpus, segments, rng)
        dst = os.path.join(d, f"copy_curriculum.{name}.ids.bin")
        ids.tofile(dst + ".tmp")
        os.replace(dst + ".tmp", dst)
        print(f"{dst}: {len(ids)} tokens, {segments} segments")


if __name__ == "__main__":
    main()
