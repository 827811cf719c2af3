#!/usr/bin/env bash
# Side-by-side CPU benchmark: sinkflow and llama.cpp on the same weights, runs interleaved (A B A B ...), the
# load average logged before each, and a table of ratios at the end. Not a test: it prints measurements.
#
#   LLAMA_BIN=/path/to/llama.cpp/build/bin tools/bench_vs_llamacpp.sh MODEL_DIR [GGUF_DIR]
#
# MODEL_DIR  a Llama-family Hugging Face folder (e.g. `sinkflow make-model --shape smollm2-135m --out DIR`).
# GGUF_DIR   holds the same weights as llama.cpp files: f32.gguf, f16.gguf, q8_0.gguf (default MODEL_DIR/gguf).
#            Missing ones are written by SF2GGUF (a GGUF writer for Hugging Face Llama folders, run with Debian's
#            python3: needs python3-numpy, python3-sentencepiece and llama.cpp's gguf-py on GGUF_PY).
# Environment: LLAMA_BIN (llama.cpp's bin folder with llama-batched-bench; required), SF (the sinkflow launcher,
# default build/tools/sinkflow), ROUNDS (3), THREADS (1), DEPTHS (256,512,1024,4096), STEPS (20: timed decode
# steps per depth), OUT (where the runs go; default a fresh folder under /tmp), KV_DTYPE (sinkflow's KV cache:
# float32, the default, or bfloat16: 2 bytes an element like llama.cpp's default float16 cache), LLAMA_EXTRA (more
# llama.cpp flags, e.g. "-ctk f32 -ctv f32" for a float32 KV cache like sinkflow's default; the floor column
# assumes float16), PARSE_ONLY=1 (print the table of the runs already in OUT).
#
# Each round runs, pair by pair, sinkflow (`bench latency --dtypes D --policies dense`: the cache filled to each
# depth in 512-token blocks, then one-token steps) and llama.cpp (`llama-batched-bench -npp DEPTHS -ub 512 -npl 1`:
# a prefill of each depth, then decode), sinkflow first in odd rounds and llama.cpp first in even ones, so that
# the two arms of a pair run minutes apart at most. Pairs compared: sinkflow float32 vs llama.cpp f32, sinkflow
# bfloat16 vs llama.cpp f16 (both 2 bytes per weight), sinkflow int8 vs llama.cpp q8_0.
# Ratios < 1 mean sinkflow takes less time per token: the ratio of the two medians, and the median of the rounds'
# ratios (each round's pair ran side by side). The memory-bandwidth floor of each is the bytes a decode step must
# read (weights + the KV cache at that depth: KV_DTYPE for sinkflow, llama.cpp's default float16) over one core's
# read bandwidth, which sinkflow measures at the start of each of its runs.
set -euo pipefail
usage() { sed -n '2,12p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
MODEL=$1
GGUF_DIR=${2:-$MODEL/gguf}
HERE=$(cd "$(dirname "$0")/.." && pwd)
SF=${SF:-$HERE/build/tools/sinkflow}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-1}
DEPTHS=${DEPTHS:-256,512,1024,4096}
STEPS=${STEPS:-20}
KV_DTYPE=${KV_DTYPE:-float32}
OUT=${OUT:-$(mktemp -d /tmp/bench_vs_llamacpp.XXXXXX)}
[ -f "$MODEL/config.json" ] || { echo "bench_vs_llamacpp: $MODEL/config.json: not found (expected a Hugging Face model folder)" >&2; exit 2; }
[ -x "$SF" ] || { echo "bench_vs_llamacpp: $SF: not an executable (build sinkflow first, or set SF)" >&2; exit 2; }
[ -n "${LLAMA_BIN:-}" ] || { echo "bench_vs_llamacpp: set LLAMA_BIN to llama.cpp's bin folder (with llama-batched-bench)" >&2; exit 2; }
BB=$LLAMA_BIN/llama-batched-bench
[ -x "$BB" ] || { echo "bench_vs_llamacpp: $BB: not an executable" >&2; exit 2; }
mkdir -p "$GGUF_DIR" "$OUT"
for t in f32 f16 q8_0; do
  if [ ! -s "$GGUF_DIR/$t.gguf" ]; then
    [ -n "${SF2GGUF:-}" ] || { echo "bench_vs_llamacpp: $GGUF_DIR/$t.gguf is missing; set SF2GGUF (and GGUF_PY) to write it" >&2; exit 2; }
    PYTHONPATH=${GGUF_PY:-} /usr/bin/python3 "$SF2GGUF" "$MODEL" "$GGUF_DIR/$t.gguf" --outtype "$t" >&2
  fi
