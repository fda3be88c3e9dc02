#!/usr/bin/env bash
# The GPU checks of issue 21 as two commands that each fit one device call (docs/gpu.md):
#
#   scripts/gpu_check.sh A   (~6 min on an H200) tools + imports, CUDA build (sm_90, ninja, MAX_JOBS=16),
#                            the CUDA test files in two parallel pytest processes, the headline loss benchmark
#   scripts/gpu_check.sh B   (~5 min, right after A on the warm machine; builds again if A's build is gone)
#                            crop benchmark at S = 224, ResNet-18 step pipeline vs resident, `hald train` on
#                            CUDA vs the CPU's epoch time, compute-sanitizer memcheck (every kernel variant once)
#                            and racecheck (the kernel with shared memory), Nsight Compute over the loss and
#                            crop kernels (speed of light, occupancy, memory)
#
# Every stage runs under its own `timeout`; its log and a line of $OUT/<A|B>_stages.jsonl (stage, status,
# seconds, exit code) are written as soon as it ends, so a command stopped at the device limit still
# brings back what was done. Results land in $OUT (default ./gpu_out), at most 8 files per command (the
# device tool brings back 8). Without a GPU (this CPU machine: a rehearsal) the CUDA stages do not run:
# each says so, checks its command line instead (pytest --collect-only for test selections, the
# command's own argparse for benchmarks and `hald`), and the rehearsal fails only on such a typo.
#
#   PYTHON=/path/to/python OUT=/tmp/gpu_rehearsal scripts/gpu_check.sh A
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:-}
[[ "$PART" == A || "$PART" == B || "$PART" == commands ]] || {
  echo "usage: scripts/gpu_check.sh A|B|commands   (OUT=dir, default ./gpu_out; commands: print the stage command lines)"
  exit 2
}
PY=${PYTHON:-python3}
OUT=$(realpath -m "${OUT:-./gpu_out}")
WORK=/nonexistent
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}

