#!/usr/bin/python3
"""Copy corpora: training streams meant to form induction heads.

copy_dense (the induction phase tried on a copy of the shipped sinkflow-llama, configs/train/llama-induction.json): segments of
random tokens, each a span of 8-40 tokens drawn uniformly from the vocabulary followed by one or two repeats, each
repeat after a gap of 0-32 random tokens, then 0-8 random tokens; one segment in 12.5 (about 23% of the tokens) is
300 tokens of corpus text instead. About a third of the tokens are predictable, and only by copying: the first
occurrence sits at a varying distance, so the model has to match content, not a fixed offset (induction heads).

copy_toy (configs/train/toy-induction.json, a 2-layer model that forms induction heads in minutes): the same
segments without text, on a 512-token alphabet (ids 3-511), a span of 8-40 tokens, a gap of 0-32 tokens, one
repeat, 0-8 tokens.

copy_text (configs/train/llama-narrow-copy.json, the copy phase of a Llama grown afterwards): corpus text with
copies over the whole training context. Each segment: 0-32 tokens of text, a span of 8-40 tokens (half drawn
uniformly from the vocabulary, half corpus text), a gap of 0-220 tokens of text (log-uniform, so that short and
long distances are both common), the span again. The needle benchmark asks for copies across most of a
256-token cache, and the toy showed that a model copies only over the distances its stream held.

copy_curriculum (an earlier experiment, configs/train/llama-copy-curriculum.json; it did not form induction heads):

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
DENSE_SEED = 7
TOY_SEED = 3
TEXT_SEED = 21
TOY_VOCAB = 512
DENSE_TEXT_FRACTION = 0.08   # of the segments; text segments are longer, so about 23% of the tokens


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


def random_segment(rng, vocab, one_repeat):
    """A span of 8-40 random ids, one repeat (or one or two, drawn) each after 0-32 random ids, then 0-8 more."""
    span = list(rng.integers(3, vocab, int(rng.integers(8, 41))))
    seg = span[:]
    for _ in range(1 if one_repeat else int(rng.integers(1, 3))):
        seg += list(rng.integers(3, vocab, int(rng.integers(0, 33))))
        seg += span
    seg += list(rng.integers(3, vocab, int(rng.integers(0, 9))))
    return seg


def build_dense(corpus, n_tokens, rng):
    out = []
    while len(out) < n_tokens:
        if rng.random() < DENSE_TEXT_FRACTION:
            o = rng.integers(0, len(corpus) - 300)
            out += list(corpus[o:o + 300])
        else:
            out += random_segment(rng, VOCAB, one_repeat=False)
    return np.array(out, dtype=np.int32)


def build_toy(n_tokens, rng):
    out = []
    while len(out) < n_tokens:
        out += random_segment(rng, TOY_VOCAB, one_repeat=True)
    return np.array(out, dtype=np.int32)


def build_text(corpus, n_tokens, rng):
    out = []

    def text(n):
        o = int(rng.integers(0, len(corpus) - n - 1))
        return list(corpus[o:o + n])

    while len(out) < n_tokens:
        length = int(rng.integers(8, 41))
        span = list(rng.integers(3, VOCAB, length)) if rng.random() < 0.5 else text(length)
        gap = int(np.exp(rng.uniform(0, np.log(221)))) - 1   # 0-220, log-uniform
        out += text(int(rng.integers(0, 33))) + span + text(gap) + span
    return np.array(out, dtype=np.int32)


def read_corpus(path):
    if not os.path.exists(path):
        sys.exit(f"{path}: not found (run tools/build_corpus.sh first)")
    corpus = np.fromfile(path, dtype=np.int32)
    if len(corpus) < 1000 or corpus.min() < 0 or corpus.max() >= VOCAB:
        sys.exit(f"{path}: expected int32 token ids in [0, {VOCAB}), at least 1000 of them; "
                 f"found {len(corpus)} ids in [{corpus.min()}, {corpus.max()}]")
    return corpus


def write(ids, dst, what):
    ids.tofile(dst + ".tmp")
    os.replace(dst + ".tmp", dst)
    print(f"{dst}: {len(ids)} tokens, {what}")


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "data/corpus"
    rng = np.random.default_rng(SEED)
    for name, src, segments in (("train", "train.ids.bin", 60000), ("heldout", "heldout.ids.bin", 600)):
        ids = build(read_corpus(os.path.join(d, src)), segments, rng)
        write(ids, os.path.join(d, f"copy_curriculum.{name}.ids.bin"), f"{segments} segments")
    rng = np.random.default_rng(DENSE_SEED)
    for name, src, n_tokens in (("train", "train.ids.bin", 12_000_000), ("heldout", "heldout.ids.bin", 200_000)):
        ids = build_dense(read_corpus(os.path.join(d, src)), n_tokens, rng)
        write(ids, os.path.join(d, f"copy_dense.{name}.ids.bin"), "dense copy segments")
    for name, src, n_tokens, seed in (("train", "train.ids.bin", 12_000_000, TEXT_SEED),
                                      ("heldout", "heldout.ids.bin", 200_000, TEXT_SEED + 1)):
        ids = build_text(read_corpus(os.path.join(d, src)), n_tokens, np.random.default_rng(seed))
        write(ids, os.path.join(d, f"copy_text.{name}.ids.bin"), "text with copies over 0-220 tokens")
    rng = np.random.default_rng(TOY_SEED)
    for name, n_tokens in (("train", 8_000_000), ("heldout", 100_000)):
        write(build_toy(n_tokens, rng), os.path.join(d, f"copy_toy.{name}.ids.bin"), f"toy copy segments, ids < {TOY_VOCAB}")


if __name__ == "__main__":
    main()