done
max_depth=$(tr ',' '\n' <<<"$DEPTHS" | sort -n | tail -1)
TG=$((STEPS + 4))
stamp() { echo "$(date +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)"; }
for r in $(seq 1 "$ROUNDS"); do
  [ "${PARSE_ONLY:-0}" = 1 ] && break
  for pair in float32:f32 bfloat16:f16 int8:q8_0; do
    d=${pair%%:*}
    t=${pair##*:}
    run_sinkflow() {
      echo "round $r/$ROUNDS sinkflow $d  ($(stamp))" >&2
      "$SF" bench latency --model "$MODEL" --dtypes "$d" --policies dense --cache "$DEPTHS" --steps "$STEPS" \
        --warmup 3 --prefill-block 512 --threads "$THREADS" --kv-dtype "$KV_DTYPE" --json \
        >"$OUT/r$r-sinkflow-$d.json" 2>"$OUT/r$r-sinkflow-$d.log"
    }
    run_llama() {
      echo "round $r/$ROUNDS llama.cpp $t  ($(stamp))" >&2
      "$BB" -m "$GGUF_DIR/$t.gguf" -c $((max_depth + TG + 64)) -b 2048 -ub 512 -npp "$DEPTHS" -ntg "$TG" -npl 1 \
        -t "$THREADS" -tb "$THREADS" ${LLAMA_EXTRA:-} --output-format jsonl >"$OUT/r$r-llama-$t.jsonl" 2>"$OUT/r$r-llama-$t.log"
    }
    if [ $((r % 2)) = 1 ]; then run_sinkflow; run_llama; else run_llama; run_sinkflow; fi
  done
done
echo "runs in $OUT" >&2
/usr/bin/python3 - "$OUT" "$MODEL" "$GGUF_DIR" "$ROUNDS" <<'EOF'
import json, os, statistics, sys
out, model, gguf, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = json.load(open(os.path.join(model, "config.json")))
n_kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
d_head = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
kv_f16_per_token = 2 * cfg["num_hidden_layers"] * n_kv * d_head * 2
sf, ll, bw = {}, {}, []
for r in range(1, rounds + 1):
    # One file per dtype (older runs: one file of all three).
    names = [f"r{r}-sinkflow-{d}.json" for d in ("float32", "bfloat16", "int8")]
    if not os.path.exists(os.path.join(out, names[0])):
        names = [f"r{r}-sinkflow.json"]
    for name in names:
        j = json.load(open(os.path.join(out, name)))
        bw.append(j["read_bandwidth_gbs"] * 1e9)
        for row in j["rows"]:
            sf.setdefault((row["dtype"], row["cache"]), []).append(row)
    for t in ("f32", "f16", "q8_0"):
        for line in open(os.path.join(out, f"r{r}-llama-{t}.jsonl")):
            if line.strip().startswith("{"):
                x = json.loads(line)
                ll.setdefault((t, x["pp"]), []).append(x)
bandwidth = statistics.median(bw)
med = statistics.median
pairs = [("float32", "f32"), ("bfloat16", "f16"), ("int8", "q8_0")]
depths = sorted({d for (_, d) in sf})
print(f"one core reads {bandwidth / 1e9:.1f} GB/s (median of {rounds} runs); medians of {rounds} interleaved rounds, "
      f"{os.cpu_count()} CPUs, threads as given")
print("decode, ms per token at a depth (x floor: time / bytes-to-read over the bandwidth)")
def cells():
    for d in depths:
        for s, l in pairs:
            if (s, d) in sf and (l, d) in ll:
                yield d, s, l
print(f"{'depth':>6} {'pair':>16} {'sinkflow':>9} {'x floor':>8} {'llama.cpp':>9} {'x floor':>8} {'ratio':>7} "
      f"{'rounds':>7}  per round")
for d, s, l in cells():
    a = med(x["p50_ms"] for x in sf[(s, d)])
    af = med(x["floor_ms"] for x in sf[(s, d)])
    b = med(1000.0 / x["speed_tg"] for x in ll[(l, d)])
    bf = 1000.0 * (os.path.getsize(os.path.join(gguf, f"{l}.gguf")) + kv_f16_per_token * d) / bandwidth
    per = [x["p50_ms"] / (1000.0 / y["speed_tg"]) for x, y in zip(sf[(s, d)], ll[(l, d)])]
    print(f"{d:>6} {s + '/' + l:>16} {a:>9.2f} {a / af:>8.2f} {b:>9.2f} {b / bf:>8.2f} {a / b:>7.2f} "
          f"{med(per):>7.2f}  {' '.join(f'{p:.2f}' for p in per)}")
print("prefill from an empty cache, tokens/s (512-token blocks); ratio > 1: sinkflow faster")
print(f"{'tokens':>6} {'pair':>16} {'sinkflow':>9} {'llama.cpp':>9} {'ratio':>7}")
for d, s, l in cells():
    a = med(x["fill_tokens_per_s"] for x in sf[(s, d)])
    b = med(x["speed_pp"] for x in ll[(l, d)])
    print(f"{d:>6} {s + '/' + l:>16} {a:>9.1f} {b:>9.1f} {a / b:>7.2f}")
EOF
