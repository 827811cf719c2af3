#!/usr/bin/env bash
# The GPU check, in one call of the device machine: builds sinkflow against the PyTorch found there (its LibTorch)
# and the Debian packages that tools/device_pack.sh put in device/debs/, runs the tests with
# SINKFLOW_TEST_DEVICE=cuda, then the benchmarks: decode ms/token of sink, dense and recompute at caches 256..4096
# on the smollm2-135m and llama-3.2-1b shapes in float16 and bfloat16; the ingest pipeline on the GPU; one
# training step of the shipped Llama's recipe (batch 8 x 256 tokens). Every step is time-boxed and the whole
# run fits a budget (DEVICE_CHECK_BUDGET_S), so a slow step cannot eat the others' time.
#
# Here:   tools/device_pack.sh                       (once; 2 MiB of .debs, ignored by git)
# There:  device tool run: command "tools/device_check.sh", carry ["device/debs"], timeout_s 600
#
# Results go to $OUT (default ./device-out): device.txt (nvidia-smi, torch, compilers, packed packages),
# steps.txt (each step: status, seconds), build.log, ctest.log, ctest.xml, bench.log, bench.jsonl (one JSON line
# per benchmark run: the --json summaries). At most 8 files, as the device tool brings back.
#
# Environment:
#   DEVICE_CHECK_DRY_RUN=1   everything but CUDA (the CPU build of the same route: LibTorch from the Python
#                            torch, the rest from the unpacked .debs; tests on the CPU; benchmarks skipped)
#   DEVICE_CHECK_TARGETS     ninja targets to build (default: the launcher and the test executables whose
#                            cases run on test::device(); "all" for everything). The dry run here built those
#                            88 ninja steps in 851 s on 2 cores: on 16, with LibTorch 2.x's heavier headers, about
#                            2-3 minutes, which leaves the budget room for the tests and the benchmarks.
#   DEVICE_CHECK_BUDGET_S    seconds for the whole run (default 540)
#   DEVICE_CHECK_CAPS=0      no per-step caps, only the budget (a dry run on a slow machine)
#   DEVICE_CHECK_CTEST_ARGS  extra ctest arguments (default, unless all is built: -E _NOT_BUILT, which leaves out
#                            the placeholders catch_discover_tests adds for executables not built)
#   JOBS                     build parallelism (default: nproc)
#   PYTHON                   the Python that holds torch (default python3)
#   DEPS_PREFIX              where the .debs are unpacked (default /tmp/sinkflow-deps)
#   BUILD_DIR                (default build-device)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dry=${DEVICE_CHECK_DRY_RUN:-0}
out=${OUT:-$root/device-out}
prefix=${DEPS_PREFIX:-/tmp/sinkflow-deps}
build=${BUILD_DIR:-build-device}
python=${PYTHON:-python3}
jobs=${JOBS:-$(nproc)}
budget=${DEVICE_CHECK_BUDGET_S:-540}
start=$(date +%s)
mkdir -p "$out"
steps=$out/steps.txt bench_log=$out/bench.log bench_json=$out/bench.jsonl
: >"$steps"; : >"$bench_log"; : >"$bench_json"

say() { echo "device_check: $*" | tee -a "$steps"; }
left() { echo $((budget - ($(date +%s) - start))); }
# step NAME CAP_S LOG CMD...: runs CMD under timeout min(CAP_S, budget left), output appended to LOG; records
# status and seconds in steps.txt. Returns CMD's status (124: timed out).
step() {
  local name=$1 cap=$2 log=$3; shift 3
  local t0 limit rc; t0=$(date +%s); limit=$(left)
  ((${DEVICE_CHECK_CAPS:-1} && limit > cap)) && limit=$cap
  if ((limit < 5)); then say "$name: skipped (budget spent)"; return 125; fi
  echo "== $name ($(date -u +%T), limit ${limit}s): $*" >>"$log"
  timeout --kill-after=5 "$limit" "$@" >>"$log" 2>&1; rc=$?
  say "$name: $([[ $rc == 0 ]] && echo ok || { [[ $rc == 124 ]] && echo "timed out after ${limit}s" || echo "failed ($rc)"; }) in $(($(date +%s) - t0))s"
  return $rc
}