# ==== Stage command lines: one variable each (python script + flags; run as "$PY $VAR") ==================
# The headline loss shapes only (B = 8192 at C = 1000 and 21843, fp32 and bf16), against eager and
# torch.compile, with the copy floor measured in the same run (the precision table: --precision, docs/gpu.md).
LOSS_CMD="benchmarks/bench_loss.py --device cuda --suite sparse --shapes 8192x1000,8192x21843 --dtypes float32,bfloat16 --kernels staged,registers --out $OUT/loss_gpu.json"
# Large batches at S = 224 on the device (the 3M crops/s target is bf16).
CROP_CMD="benchmarks/bench_crop.py --sizes 224 --batches 256 1024 4096 --methods fused_cuda fused_cuda_bf16 --images 256 --source 256 --rounds 3 --seconds 0.5 --threads 16 --no-reference --out $OUT/crop_gpu.json"
# The issue's step: ResNet-18 at 224, batch 256, bf16 (autocast, crops made in bf16), pipeline against
# resident tensors.
STEP_CMD="benchmarks/bench_train.py --device cuda --cases resnet18 --sources array --images 512 --batch 256 --amp"
# `hald train` on CUDA against the CPU: synthetic colour blobs (8 classes) written to $WORK first.
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-625}      # 5,000 images of 32 x 32
TRAIN_ARGS="--model convnet3 --img-size 32 --batch-size 256 --schedule soft-only --eval-every 1000 --no-progress"
TRAIN_CUDA_EPOCHS=3
TRAIN_CPU_EPOCHS=1
# Nsight Compute over one profiled call each of the loss kernel (staged, then registers: B 8192, C 21843,
# bf16) and the crop kernel (S 224, batch 1024, bf16): speed of light, occupancy, launch statistics and
# memory workload, as text in B_benchmarks.log (the counters the next tuning step needs).
PROFILE_CMD="benchmarks/profile_kernels.py --loss-shape 8192x21843 --kernels staged,registers --crop-batch 1024"
NCU_ARGS="--clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis --launch-skip 0 --launch-count 6"
# The CUDA test files, split over two parallel pytest processes.
TESTS_1="python_tests/test_soft_hard_loss_cuda.py"
TESTS_2="python_tests/test_crop_cuda.py python_tests/test_label_codec_cuda.py python_tests/test_train_cuda.py"
# compute-sanitizer memcheck: every kernel (crop geometry + crop in each output dtype, fresh / replay /
# CutMix / fused batch / bad values; label encode from logits and probabilities in each dtype, decode and
# dense decode; the loss kernel at every row width (TPR), vector and scalar (misaligned / strided) loads,
# every logits dtype, top-k / full-width / dense / teacher targets, id dtypes, poisoned rows; staged and registers kernels) once.
# The loss kernel at each row width (32 / 128 / 256 threads per row, float64's registers kernel) on both
# kernels: part of the memcheck and the racecheck sets.
LOSS_WIDTH_TESTS=(
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[staged-mean-1000-dtype0]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[registers-mean-1000-dtype0]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[staged-mean-1001-dtype1]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[registers-mean-1001-dtype1]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[staged-mean-7-dtype2]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[registers-mean-7-dtype2]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[staged-mean-50001-dtype3]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[registers-mean-50001-dtype3]"
)
MEMCHECK_TESTS=(
  "python_tests/test_crop_cuda.py::test_fresh_crops_dtypes_and_layouts"
  "python_tests/test_crop_cuda.py::test_replay_matches_cpu_and_reference[True-True-7-True]"
  "python_tests/test_crop_cuda.py::test_replay_matches_cpu_and_reference[False-False-64-False]"
  "python_tests/test_crop_cuda.py::test_cutmix_replay_matches_cpu_and_reference"
  "python_tests/test_crop_cuda.py::test_cutmix_draw_matches_cpu"
  "python_tests/test_crop_cuda.py::test_fused_batch_matches_cpu[dtype0-False-True]"
  "python_tests/test_crop_cuda.py::test_fused_batch_matches_cpu[dtype1-True-False]"
  "python_tests/test_crop_cuda.py::test_fused_batch_matches_cpu[dtype2-False-False]"
  "python_tests/test_crop_cuda.py::test_bad_values_with_check_false_stay_in_bounds"
  "python_tests/test_crop_cuda.py::test_packed_images_out_of_the_buffer_stay_in_bounds_on_cuda"
  "python_tests/test_crop_cuda.py::test_packed_images_match_the_padded_batch_on_cuda[False]"
  "python_tests/test_crop_cuda.py::test_uint16_codes_replay_like_fractions"
  "python_tests/test_crop_cuda.py::test_label_rows_gathered"
  "python_tests/test_label_codec_cuda.py::test_decode_and_dense_decode_match_cpu_and_reference[8-marginal]"
  "python_tests/test_label_codec_cuda.py::test_decode_and_dense_decode_match_cpu_and_reference[16-truncate]"
  "python_tests/test_label_codec_cuda.py::test_encode_logits_matches_cpu_and_reference[torch.float32-8-1000-5]"
  "python_tests/test_label_codec_cuda.py::test_encode_logits_matches_cpu_and_reference[torch.float32-8-300-300]"
  "python_tests/test_label_codec_cuda.py::test_encode_logits_matches_cpu_and_reference[torch.float64-16-21843-10]"
  "python_tests/test_label_codec_cuda.py::test_encode_probabilities_matches_cpu_and_reference[7-power-torch.float32]"
  "python_tests/test_label_codec_cuda.py::test_encode_probabilities_matches_cpu_and_reference[100-log-torch.float16]"
  "python_tests/test_label_codec_cuda.py::test_encode_probabilities_matches_cpu_and_reference[70-uniform-torch.bfloat16]"
  "python_tests/test_label_codec_cuda.py::test_encode_refuses_bad_logits[torch.float32]"
  "python_tests/test_label_codec_cuda.py::test_ties_go_to_the_lower_class_id"
  "${LOSS_WIDTH_TESTS[@]}"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[staged-mean-4100-dtype0]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[registers-mean-4100-dtype0]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[staged-none-21843-dtype2]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[registers-none-21843-dtype2]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_strided_and_misaligned_logits[staged-misaligned-base-1000-dtype0]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_strided_and_misaligned_logits[registers-misaligned-base-1000-dtype0]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_strided_and_misaligned_logits[staged-odd-stride-4096-dtype2]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_strided_and_misaligned_logits[registers-odd-stride-4096-dtype2]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_strided_and_misaligned_logits[staged-row-strided-1000-dtype3]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_strided_and_misaligned_logits[registers-row-strided-1000-dtype3]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_topk_grid[staged-C1000-k1000-marginal-fp16-none]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_topk_grid[registers-C1000-k1000-marginal-fp16-none]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_topk_grid[staged-C1001-k5-marginal-code16-mean]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_topk_grid[registers-C1001-k5-marginal-code16-mean]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_dense_grid[staged-C1000-teacher32-marginal-none]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_dense_grid[registers-C1000-teacher32-marginal-none]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_dense_grid[staged-C1001-fp64-marginal-mean]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_dense_grid[registers-C1001-fp64-marginal-mean]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_id_dtypes"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_poisoned_row_has_nan_loss_and_nan_gradient[staged-id-too-large-dtype0]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_poisoned_row_has_nan_loss_and_nan_gradient[registers-id-too-large-dtype0]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_float64_special_classes_keep_double_precision[staged]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_float64_special_classes_keep_double_precision[registers]"
  "python_tests/test_train_cuda.py::test_fused_source_cuda_matches_cpu"
)
# racecheck: only the loss kernel uses shared memory (block reductions, id bitmaps, staged rows); each row
# width once on each kernel.
RACECHECK_TESTS=(
  "${LOSS_WIDTH_TESTS[@]}"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[staged-mean-21843-dtype1]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[registers-mean-21843-dtype1]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_strided_and_misaligned_logits[staged-misaligned-base-1000-dtype0]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_strided_and_misaligned_logits[registers-misaligned-base-1000-dtype0]"
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_options_every_dtype_and_width[staged-mean-4100-dtype0]"
)
# Tests whose checks fail on purpose with integers in the message. On the first H200 runs they crashed
# the process (SIGSEGV in std::ostream::_M_insert<long>, defined inside _C.abi3.so, built by the image's
# /opt/gcc/bin/g++ against /usr/include/c++/13: pieces of a second libstdc++ in our library, whose locale
# facets are not the process's). After a build A runs them first; on a crash it builds again with the
# system compiler (SYSTEM_CXX) and runs them again, and records which toolchain the later stages used.
PROBE_TESTS=(
  "python_tests/test_soft_hard_loss_cuda.py::test_cuda_inplace_refuses_overlapping_rows"
  "python_tests/test_label_codec_cuda.py::test_encode_refuses_bad_probabilities"
)
SYSTEM_CXX=${SYSTEM_CXX:-/usr/bin/g++}
# Per-stage limits in seconds (A: about 6 minutes in all, B: about 5; the device allows 10 per command).
T_TOOLS=60 T_BUILD=210 T_TESTS=200 T_LOSS=130
T_CROP=60 T_STEP=75 T_TRAIN=75 T_MEMCHECK=110 T_RACECHECK=50 T_NCU=60
# ========================================================================================================
if [[ "$PART" == commands ]]; then  # the stage command lines, one NAME=VALUE a line (tests read them)
  for v in LOSS_CMD CROP_CMD STEP_CMD PROFILE_CMD TRAIN_ARGS TESTS_1 TESTS_2; do echo "$v=${!v}"; done
  echo "MEMCHECK_TESTS=${MEMCHECK_TESTS[*]}"
  echo "PROBE_TESTS=${PROBE_TESTS[*]}"
  echo "RACECHECK_TESTS=${RACECHECK_TESTS[*]}"
  exit 0
