#!/usr/bin/env bash
# The KV-Align comparison table (issue 7): held-out perplexity and per-token cost of the GPT-2-family model's
# cache policies at several cache sizes, every policy evicting cache/8 tokens at once.
#   window     no sinks, stale K/V (the plain shifted window: "none")
#   sink       4 sinks + window, stale K/V
#   kv-align   4 sinks + window, K/V realigned by the networks after each eviction
#   recompute  4 sinks + window rebuilt from scratch every step (exact)
#   cluster    4 sinks + 8 centroids of the evicted K/V + window (k-means++, online)
# Usage: tools/kv_align_table.sh [MODEL] [TEXT] [TOKENS] [CACHES]
# Writes one JSON line per run to $OUT (default /tmp/kv_align_table.jsonl) and prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-data/models/sinkflow-gpt2}
text=${2:-data/corpus/heldout.txt}
tokens=${3:-10000}
caches=${4:-32 64 128 256}
out=${OUT:-/tmp/kv_align_table.jsonl}
bin=build/tools/sinkflow
if [[ ! -f "$text" ]]; then
  echo "kv_align_table: text '$text' not found (data/corpus/ is made by tools/build_corpus.sh; or give a text file" \
       "as the second argument, e.g. data/docs/haystack_needle.txt)" >&2
  exit 2
fi
[[ -x "$bin" ]] || { echo "kv_align_table: $bin not found (run tools/build.sh first)" >&2; exit 1; }
: > "$out"
for cache in $caches; do
  block=$((cache / 8))
  for policy in window sink kv-align recompute cluster; do
    sinks=4 memory=0
    [ "$policy" = window ] && sinks=0
    [ "$policy" = cluster ] && memory=8
    window=$((cache - sinks - memory))
    # A failed run stops the table with sinkflow's own message (no JSON to parse).
    line=$("$bin" ppl --model "$model" --text "$text" --tokens "$tokens" --policy "$policy" --sinks "$sinks" \
      --memory "$memory" --window "$window" --evict-block "$block" --json 2>/tmp/kv_align_table.err) ||
      { cat /tmp/kv_align_table.err >&2; exit 1; }
    python3 -c "import json,sys; j=json.loads(sys.argv[1]); j['cache']=$cache; print(json.dumps(j))" "$line" >> "$out"
  done
done
python3 - "$out" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
caches = sorted({r["cache"] for r in rows})
policies = ["window", "sink", "kv-align", "recompute", "cluster"]
get = {(r["cache"], r["policy"]): r for r in rows}
print("| cache (evict block) | " + " | ".join(f"{p} PPL" for p in policies) + " | kv-align / recompute PPL | "
      + " | ".join(f"{p} ms/token" for p in ["sink", "kv-align", "recompute"]) + " | kv-align / recompute cost |")
print("|" + "---|" * (len(policies) + 6))
for c in caches:
    r = {p: get.get((c, p)) for p in policies}
    ppl = [f"{r[p]['ppl']:.2f}" if r[p] else "-" for p in policies]
    ms = [f"{r[p]['ms_per_token']:.2f}" if r[p] else "-" for p in ["sink", "kv-align", "recompute"]]
    ratio = r["kv-align"]["ppl"] / r["recompute"]["ppl"]
    cost = r["kv-align"]["ms_per_token"] / r["recompute"]["ms_per_token"]
    print(f"| {c} ({c // 8}) | " + " | ".join(ppl) + f" | {ratio:.3f} | " + " | ".join(ms) + f" | {cost:.3f} |")
print(f"\n{rows[0]['tokens']} held-out tokens per run; ms/token from each run's own wall time (one policy per run).")
EOF
