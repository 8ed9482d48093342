#!/usr/bin/env bash
# Runs on the lent GPU machine, in one device call (carry [".deps"]), from the bundle scripts/bundle-gpu-deps.sh
# made (with TESSERA_BUNDLE_BASELINE for the before/after rows): builds the snapshot, runs test_cuda, benchmarks
# it on a synthetic TinyLlama (single stream, --parallel, cache formats at depth 4096, the batched kernels), then,
# while the call's time allows, builds the baseline and alternates the two in the single-stream bench.
# Logs go to $OUT; TESSERA_TIME_LIMIT (default 570 s) is the time the call may take.
set -o pipefail
bundle=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-/tmp}
start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }
left() { echo $((${TESSERA_TIME_LIMIT:-570} - $(elapsed))); }
step() { echo "[$(elapsed) s] $*"; }

nvidia-smi -L
TESSERA_EXTRA_TARGETS=cuda_batch_bench bash "$bundle/gpu-build.sh" -DTESSERA_BUILD_BENCH=ON >"$out/build.log" 2>&1
step "build: exit $?"
tail -3 "$out/build.log"
export LD_LIBRARY_PATH=$bundle/prefix/usr/lib/x86_64-linux-gnu
head=$bundle/tree/build-gpu
timeout 150 "$head/tests/test_cuda" --gtest_brief=1 >"$out/test_cuda.log" 2>&1
step "test_cuda: exit $?"
grep -E "FAILED|PASSED|Failure" "$out/test_cuda.log" | head -40

model=/tmp/tinyllama-Q4_K_M.gguf
"$head/tessera" synth --preset tinyllama-1.1b --type Q4_K_M -o "$model" >/dev/null 2>&1
bench() { timeout "$1" "$2/tessera" bench -m "$model" --backend cuda "${@:3}" 2>&1 | tee -a "$out/bench.log"; }
bench 60 "$head" -p 512 -n 128 -r 3 | tail -4
bench 60 "$head" --parallel 1,8,32,64 -p 128 -n 64 -r 2 | tail -8
for cache in f16 q8_0 q4_0; do bench 40 "$head" --cache-type "$cache" -p 512 -n 128 -d 4096 -r 2 | tail -3; done
timeout 60 "$head/bench/cuda_batch_bench" --benchmark_min_time=0.1s 2>&1 | tee "$out/cuda_batch_bench.log" | tail -25
step "benchmarks of the snapshot done"

if [ -d "$bundle/baseline" ] && [ "$(left)" -gt 200 ]; then
  timeout $(($(left) - 60)) env TESSERA_TREE=baseline TESSERA_TARGETS=tessera bash "$bundle/gpu-build.sh" >"$out/baseline-build.log" 2>&1
  step "baseline build: exit $?"
  for tree in baseline tree baseline tree; do
    [ "$(left)" -gt 25 ] && bench 25 "$bundle/$tree/build-gpu" -p 512 -n 128 -r 3 | tail -3 | sed "s|^|$tree |"
  done
fi
step done