fi

mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)  # scratch (data sets, runs): not brought back
STAGES="$OUT/${PART}_stages.jsonl"
LOG="$OUT/${PART}.log"          # every stage's output, in order
: >"$STAGES"
: >"$LOG"
status=0
say() { echo "$*" | tee -a "$LOG"; }
record() {  # record STAGE STATUS SECONDS RC [NOTE]
  local note=${5:-}
  note=${note//\\/\/}
  printf '{"stage": "%s", "status": "%s", "seconds": %s, "rc": %s, "note": "%s"}\n' "$1" "$2" "$3" "$4" "${note//\"/\'}" \
    >>"$STAGES"
  say "== $1: $2 (${3} s, rc $4)${note:+ -- $note}"
  [[ "$2" == ok || "$2" == skipped ]] || status=1
}
run_stage() {  # run_stage NAME LIMIT_S LOGFILE CMD...: CMD under timeout, output to LOGFILE and $LOG
  local name=$1 limit=$2 log=$3 t0 rc st
  shift 3
  say "== $name (limit ${limit} s): $*"
  t0=$(date +%s)
  # bash -c: CMD may be one of this script's functions (exported below)
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" >>"$log" 2>&1
  rc=$?
  [[ "$log" == "$LOG" ]] || tail -n 40 "$log" >>"$LOG"
  st=ok; [[ $rc -eq 124 || $rc -eq 137 ]] && st=timeout; [[ $rc -ne 0 && $st == ok ]] && st=failed
  record "$name" "$st" "$(( $(date +%s) - t0 ))" "$rc"
  return $rc
}
dry_parse() {  # dry_parse SCRIPT ARGS... | dry_parse -m MODULE ARGS...: the command's argparse reads ARGS; nothing runs
  "$PY" - "$@" <<'PYEOF'
import argparse, os, runpy, sys
target, args, module = sys.argv[1], sys.argv[2:], None
if target == "-m":
    module, args = args[0], args[1:]
parse = argparse.ArgumentParser.parse_args
def parse_only(self, a=None, ns=None):
    parse(self, a, ns)
    print(f"dry run: {module or target} accepts: {' '.join(args)}")
    sys.exit(0)
argparse.ArgumentParser.parse_args = parse_only
sys.argv = [module or target, *args]
if module:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
    runpy.run_path(target, run_name="__main__")
sys.exit("dry run: the command never parsed its arguments")
PYEOF
}
collect() {  # collect TESTS...: pytest --collect-only (node ids and files must exist and select tests)
  "$PY" -m pytest --collect-only -qq -p no:cacheprovider "$@"
}
gpu_tag() { "$PY" -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "_").replace("/", "_"))'; }  # common.device_tag
have_ext_cuda() { "$PY" -c "import hald_ext, sys; sys.exit(0 if hald_ext.build_info()['cuda_available'] else 1)" 2>/dev/null; }

