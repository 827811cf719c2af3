#!/usr/bin/env bash
# The house's one-way arrows, checked on the sources: models/ <- nodes/ <- graph/ <- tools/, and inside
# models/ the folders io <- text <- cache <- nn <- stream <- memory <- lab (a file includes only its own
# folder or the ones before it); nodes/ and graph/ never include models/lab/.
# Prints every include that runs back up and exits 1 if there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
order=(io text cache nn stream memory lab)
rank() { local i; for i in "${!order[@]}"; do [[ ${order[$i]} == "$1" ]] && { echo "$i"; return; }; done; echo 99; }
bad=0
for f in models/*/*.h models/*/*.cpp; do
  own=$(rank "$(basename "$(dirname "$f")")")
  while IFS= read -r inc; do
    dir=${inc#models/}; dir=${dir%%/*}
    if (( $(rank "$dir") > own )); then echo "$f includes $inc (a folder above its own)"; bad=1; fi
  done < <(grep -o '#include "models/[^"]*"' "$f" | sed 's/#include "//;s/"$//')
done
for f in models/*/*.h models/*/*.cpp; do
  if grep -q '#include "\(nodes\|graph\|tools\)/' "$f"; then echo "$f includes nodes/, graph/ or tools/"; bad=1; fi
done
for f in nodes/*.h nodes/*.cpp graph/*.h graph/*.cpp; do
  if grep -q '#include "models/lab/' "$f"; then echo "$f includes models/lab/ (linked only by tools/ and tests/)"; bad=1; fi
done
for f in nodes/*.h nodes/*.cpp; do
  if grep -q '#include "\(graph\|tools\)/' "$f"; then echo "$f includes graph/ or tools/"; bad=1; fi
done
for f in graph/*.h graph/*.cpp; do
  if grep -q '#include "tools/' "$f"; then echo "$f includes tools/"; bad=1; fi
done
if (( bad )); then exit 1; fi
echo "layers: every include runs one way"
