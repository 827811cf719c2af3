#!/usr/bin/env bash
# README command 1: installs, builds and runs the main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/build.sh
export OPENBLAS_NUM_THREADS=1
exec build/tools/sinkflow run configs/ingest.yaml --json "$@"
