#!/usr/bin/env bash
# `sinkflow bench memory --resume`: a run SIGKILLed twice (while it adds, seals and merges) and resumed each time
# ends with the same directory as a run that was never stopped: the same log, the same in-RAM index file and the
# same sealed segments, byte for byte (segments compared by content: their numbers are names), and the same
# recall at the points both measured. Then --reuse measures the partly filled directory of a third run.
# Usage: tests/bench_memory_resume.sh path/to/sinkflow
set -euo pipefail
bin=$1
work=$(mktemp -d /tmp/sinkflow_test_resume_XXXXXX)
trap 'kill -9 $pid 2>/dev/null || true; rm -rf "$work"' EXIT
pid=
args=(bench memory --chunks 20000 --first-point 5000 --segment-chunks 1000 --merge-nice 0 --queries 100 --json)

# "chunks:recall" of each point of a --json summary.
recall() {
  python3 -c 'import json,sys
print(" ".join("%d:%.4f" % (p["chunks"], p["recall_at_10"]) for p in json.load(sys.stdin)["points"]))'
}
# Content digests of a directory's files: the log, index.bin, and each segment file's digest, sorted.
digest() {
  (cd "$1" && md5sum chunks.log index.bin meta.json && md5sum segment-*.bin | cut -d' ' -f1 | sort)
}
# Runs the bench into $1 in the background and SIGKILLs it once its log holds $2 bytes.
run_and_kill() {
  "$bin" "${args[@]}" --dir "$1" "${@:3}" >/dev/null 2>"$work/killed.err" &
  pid=$!
  while [ "$(stat -c %s "$1/chunks.log" 2>/dev/null || echo 0)" -lt "$2" ]; do
    kill -0 $pid 2>/dev/null || { echo "the run ended before it was killed"; cat "$work/killed.err"; exit 1; }
    sleep 0.05
  done
  kill -9 $pid
  wait $pid 2>/dev/null || true
}

"$bin" "${args[@]}" --dir "$work/whole" 2>"$work/whole.err" | recall >"$work/whole.recall"

run_and_kill "$work/resumed" 8000000                # ~3,000 chunks: the first segments sealed
run_and_kill "$work/resumed" 30000000 --resume      # ~11,500: seals every 1,000, merges every ~4,000
"$bin" "${args[@]}" --dir "$work/resumed" --resume 2>"$work/resumed.err" | recall >"$work/resumed.recall"
grep -q "resuming after them" "$work/resumed.err" || { echo "the last run did not resume"; exit 1; }

if ! diff <(digest "$work/whole") <(digest "$work/resumed"); then
  echo "FAIL: the killed and resumed directory differs from the uninterrupted one"; exit 1
fi
# The resumed run measures only the last point (the one at 5,000 was passed before its last start).
whole_last=$(tr ' ' '\n' <"$work/whole.recall" | tail -1)
resumed_last=$(tr ' ' '\n' <"$work/resumed.recall" | tail -1)
if [ "$whole_last" != "$resumed_last" ]; then
  echo "FAIL: recall at the end $resumed_last (resumed) vs $whole_last (uninterrupted)"; exit 1
fi

# --reuse of a partly filled directory: one point, at the chunks it holds, recall against the oracle over those.
run_and_kill "$work/partial" 20000000
out=$("$bin" "${args[@]}" --dir "$work/partial" --reuse 2>"$work/partial.err")
points=$(echo "$out" | recall)
[ "$(echo "$points" | wc -w)" = 1 ] || { echo "FAIL: --reuse measured points $points, expected one"; exit 1; }
n=${points%%:*} r=${points##*:}
python3 -c "import sys; sys.exit(0 if 5000 < $n < 20000 and $r >= 0.95 else 1)" ||
  { echo "FAIL: --reuse of a partial directory: $n chunks, recall $r"; exit 1; }
echo "ok: killed twice and resumed = uninterrupted ($resumed_last); --reuse of $n of 20000 chunks: recall $r"
