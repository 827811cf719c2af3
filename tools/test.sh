#!/usr/bin/env bash
# README command 2: installs, configures, builds and runs the whole (default) test suite.
# Slow tests carry the Catch2 tag [.slow] and are hidden; run them with: build/tests/<binary> "[.slow]"
set -euo pipefail
cd "$(dirname "$0")/.."
tools/build.sh
tools/fetch_tokenizers.sh  # the real tokenizer files the tokenizer tests compare against
export OPENBLAS_NUM_THREADS=1
ctest --test-dir build --output-on-failure -j"$(nproc)" "$@"
