#!/usr/bin/env bash
# README command 1: installs, builds and runs the main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/build.sh
export OPENBLAS_NUM_THREADS=1
exec build/tools/sinkflow generate --model data/models/sinkflow-llama \
  --prompt "In the beginning God created the heaven and the earth. And the earth was" --max-new-tokens 64 --json "$@"
