#!/usr/bin/env bash
# Regenerates the golden logits of the tiny architectures (tests/data/golden/tiny-*.safetensors): a make-model
# checkpoint of each shape (seed 7) run through tools/reference_forward.py, the independent forward written from
# transformers' modeling code (Debian's python3-torch). tiny-dynamic is tiny-llama with a dynamic (NTK) RoPE over
# 32 positions, so that the 64-token reference input runs past them; tiny-phi3-long is tiny-phi3 with an original
# context of 32, so that its longrope long factors are used. tests/test_architectures.cpp rebuilds the
# same checkpoints and compares; after a change to make-model's weights, run this again.
# Usage: tools/make_golden.sh   (after tools/build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=build/tools/sinkflow
[[ -x $bin ]] || { echo "make_golden: $bin is missing: run tools/build.sh first" >&2; exit 2; }
dpkg-query -W -f='${Status}' python3-torch 2>/dev/null | grep -q "install ok installed" ||
  { echo "make_golden: needs Debian's python3-torch (apt-get install python3-torch python3-numpy)" >&2; exit 2; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for shape in tiny-llama3 tiny-yarn tiny-qwen3 tiny-gemma2 tiny-gemma3 tiny-mistral tiny-dynamic tiny-phi3 tiny-phi3-long; do
  base=$shape
  [[ $shape == tiny-dynamic ]] && base=tiny-llama
  [[ $shape == tiny-phi3-long ]] && base=tiny-phi3
  "$bin" make-model --shape "$base" --seed 7 --out "$scratch/$shape" 2>/dev/null
  if [[ $shape == tiny-dynamic ]]; then
    /usr/bin/python3 - "$scratch/$shape/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["max_position_embeddings"] = 32
c["rope_scaling"] = {"rope_type": "dynamic", "factor": 2.0}
json.dump(c, open(p, "w"), indent=2)
PY
  fi
  if [[ $shape == tiny-phi3-long ]]; then  # longrope's long factors: the 64-token input runs past 32 positions
    /usr/bin/python3 - "$scratch/$shape/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["original_max_position_embeddings"] = 32
json.dump(c, open(p, "w"), indent=2)
PY
  fi
  /usr/bin/python3 tools/reference_forward.py "$scratch/$shape" "tests/data/golden/$shape.safetensors"
done