export -f dry_parse collect
export PY OUT WORK LOG SYSTEM_CXX

# ---------------------------------------------------------------------------------------- the machine
GPU=0
if nvidia-smi -L >/dev/null 2>&1 && "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  GPU=1
fi
say "gpu_check $PART: $(date -u +%FT%TZ), OUT=$OUT, python $PY, GPU: $([[ $GPU == 1 ]] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1 || echo 'none: a rehearsal, CUDA stages check their command lines only')"
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1 || true)
CUDA_BIN=$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")
export PATH="$PATH:$CUDA_BIN"

build() {  # build [CXX]: the CUDA build, in place (hald_ext/_C.abi3.so), then build_info; with CXX, CC next to it
  local t0 rc cxx=${1:-} env_cc=()
  [[ -n $cxx ]] && env_cc=(CXX="$cxx" CC="$(dirname "$cxx")/$(basename "$cxx" | sed 's/g++/gcc/; s/c++$/cc/')")
  say "== build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS, ninja${cxx:+, ${env_cc[*]}})"
  t0=$(date +%s)
  rm -rf build/temp.* 2>/dev/null
  echo "== build${cxx:+ with ${env_cc[*]}}" >>"$OUT/${PART}_build.log"
  timeout --kill-after=10 "$T_BUILD" env CUDA_HOME="${CUDA_HOME:-$(dirname "$CUDA_BIN")}" "${env_cc[@]}" \
    "$PY" setup.py build_ext --inplace >>"$OUT/${PART}_build.log" 2>&1
  rc=$?
  # libstdc++ symbols defined inside our library (a sign of a second libstdc++ linked in)
  say "std:: symbols defined in _C.abi3.so: $(nm -D --defined-only hald_ext/_C.abi3.so 2>/dev/null | grep -c ' _ZN\?K\?St\| _ZNS[aiot]' || true)"
  tail -n 30 "$OUT/${PART}_build.log" >>"$LOG"
  if [[ $rc -eq 0 ]] && have_ext_cuda; then
    record build ok "$(( $(date +%s) - t0 ))" 0 "$("$PY" -c 'import hald_ext, json; print(json.dumps(hald_ext.build_info()))' | tr -d '"')"
  else
    [[ $rc -eq 0 ]] && rc=1
    record build "$([[ $rc -eq 124 || $rc -eq 137 ]] && echo timeout || echo failed)" "$(( $(date +%s) - t0 ))" "$rc" \
      "no usable CUDA kernels: see ${PART}_build.log"
    return 1
  fi
}

