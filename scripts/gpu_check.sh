#!/usr/bin/env bash
# One call on a CUDA machine checks everything that needs a GPU:
#   1. builds hald_ext in place with the CUDA kernels (TORCH_CUDA_ARCH_LIST=9.0 unless set) and prints
#      build_info(); stops if the CUDA kernels are not usable;
#   2. runs every CUDA test file (python_tests/test_*cuda*.py; none may skip), then the whole suite;
#   3. compute-sanitizer memcheck and racecheck over a reduced set of CUDA tests;
#   4. every benchmark (benchmarks/bench_*.py); their JSON lands in benchmarks/results/, named after
#      the GPU (common.device_tag), and is copied to RESULTS_DIR.
#   scripts/gpu_check.sh [RESULTS_DIR]      (default: gpu_check_<GPU name>)
# Logs land in RESULTS_DIR; the exit status is non-zero if the build, a test or a sanitizer failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
tag=$(echo "$gpu" | tr ' /' '__')
out=${1:-gpu_check_$tag}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
status=0

echo "== build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
$PY setup.py build_ext --inplace -q >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
$PY -c "import hald_ext, json; print(json.dumps(hald_ext.build_info()))" | tee "$out/build_info.json"
$PY -c "import hald_ext, sys; sys.exit(0 if hald_ext.build_info()['cuda_available'] else 1)" \
  || { echo "the build has no usable CUDA kernels: stopping"; exit 1; }

echo "== CUDA tests"
cuda_tests=$(ls python_tests/test_*cuda*.py)
$PY -m pytest $cuda_tests -q -rs -p no:cacheprovider 2>&1 | tee "$out/tests_cuda.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if grep -q "^SKIPPED" "$out/tests_cuda.log"; then
  echo "CUDA tests were skipped on a GPU machine (see $out/tests_cuda.log)"
  status=1
fi
echo "== whole suite"
$PY -m pytest python_tests -q -rs -p no:cacheprovider 2>&1 | tee "$out/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$SAN" ]; then
  # A reduced set: each kernel once, with the awkward inputs (check=False with bad values, CutMix,
  # uint16 codes, every codec layout). No caching allocator, so memcheck sees every allocation's bounds.
  reduced=(
    "python_tests/test_crop_cuda.py" "-k" "bad_values or uint16 or cutmix_draw or fused_batch"
    "python_tests/test_label_codec_cuda.py" "-k" "lower_class_id or refuses_bad_logits or (logits_matches and torch.float64)"
  )
  for f in python_tests/test_*cuda*.py; do  # CUDA test files of other ops: their first failing test stops
    case "$f" in *test_crop_cuda.py|*test_label_codec_cuda.py) ;; *) reduced+=("$f" "-k" "not large");; esac
  done
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer $tool"
    log="$out/sanitizer_$tool.log"
    : >"$log"
    for ((i = 0; i < ${#reduced[@]}; i += 3)); do
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool "$tool" --error-exitcode 9 \
        $PY -m pytest "${reduced[i]}" "${reduced[i+1]}" "${reduced[i+2]}" -q -x -p no:cacheprovider >>"$log" 2>&1 \
        && echo "$tool ${reduced[i]}: clean" || { echo "$tool ${reduced[i]}: FAILED (see $log)"; status=1; }
    done
  done
else
  echo "compute-sanitizer not found: NOT run" | tee "$out/sanitizer.txt"
  status=1
fi

for bench in benchmarks/bench_*.py; do
  name=$(basename "$bench" .py)
  echo "== $name"
  $PY "$bench" 2>&1 | grep -v "^W[0-9]" | tee "$out/${name}_$tag.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "$name failed"; status=1; }
done
cp benchmarks/results/*"$tag"*.json "$out/" 2>/dev/null || true
ls "$out"
exit "$status"
