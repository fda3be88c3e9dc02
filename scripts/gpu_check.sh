#!/usr/bin/env bash
# On a CUDA machine: build hald_ext from source, run the whole test suite (CUDA tests included), run
# compute-sanitizer over the CUDA tests where it exists, and run every benchmark.
#   scripts/gpu_check.sh [RESULTS_DIR]      (default: benchmarks/results)
# Logs and JSON results land in RESULTS_DIR; the exit status is the test suite's.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
echo "== build"
$PY -m pip install --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
$PY -c "import hald_ext, json; print(json.dumps(hald_ext.build_info()))" | tee "$out/build_info.json"

echo "== tests"
$PY -m pytest python_tests -q -rs -p no:cacheprovider 2>&1 | tee "$out/tests.log"
status=${PIPESTATUS[0]}

SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$SAN" ]; then
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer $tool"
    "$SAN" --tool "$tool" --error-exitcode 9 $PY -m pytest python_tests -q -k cuda -p no:cacheprovider \
      >"$out/sanitizer_$tool.log" 2>&1 && echo "$tool: clean" || { echo "$tool: FAILED (see log)"; status=1; }
  done
else
  echo "compute-sanitizer not found: skipped" | tee "$out/sanitizer.txt"
fi

for bench in benchmarks/bench_*.py; do
  name=$(basename "$bench" .py)
  echo "== $name"
  $PY "$bench" 2>&1 | grep -v "^W[0-9]" | tee "$out/$name.log"
done
if [ "$(realpath "$out")" != "$(realpath benchmarks/results)" ]; then
  cp benchmarks/results/*.json "$out/" 2>/dev/null || true
fi
exit "$status"