if [[ "$PART" == A ]]; then
  # ------------------------------------------------------------------------------------ A1 tools, imports
  tools() {
    for t in nvidia-smi nvcc ninja compute-sanitizer ncu; do
      printf '%-18s %s\n' "$t" "$( (command -v "$t" >/dev/null && "$t" --version 2>&1 | grep -m1 -iE 'release|version|[0-9]+\.[0-9]+' ) || echo MISSING)"
    done
    # the C++ toolchain the build will use (torch's cpp_extension: $CXX, else c++) and the system one
    echo "CC=${CC:-unset} CXX=${CXX:-unset} c++=$(command -v c++ || echo none) SYSTEM_CXX=$SYSTEM_CXX"
    for c in "${CXX:-c++}" "$SYSTEM_CXX"; do
      command -v "$c" >/dev/null || { echo "$c: MISSING"; continue; }
      echo "$c: $("$c" --version | head -1); libstdc++: $("$c" -print-file-name=libstdc++.so)"
      f=$("$c" -print-file-name=libstdc++.so); [[ "$(head -c 2 "$f" 2>/dev/null)" == "/*" ]] && head -c 400 "$f"  # a linker script
    done
    "$PY" - <<'PYEOF'
import importlib, json, platform, sys
out = {"python": platform.python_version()}
need = ["torch", "torchvision", "timm", "safetensors", "numpy", "yaml", "tqdm", "pytest", "hypothesis", "setuptools",
        "PIL", "matplotlib"]
missing = []
for name in need + ["nvidia.dali"]:
    try:
        out[name] = getattr(importlib.import_module(name), "__version__", "present")
    except ImportError:
        out[name] = "MISSING"
        missing += [name] if name in need else []
import torch
out.update(torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
           device=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print(json.dumps(out))
sys.exit(f"missing: {missing}" if missing else 0)
PYEOF
  }
  export -f tools
  run_stage tools "$T_TOOLS" "$LOG" tools

  # ------------------------------------------------------------------------------------ A2 build
  if [[ $GPU == 1 ]]; then
    if build; then
      probe() { timeout --kill-after=10 120 "$PY" -m pytest -q -p no:cacheprovider "${PROBE_TESTS[@]}" >>"$LOG" 2>&1; }
      t0=$(date +%s); probe; prc=$?
      note="default toolchain (${CXX:-c++}): probe rc $prc"
      if (( prc > 128 )) && command -v "$SYSTEM_CXX" >/dev/null; then  # killed by a signal: a crash
        build "$SYSTEM_CXX" && { probe; prc=$?; note="$note (a crash); rebuilt with $SYSTEM_CXX: probe rc $prc"; }
      fi
      record toolchain_probe "$( ((prc == 0)) && echo ok || echo failed)" "$(( $(date +%s) - t0 ))" "$prc" "$note"
    else
      say "stopping: the CUDA stages need the build"
    fi
  else
    t0=$(date +%s)
    "$PY" -c "import setuptools, torch.utils.cpp_extension as c; print('build tools: setuptools', setuptools.__version__, '/ ninja', c.is_ninja_available())" >>"$LOG" 2>&1
    record build skipped "$(( $(date +%s) - t0 ))" $? "no GPU: not built here (the command would be: setup.py build_ext --inplace with TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS)"
  fi

  # ------------------------------------------------------------------------------------ A3 CUDA tests
  if [[ $GPU == 1 ]] && have_ext_cuda; then
    t0=$(date +%s)
    say "== cuda tests (limit ${T_TESTS} s): [$TESTS_1] || [$TESTS_2]"
    # pytest-xdist when there: a test that crashes its worker is reported, the others still run
    XD=(); "$PY" -c "import xdist" 2>/dev/null && XD=(-n 6)
    timeout --kill-after=10 "$T_TESTS" "$PY" -m pytest $TESTS_1 "${XD[@]}" -q -rs -p no:cacheprovider >"$OUT/A_tests1.log" 2>&1 &
    p1=$!
    timeout --kill-after=10 "$T_TESTS" "$PY" -m pytest $TESTS_2 "${XD[@]}" -q -rs -p no:cacheprovider >"$OUT/A_tests2.log" 2>&1 &
    p2=$!
    wait $p1; rc1=$?
    wait $p2; rc2=$?
    tail -n 15 "$OUT/A_tests1.log" "$OUT/A_tests2.log" >>"$LOG"
    skipped=$(cat "$OUT/A_tests1.log" "$OUT/A_tests2.log" | grep -c "^SKIPPED")
    st=ok; note="$(grep -h -E '[0-9]+ (passed|failed)' "$OUT/A_tests1.log" "$OUT/A_tests2.log" | tr '\n' ';')"
    (( rc1 == 124 || rc2 == 124 || rc1 == 137 || rc2 == 137 )) && st=timeout
    [[ $st == ok && ( $rc1 -ne 0 || $rc2 -ne 0 ) ]] && st=failed
    [[ $st == ok && $skipped -gt 0 ]] && { st=failed; note="$note $skipped skipped on a GPU machine"; }
    record cuda_tests "$st" "$(( $(date +%s) - t0 ))" "$(( rc1 > rc2 ? rc1 : rc2 ))" "$note"
  elif [[ $GPU == 1 ]]; then
    record cuda_tests failed 0 1 "not run: no CUDA build"
  else
    run_stage cuda_tests_collect "$T_TESTS" "$LOG" collect $TESTS_1 $TESTS_2 "${PROBE_TESTS[@]}" \
      && record cuda_tests skipped 0 0 "no GPU: collected only (the files and their tests exist)"
  fi

  # ------------------------------------------------------------------------------------ A4 loss benchmark
  if [[ $GPU == 1 ]] && have_ext_cuda; then
    run_stage loss_benchmark "$T_LOSS" "$OUT/A_loss.log" "$PY" $LOSS_CMD
    cp benchmarks/results/loss_"$(gpu_tag)".json "$OUT/" 2>/dev/null \
      || say "no loss JSON to copy (see A_loss.log)"
  else
    run_stage loss_benchmark_args 60 "$LOG" dry_parse $LOSS_CMD \
      && record loss_benchmark skipped 0 0 "no GPU: command line checked only"
  fi
else
  # ------------------------------------------------------------------------------------ B0 the build
  if [[ $GPU == 1 ]] && ! have_ext_cuda; then
    say "the CUDA build of stage A is not here (a fresh machine?): building again"
    build || say "the CUDA stages will fail: no build"
  fi
  cuda_ok=0; [[ $GPU == 1 ]] && have_ext_cuda && cuda_ok=1

  # ------------------------------------------------------------------------------------ B1 crop benchmark
  if [[ $cuda_ok == 1 ]]; then
    run_stage crop_benchmark "$T_CROP" "$OUT/B_benchmarks.log" "$PY" $CROP_CMD
  else
    run_stage crop_benchmark_args 60 "$LOG" dry_parse $CROP_CMD \
      && record crop_benchmark skipped 0 0 "no GPU: command line checked only"
  fi

  # ------------------------------------------------------------------------------------ B2 ResNet-18 step
  if [[ $cuda_ok == 1 ]]; then
    run_stage resnet18_step "$T_STEP" "$OUT/B_benchmarks.log" "$PY" $STEP_CMD
    cp benchmarks/results/train_b256_bf16_"$(gpu_tag)".json \
      "$OUT/" 2>/dev/null || say "no train-step JSON to copy (see B_benchmarks.log)"
  else
    run_stage resnet18_step_args 60 "$LOG" dry_parse $STEP_CMD \
      && record resnet18_step skipped 0 0 "no GPU: command line checked only"
  fi

  # ------------------------------------------------------------------------------------ B3 hald train, CUDA vs CPU
  train_stage() {
    local per=$1 data="$WORK/blobs.npz" labels="$WORK/blobs.safetensors" d
    "$PY" - "$per" "$data" "$labels" <<'PYEOF' || return 1
import sys, time
import numpy as np
from hald_ext.train.synthetic import color_blob_labels, color_blobs
per, data, labels = int(sys.argv[1]), sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
images = color_blobs(per, num_classes=8, size=32, seed=0)
np.savez(data, images=images.stacked(), labels=images.labels, classes=np.asarray(images.classes))
from hald_ext.data import load_image_set
color_blob_labels(load_image_set(data), sli=2, k=3, path=labels)
print(f"data: {len(images)} images of 32 x 32, labels sli 2 k 3, {time.perf_counter() - t0:.1f} s")
PYEOF
    for d in cuda cpu; do
      local epochs=$TRAIN_CUDA_EPOCHS; [[ $d == cpu ]] && epochs=$TRAIN_CPU_EPOCHS
      if [[ $d == cuda && $cuda_ok != 1 ]]; then
        dry_parse -m hald_ext.cli train --data "$data" --labels "$labels" $TRAIN_ARGS --epochs "$epochs" --device cuda \
          --out "$WORK/runs/cuda" || return 1
        continue
      fi
      "$PY" -m hald_ext.cli train --data "$data" --labels "$labels" $TRAIN_ARGS --epochs "$epochs" --device "$d" \
        --out "$WORK/runs/$d" || return 1
    done
    "$PY" - "$WORK/runs" "$OUT/train_cli_epochs.json" "$cuda_ok" <<'PYEOF'
import json, os, sys
runs, out, cuda_ok = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
res = {}
for d in ("cuda", "cpu"):
    path = os.path.join(runs, d, "metrics.json")
    if os.path.exists(path):
        rows = json.load(open(path))
        rows = rows["epochs"] if isinstance(rows, dict) and "epochs" in rows else rows
        times = [r["epoch_time"] for r in rows]
        res[d] = {"epoch_times_s": times, "steady_epoch_s": min(times[1:] or times)}
if "cuda" in res and "cpu" in res:
    res["cpu_over_cuda_epoch"] = res["cpu"]["steady_epoch_s"] / res["cuda"]["steady_epoch_s"]
res["note"] = ("hald train --schedule soft-only, convnet3 at 32 px, 5,000 synthetic images, batch 256" if cuda_ok
               else "rehearsal: CPU only")
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res))
PYEOF
  }
  export -f train_stage
  export TRAIN_ARGS TRAIN_CUDA_EPOCHS TRAIN_CPU_EPOCHS cuda_ok
  if [[ $cuda_ok == 1 ]]; then
    run_stage hald_train "$T_TRAIN" "$OUT/B_benchmarks.log" train_stage "$TRAIN_PER_CLASS"
  else  # a small real CPU run, the CUDA command line checked only
    run_stage hald_train_rehearsal "$T_TRAIN" "$LOG" train_stage 8 \
      && record hald_train skipped 0 0 "no GPU: CPU run on 64 images and the CUDA command line checked only"
  fi

  # ------------------------------------------------------------------------------------ B4 sanitizers
  sanitize() {  # sanitize TOOL TESTS...
    local tool=$1
    shift
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool "$tool" --error-exitcode 9 --print-limit 20 \
      "$PY" -m pytest "$@" -v -p no:cacheprovider
  }
  export -f sanitize
  export SAN
  if [[ $cuda_ok == 1 && -n "$SAN" ]]; then
    run_stage memcheck "$T_MEMCHECK" "$OUT/B_sanitizer.log" sanitize memcheck "${MEMCHECK_TESTS[@]}"
    run_stage racecheck "$T_RACECHECK" "$OUT/B_sanitizer.log" sanitize racecheck "${RACECHECK_TESTS[@]}"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Device not supported" "$OUT/B_sanitizer.log" >>"$LOG"
  else
    why="no GPU"; [[ $cuda_ok == 1 ]] && why="compute-sanitizer not found"
    run_stage sanitizer_selection "$T_MEMCHECK" "$LOG" collect "${MEMCHECK_TESTS[@]}" "${RACECHECK_TESTS[@]}" \
      && record memcheck "$([[ $cuda_ok == 1 ]] && echo failed || echo skipped)" 0 0 "$why: the reduced set collected only" \
      && record racecheck "$([[ $cuda_ok == 1 ]] && echo failed || echo skipped)" 0 0 "$why"
  fi

  # ------------------------------------------------------------------------------------ B5 Nsight Compute
  if [[ $cuda_ok == 1 && -n "$NCU" ]]; then
    # shellcheck disable=SC2086
    run_stage ncu "$T_NCU" "$OUT/B_benchmarks.log" "$NCU" $NCU_ARGS -k "regex:soft_hard_kernel|crop_kernel" \
      "$PY" $PROFILE_CMD
  else
    why="no GPU"; [[ $cuda_ok == 1 ]] && why="ncu not found"
    run_stage profile_args 60 "$LOG" dry_parse $PROFILE_CMD \
      && record ncu "$([[ $cuda_ok == 1 ]] && echo failed || echo skipped)" 0 0 "$why: command line checked only"
  fi
fi

rm -rf "$WORK"
for f in "$OUT"/*; do  # the device brings back files of at most 16 MiB
  [[ -f "$f" && $(stat -c %s "$f") -gt 15000000 ]] && { tail -c 15000000 "$f" >"$f.tmp" && mv "$f.tmp" "$f"; }
done
say "gpu_check $PART done: $([[ $status == 0 ]] && echo 'every stage ok or skipped' || echo 'SOME STAGES FAILED (see '"$STAGES"')'); files in $OUT:"
ls -la "$OUT" | tee -a "$LOG"
exit "$status"
