#!/usr/bin/env bash
# Installs sinkflow's build and run dependencies from Debian. Idempotent: skips what is present.
# Usage: tools/install_deps.sh [--corpus]   (--corpus also installs the public-domain text packages)
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config ccache lld
      libtorch-dev libopenblas0-pthread libtbb-dev libhnswlib-dev libyaml-cpp-dev libspdlog-dev
      catch2 nlohmann-json3-dev libcli11-dev libdnnl-dev)
if [[ "${1:-}" == "--corpus" ]]; then
  pkgs+=(sentencepiece bible-kjv bible-kjv-text jargon-text)  # spm_train, corpus text
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install_deps: installing ${missing[*]}"
  sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install_deps: all ${#pkgs[@]} packages present"
fi