# --- 1. The machine ---------------------------------------------------------------------------------------
{
  echo "# device_check $(date -u +%FT%TZ), dry run: $dry, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  if ((dry)); then echo "no GPU (dry run)"; else nvidia-smi || echo "nvidia-smi failed"; fi
  echo; "$python" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda,
    "available", torch.cuda.is_available(), "cxx11_abi", torch._C._GLIBCXX_USE_CXX11_ABI, "python", sys.version.split()[0])'
  echo; ${CXX:-c++} --version | head -1; cmake --version | head -1; echo "ninja $(ninja --version)"
  command -v nvcc >/dev/null && nvcc --version | tail -2
  echo; echo "# packed Debian packages"; cat device/debs/MANIFEST 2>/dev/null || echo "none: run tools/device_pack.sh here"
} >"$out/device.txt" 2>&1

# --- 2. LibTorch from the Python torch, and its C++ ABI ---------------------------------------------------
torch_prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null) || {
  say "no torch importable by $python"; exit 1; }
abi=$("$python" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
# The Debian packages are built with the C++11 ABI (std::__cxx11::basic_string). oneTBB passes no std::string
# across its boundary (nm -DC libtbb.so.12 shows no __cxx11 symbol), hnswlib, nlohmann-json and CLI11 are
# header-only, but yaml-cpp (YAML::Load(std::string), Node::as<std::string>), libfmt/libspdlog and the
# Catch2WithMain static library do: with a pre-C++11-ABI torch (PyTorch wheels before 2.7) they would not link.
# The route then is to rebuild those three from source with -D_GLIBCXX_USE_CXX11_ABI=0; not packed here,
# since the device machine's PyTorch (2.11) uses the C++11 ABI.
if [[ $abi != 1 ]]; then
  say "torch uses the pre-C++11 ABI (_GLIBCXX_USE_CXX11_ABI=0): the packed yaml-cpp, fmt/spdlog and Catch2 use" \
      "the C++11 ABI and cannot be linked with it; use a PyTorch >= 2.7 (C++11 ABI) or rebuild those three with ABI 0"
  exit 1
fi
say "torch cmake prefix $torch_prefix, C++11 ABI $abi"

# --- 3. The carried Debian packages, unpacked into a prefix that CMake prefers over /usr -----------------
rm -rf "$prefix"; mkdir -p "$prefix"
shopt -s nullglob; debs=(device/debs/*.deb); shopt -u nullglob
if ((${#debs[@]} == 0)); then say "device/debs/ holds no .deb: run tools/device_pack.sh here and carry device/debs"; exit 1; fi
for f in "${debs[@]}"; do dpkg-deb -x "$f" "$prefix" || { say "dpkg-deb -x $f failed"; exit 1; }; done
multiarch=$(ls -d "$prefix"/usr/lib/*-linux-gnu | head -1)
export LD_LIBRARY_PATH="$multiarch${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "unpacked ${#debs[@]} packages into $prefix"

# --- 4. Configure and build -------------------------------------------------------------------------------
cuda_flags=()
if ((!dry)); then
  cuda_flags=(-DSINKFLOW_WITH_CUDA=ON)
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}  # H100/H200; spares LibTorch's CMake the detection
  # LibTorch 2.x's CMake (cmake/public/cuda.cmake) calls enable_language(CUDA) and requires nvcc's version to
  # equal the toolkit's: name one nvcc for both, and the architecture, so that nothing is guessed.
  nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  cuda_flags+=(-DCMAKE_CUDA_COMPILER="$nvcc" -DCUDAToolkit_ROOT="$(dirname "$(dirname "$nvcc")")"
               -DCMAKE_CUDA_ARCHITECTURES=${CMAKE_CUDA_ARCHITECTURES:-90})
fi
# CMAKE_PREFIX_PATH is searched before the system paths: the unpacked prefix wins over anything in /usr.
step configure 120 "$out/build.log" cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix/usr" "${cuda_flags[@]}" || { tail -40 "$out/build.log"; exit 1; }
# Where each dependency was found (the proof that the prefix, not /usr, was used).
grep -E '^(Torch|TBB|yaml-cpp|spdlog|fmt|nlohmann_json|CLI11|Catch2)_DIR:|^HNSWLIB_INCLUDE_DIR:' "$build/CMakeCache.txt" |
  tee -a "$steps"
if grep -E '^(TBB|yaml-cpp|spdlog|fmt|nlohmann_json|CLI11|Catch2)_DIR:|^HNSWLIB_INCLUDE_DIR:' "$build/CMakeCache.txt" |
   grep -v "$prefix" >/dev/null; then
  say "a dependency was found outside $prefix (see above)"
fi
read -r -a targets <<<"${DEVICE_CHECK_TARGETS:-sinkflow test_decoder test_kv_cache test_kv_align test_train}"
step build 300 "$out/build.log" ninja -C "$build" -j"$jobs" "${targets[@]}" || { tail -60 "$out/build.log"; exit 1; }
for exe in "$build/tools/sinkflow" "$build"/tests/test_*; do
  [[ -x $exe ]] && ldd "$exe" | grep -E 'yaml-cpp|tbb|spdlog|fmt|libtorch|c10' | sed "s|^|$(basename "$exe"): |" >>"$steps" && break
done

# --- 5. Tests on the device -------------------------------------------------------------------------------
if ((dry)); then export SINKFLOW_TEST_DEVICE=cpu; else export SINKFLOW_TEST_DEVICE=cuda; fi
not_built=-E\ _NOT_BUILT; [[ ${targets[*]} == all ]] && not_built=
read -r -a ctest_args <<<"${DEVICE_CHECK_CTEST_ARGS:-$not_built}"
step ctest 120 "$out/ctest.log" ctest --test-dir "$build" -j"$jobs" --timeout 90 --output-on-failure \
  --output-junit "$out/ctest.xml" "${ctest_args[@]}"
grep -E 'tests passed|tests failed|The following tests' -A30 "$out/ctest.log" | head -40 | tee -a "$steps"

((dry)) && { say "dry run: benchmarks skipped; done in $(($(date +%s) - start))s"; exit 0; }

# --- 6. Benchmarks (each line of bench.jsonl is one --json summary) ----------------------------------------
sf=$build/tools/sinkflow
export BENCH_JSON=$bench_json
bench() {  # bench NAME CAP_S ARGS...: with --json the table goes to stderr (bench.log), the JSON line to bench.jsonl
  local name=$1 cap=$2; shift 2
  step "$name" "$cap" "$bench_log" sh -c 'exec "$@" --json >>"$BENCH_JSON"' _ "$sf" "$@"
}
models=/tmp/sinkflow-models
for shape in smollm2-135m llama-3.2-1b; do
  step "make-model $shape" 60 "$bench_log" "$sf" make-model --shape "$shape" --dtype bfloat16 --out "$models/$shape"
done
for shape in smollm2-135m llama-3.2-1b; do
  bench "latency $shape" 90 bench latency --model "$models/$shape" --device cuda --dtypes float16,bfloat16 \
    --cache 256,512,1024,2048,4096 --policies sink,dense,recompute --steps 30 --recompute-steps 3
done
bench "latency llama-3.2-1b sink vs recompute at 4096" 60 bench latency --model "$models/llama-3.2-1b" \
  --device cuda --dtype float16 --cache 4096 --policies sink,recompute --steps 100 --recompute-steps 20
bench "pipeline ingest" 60 bench pipeline configs/ingest.yaml --set resources.models.lm.device=cuda
bench "train step (configs/train/llama.json: batch 8 x 256)" 45 bench loss --model data/models/sinkflow-llama \
  --device cuda --batch 8 --seq 256 --reps 5
say "done in $(($(date +%s) - start))s"
