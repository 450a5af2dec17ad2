#!/usr/bin/env bash
# The GPU checks of graddrop in one command. GPU time is scarce, so the binaries are normally
# built on a machine without a GPU ("prepare") and carried to the GPU machine, which only runs
# them ("--prebuilt"); building on the GPU machine ("build") remains as the fallback.
#
# Usage:  scripts/gpu_check.sh [OPTION...] [STAGE...]
#   prepare   (on the build machine, no GPU needed) build libgraddrop, the GPU test program and
#             the CUDA benchmark for CUDA_ARCH (default 9.0: H100/H200) against the torch of
#             PYTHON, and copy them, with the libraries they need that the GPU machine lacks
#             (Google Benchmark), the pytest files and GoogleTest's sources (for the fallback
#             build), into PREPARED_DIR (default .carry/gpu-build, ignored by git).
#   build     configure and build in BUILD_DIR (default build-gpu) on this machine (fallback).
#   test      the self-test (graddrop_selftest: CUDA against CPU bit for bit, every planned path,
#             stream, graph, bandwidth), then the GPU test program (GoogleTest).
#   python    the pytest suite through torch.ops.graddrop (CPU and CUDA tensors).
#   sanitize  compute-sanitizer memcheck, initcheck, racecheck and synccheck over the
#             CudaKernelPaths tests (every kernel path at small sizes; see the filters below).
#   bench     the CUDA benchmark (N = 16M, 64M; n = 2, 4, 8; float32, bfloat16; per element and
#             marginalised), with a summary table.
#   all       (the default) build test python sanitize bench; with --prebuilt the same but build.
#   Stages run in the order above, whatever the order given.
#
# Options:
#   --prebuilt[=DIR]   run the binaries of a prepared folder (default .carry/gpu-build) instead of
#                      building; if they do not start here, build here (the build stage) instead.
#   --googletest=DIR   GoogleTest sources for the build stage (default .carry/googletest, else
#                      PREPARED_DIR/googletest, else an installed GoogleTest).
#   --benchmark=DIR    Google Benchmark sources for the build stage (default .carry/benchmark;
#                      without them the CUDA benchmark builds as a plain program).
#   --deadline=SECONDS stop starting stages after this long (default 510); each stage also has
#                      its own limit (TEST_LIMIT_S 150, DISTRIBUTED_LIMIT_S 60, PYTHON_LIMIT_S 90,
#                      BENCH_LIMIT_S 180, and
#                      per sanitizer tool MEMCHECK_LIMIT_S 60, INITCHECK_LIMIT_S 50,
#                      RACECHECK_LIMIT_S 45, SYNCCHECK_LIMIT_S 35).
#
# Typical use (the prepared folder is about 14 MiB; the device tool carries it by name):
#   here:            scripts/gpu_check.sh prepare
#   on the GPU:      OUT=... scripts/gpu_check.sh --prebuilt=.carry/gpu-build test python sanitize bench
#
# Environment: PYTHON (the python whose torch to use; default .venv/bin/python, then
# /opt/torch/.venv/bin/python3, then python3), CUDA_ARCH (prepare: 9.0; build: the local GPU's),
# JOBS (build parallelism; default nproc), BUILD_DIR, PREPARE_BUILD_DIR (build-gpu-prepare),
# PREPARED_DIR, MEMCHECK_FILTER / INITCHECK_FILTER / RACECHECK_FILTER / SYNCCHECK_FILTER
# (GoogleTest filters), SANITIZER_TOOLS (default "memcheck initcheck racecheck synccheck"),
# BENCH_FILTER (Google Benchmark regex, or a substring for the plain build), GRADDROP_TEST_SEED
# (one seed for every stage; printed), OUT (a folder for the logs: gpu_check.log, build.log,
# tests.log, distributed.log, python.log, sanitizer.log, bench.log, summary.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
START_TIME=$(date +%s)

GOOGLETEST_DIR=${GRADDROP_GOOGLETEST_SOURCE_DIR:-$ROOT/.carry/googletest}
BENCHMARK_DIR=${GRADDROP_BENCHMARK_SOURCE_DIR:-$ROOT/.carry/benchmark}
BUILD_DIR=${BUILD_DIR:-$ROOT/build-gpu}
PREPARE_BUILD_DIR=${PREPARE_BUILD_DIR:-$ROOT/build-gpu-prepare}
PREPARED_DIR=${PREPARED_DIR:-$ROOT/.carry/gpu-build}
DEADLINE_S=510
PREBUILT=""
STAGES=()
for argument in "$@"; do
  case "$argument" in
    --prebuilt) PREBUILT=$PREPARED_DIR ;;
    --prebuilt=*) PREBUILT=${argument#*=} ;;
    --googletest=*) GOOGLETEST_DIR=${argument#*=} ;;
    --benchmark=*) BENCHMARK_DIR=${argument#*=} ;;
    --deadline=*) DEADLINE_S=${argument#*=} ;;
    prepare|build|test|python|sanitize|bench|all) STAGES+=("$argument") ;;
    -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$argument' (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#STAGES[@]} -eq 0 ] && STAGES=(all)
if [ -n "$PREBUILT" ]; then
  case "$PREBUILT" in /*) ;; *) PREBUILT=$ROOT/$PREBUILT ;; esac
fi
wants() {
  local stage
  for stage in "${STAGES[@]}"; do
    if [ "$stage" = "$1" ]; then return 0; fi
    if [ "$stage" = all ] && [ "$1" != prepare ] && { [ "$1" != build ] || [ -z "$PREBUILT" ]; }; then
      return 0
    fi
  done
  return 1
}

# ---- Logs and the summary ---------------------------------------------------------------------
if [ -n "${OUT:-}" ]; then
  LOG_DIR=$OUT
else
  LOG_DIR=$(mktemp -d /tmp/gpu_check.XXXXXX)
fi
mkdir -p "$LOG_DIR"
exec > >(tee -a "$LOG_DIR/gpu_check.log") 2>&1
SUMMARY=()
FAILED=()
note() { echo "gpu_check: $*"; }
GPU_PRESENT=False
# record STAGE STATUS [DETAIL]. A stage that skipped itself (no GPU seen by the program) is a
# failure where this machine has a GPU, and only a dry run where it has none.
record() {
  SUMMARY+=("$(printf '%-10s %-12s %s' "$1" "$2" "${3:-}")")
  case "$2" in
    PASSED) ;;
    SKIPPED*) [ "$GPU_PRESENT" = True ] && FAILED+=("$1 (skipped although a GPU is here)") ;;
    UNAVAILABLE*) ;;  # the tool cannot run here (compute-sanitizer cannot attach): not a failure
    *) FAILED+=("$1") ;;
  esac
}
seconds_left() { echo $((DEADLINE_S - ($(date +%s) - START_TIME))); }

# run_limited LOG LIMIT COMMAND...: runs COMMAND with at most LIMIT seconds (less when the
# deadline is nearer), appending its output to LOG and the console. Sets RUN_STATUS (124: timed
# out, 125: not started for lack of time) and RUN_SECONDS.
run_limited() {
  local log=$1 limit=$2; shift 2
  local left
  left=$(seconds_left)
  [ "$limit" -gt "$left" ] && limit=$left
  RUN_SECONDS=0
  if [ "$limit" -lt 10 ]; then
    echo "gpu_check: not started, the deadline (${DEADLINE_S}s) is near: $*" | tee -a "$log"
    RUN_STATUS=125
    return
  fi
  echo "+ (limit ${limit}s) $*" | tee -a "$log"
  local started
  started=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  RUN_STATUS=${PIPESTATUS[0]}
  RUN_SECONDS=$(($(date +%s) - started))
  [ "$RUN_STATUS" -eq 137 ] && RUN_STATUS=124
}
# The stage status for an exit status of a GoogleTest program (77: every test skipped).
status_word() {
  case "$1" in
    0) echo PASSED ;;
    77) echo "SKIPPED" ;;
    124) echo "TIMED-OUT" ;;
    125) echo "NOT-RUN" ;;
    *) echo "FAILED($1)" ;;
  esac
}

# The sanitizer stages' status from compute-sanitizer's own report, not from the exit status
# alone: its findings (a non-zero error or hazard count, or its exit status SANITIZER_EXIT) are
# SANITIZER-FAILED; a test that fails under it with no finding is TESTS-FAILED; a tool that cannot
# attach to the GPU (no summary, and a message saying so) is UNAVAILABLE, which is not a failure.
SANITIZER_EXIT=86
sanitizer_status() {
  local status=$1 output=$2 findings
  findings=$(echo "$output" | grep -E '(ERROR|RACECHECK) SUMMARY' | tail -1 |
             sed -E 's/.*SUMMARY: *([0-9]+) (errors?|hazards?).*/\1/')
  case "$status" in
    124|125) status_word "$status"; return ;;
  esac
  if [ -z "$findings" ] && echo "$output" | grep -qiE \
      'Internal Sanitizer Error|not supported|No attachable process|Unable to (find|load)|failed to (attach|initialize|create)|Target application terminated before first instrumented'; then
    echo "UNAVAILABLE"; return
  fi
  if [ "$status" = "$SANITIZER_EXIT" ] || { [ -n "$findings" ] && [ "$findings" != 0 ]; }; then
    echo "SANITIZER-FAILED($findings)"; return
  fi
  case "$status" in
    0) echo PASSED ;;
    77) echo SKIPPED ;;
    *) echo "TESTS-FAILED($status)" ;;
  esac
}

# ---- The machine ------------------------------------------------------------------------------
if [ -z "${PYTHON:-}" ]; then
  for candidate in "$ROOT/.venv/bin/python" /opt/torch/.venv/bin/python3 python3; do
    if command -v "$candidate" > /dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
export GRADDROP_TEST_SEED=${GRADDROP_TEST_SEED:-$(( $(date +%s) % 1000000007 ))}
note "$(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname); stages: ${STAGES[*]}${PREBUILT:+; prebuilt: $PREBUILT}"
note "logs in $LOG_DIR; test seed $GRADDROP_TEST_SEED (GRADDROP_TEST_SEED)"
GPU_LINE=$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>/dev/null | head -1)
note "GPU: ${GPU_LINE:-none (no nvidia-smi)}"
TORCH_PREFIX=$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)') || {
  note "$PYTHON has no torch (set PYTHON)"; exit 1; }
TORCH_LIB=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
GPU_PRESENT=$("$PYTHON" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null || echo False)
TORCH_LINE=$("$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU available", torch.cuda.is_available())')
note "$PYTHON: $TORCH_LINE"
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
JOBS=${JOBS:-$(nproc)}

# configure_and_build DIR ARCH BENCHMARKS(ON|OFF) LOG TARGET...
configure_and_build() {
  local dir=$1 arch=$2 benchmarks=$3 log=$4; shift 4
  local generator=(-G Ninja)
  command -v ninja > /dev/null || generator=()
  local configure=(cmake -S "$ROOT" -B "$dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release
    "-DCMAKE_PREFIX_PATH=$TORCH_PREFIX" "-DCMAKE_CUDA_COMPILER=$NVCC" -DGRADDROP_CUDA=ON
    "-DTORCH_CUDA_ARCH_LIST=$arch" -DGRADDROP_BUILD_EXAMPLES=OFF -DGRADDROP_BUILD_TESTS=ON
    "-DGRADDROP_BUILD_BENCHMARKS=$benchmarks" "-DGRADDROP_PYTHON=$PYTHON")
  # GoogleTest: sources at GOOGLETEST_DIR; else, where none is installed (the GPU machine), the
  # sources a prepared folder carries; else the installed one.
  if [ -f "$GOOGLETEST_DIR/CMakeLists.txt" ]; then
    configure+=("-DGRADDROP_GOOGLETEST_SOURCE_DIR=$GOOGLETEST_DIR")
  elif [ -f "$PREPARED_DIR/googletest/CMakeLists.txt" ] &&
       [ -z "$(find /usr/lib /usr/local/lib -maxdepth 2 -name 'libgtest.*' 2> /dev/null | head -1)" ]; then
    configure+=("-DGRADDROP_GOOGLETEST_SOURCE_DIR=$PREPARED_DIR/googletest")
  fi
  [ -f "$BENCHMARK_DIR/CMakeLists.txt" ] && configure+=("-DGRADDROP_BENCHMARK_SOURCE_DIR=$BENCHMARK_DIR")
  echo "+ ${configure[*]}" | tee -a "$log"
  TORCH_CUDA_ARCH_LIST=$arch "${configure[@]}" >> "$log" 2>&1 || { tail -30 "$log"; return 1; }
  echo "+ cmake --build $dir --parallel $JOBS --target $*" | tee -a "$log"
  cmake --build "$dir" --parallel "$JOBS" --target "$@" 2>&1 | tee -a "$log" | grep -E '^\[[0-9]+/[0-9]+\]|error|FAILED' | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || { tail -30 "$log"; return 1; }
}

# ---- prepare: build here, for a GPU machine ---------------------------------------------------
if wants prepare; then
  started=$(date +%s)
  PREPARE_ARCH=${CUDA_ARCH:-9.0}
  note "prepare: building for sm_${PREPARE_ARCH/./} in $PREPARE_BUILD_DIR (JOBS=$JOBS)"
  if configure_and_build "$PREPARE_BUILD_DIR" "$PREPARE_ARCH" ON "$LOG_DIR/build.log" \
       graddrop graddrop_cuda_tests graddrop_distributed_tests bench_cuda_combine_bench graddrop_selftest; then
    rm -rf "$PREPARED_DIR"
    mkdir -p "$PREPARED_DIR/bin" "$PREPARED_DIR/lib" "$PREPARED_DIR/python"
    cp -L "$PREPARE_BUILD_DIR/src/libgraddrop.so.0" "$PREPARED_DIR/lib/libgraddrop.so.0"
    cp "$PREPARE_BUILD_DIR/tests/graddrop_cuda_tests" "$PREPARE_BUILD_DIR/bench/bench_cuda_combine_bench" \
       "$PREPARE_BUILD_DIR/tests/graddrop_distributed_tests" "$PREPARE_BUILD_DIR/graddrop_selftest" \
       "$PREPARED_DIR/bin/"
    cp "$ROOT"/tests/python/*.py "$PREPARED_DIR/python/"
    # Libraries the binaries load that neither torch nor a base system provides there (Debian's
    # Google Benchmark is a shared library; GoogleTest is linked statically).
    for binary in "$PREPARED_DIR"/bin/* "$PREPARED_DIR/lib/libgraddrop.so.0"; do
      LD_LIBRARY_PATH="$PREPARED_DIR/lib:$TORCH_LIB" ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
    done | sort -u | while read -r soname path; do
      case "$path" in
        "$TORCH_LIB"/*|*/site-packages/*|/usr/local/cuda*|"$PREPARED_DIR"/*) continue ;;
      esac
      case "$soname" in
        libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|libutil.so*|libresolv.so*|libanl.so*|libstdc++.so*|libgcc_s.so*|ld-linux*|libgomp.so*|libz.so*) continue ;;
      esac
      echo "gpu_check: prepare: carrying $soname ($path)"
      cp -L "$path" "$PREPARED_DIR/lib/$soname"
    done
    if [ -f "$GOOGLETEST_DIR/CMakeLists.txt" ]; then
      cp -r "$GOOGLETEST_DIR" "$PREPARED_DIR/googletest"
    elif [ -f /usr/src/googletest/CMakeLists.txt ]; then
      cp -r /usr/src/googletest "$PREPARED_DIR/googletest"
    fi
    {
      echo "graddrop GPU build, prepared $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
      echo "commit $(git -C "$ROOT" rev-parse HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
      echo "$TORCH_LINE; CUDA architecture $PREPARE_ARCH; $("$NVCC" --version | tail -1)"
      (cd "$PREPARED_DIR" && find . -type f -not -path './googletest/*' -exec ls -l {} + | awk '{print $5, $9}')
    } > "$PREPARED_DIR/MANIFEST.txt"
    size=$(du -sh "$PREPARED_DIR" | cut -f1)
    note "prepare: $PREPARED_DIR holds $size"
    record prepare PASSED "$size in $PREPARED_DIR ($(($(date +%s) - started))s)"
  else
    record prepare FAILED "see build.log"
  fi
fi

# ---- Where the binaries are -------------------------------------------------------------------
use_build_dir() {
  TESTS=$BUILD_DIR/tests/graddrop_cuda_tests
  SELFTEST=$BUILD_DIR/graddrop_selftest
  DISTRIBUTED_TESTS=$BUILD_DIR/tests/graddrop_distributed_tests
  BENCH=$BUILD_DIR/bench/bench_cuda_combine_bench
  LIBRARY=$BUILD_DIR/src/libgraddrop.so
  PYTHON_TESTS=$ROOT/tests/python
}
build_here() {
  local arch=${CUDA_ARCH:-}
  if [ -z "$arch" ]; then
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' ')
    [ -z "$arch" ] && arch=$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null)
    [ -z "$arch" ] && arch=9.0
  fi
  local started
  started=$(date +%s)
  note "build: CUDA architecture $arch in $BUILD_DIR (JOBS=$JOBS)"
  if configure_and_build "$BUILD_DIR" "$arch" ON "$LOG_DIR/build.log" \
       graddrop graddrop_cuda_tests graddrop_distributed_tests bench_cuda_combine_bench graddrop_selftest; then
    record build PASSED "$BUILD_DIR ($(($(date +%s) - started))s)"
  else
    record build FAILED "see build.log"
    return 1
  fi
}

RUN_STAGES=0
for stage in test python sanitize bench; do wants "$stage" && RUN_STAGES=1; done
if [ -n "$PREBUILT" ] && [ "$RUN_STAGES" = 1 ]; then
  TESTS=$PREBUILT/bin/graddrop_cuda_tests
  SELFTEST=$PREBUILT/bin/graddrop_selftest
  DISTRIBUTED_TESTS=$PREBUILT/bin/graddrop_distributed_tests
  BENCH=$PREBUILT/bin/bench_cuda_combine_bench
  LIBRARY=$PREBUILT/lib/libgraddrop.so.0
  PYTHON_TESTS=$PREBUILT/python
  # The carried binaries have run paths to the build machine's torch: find this one's instead.
  library_path=$PREBUILT/lib:$TORCH_LIB
  for extra in "$TORCH_LIB/../../nvidia/cu13/lib" "$TORCH_LIB/../../nvidia/cuda_runtime/lib"; do
    [ -d "$extra" ] && library_path=$library_path:$(cd "$extra" && pwd)
  done
  export LD_LIBRARY_PATH=$library_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  note "prebuilt binaries from $PREBUILT ($(head -2 "$PREBUILT/MANIFEST.txt" 2>/dev/null | tail -1))"
  if ! start_check=$("$TESTS" --gtest_list_tests 2>&1); then
    note "the prebuilt test program does not start here:"
    echo "$start_check" | tail -20
    ldd "$TESTS" 2>&1 | grep -E 'not found|version' || true
    note "falling back to building here"
    record prebuilt FAILED "does not start here; built here instead"
    use_build_dir
    build_here || { note "stopping: the build failed"; }
  fi
else
  use_build_dir
  if wants build; then build_here || note "the build failed"; fi
fi

# ---- test: the self-test users run, then the GPU test program ---------------------------------
if wants test; then
  if [ -x "$SELFTEST" ]; then
    run_limited "$LOG_DIR/selftest.log" "${SELFTEST_LIMIT_S:-120}" "$SELFTEST"
    record selftest "$(status_word "$RUN_STATUS")" "${RUN_SECONDS}s $(tail -1 "$LOG_DIR/selftest.log")"
  else
    record selftest FAILED "no self-test program at $SELFTEST"
  fi
  if [ -x "$TESTS" ]; then
    run_limited "$LOG_DIR/tests.log" "${TEST_LIMIT_S:-150}" "$TESTS" --gtest_color=no
    counts=$(grep -E '^\[ *(PASSED|SKIPPED|FAILED) *\] [0-9]+ test' "$LOG_DIR/tests.log" | tr -s ' ' | sed 's/, listed below://' | paste -sd ';' -)
    record tests "$(status_word "$RUN_STATUS")" "${RUN_SECONDS}s ${counts}"
    FAILED_TESTS=$(grep -E '^\[  FAILED  \] Cuda' "$LOG_DIR/tests.log" | sort -u | head -20 | sed 's/^/           /')
  else
    record tests FAILED "no test program at $TESTS"
  fi
  # Data-parallel combine on CUDA tensors: 2 and 3 ranks of a Gloo group on this GPU.
  if [ -x "$DISTRIBUTED_TESTS" ]; then
    run_limited "$LOG_DIR/distributed.log" "${DISTRIBUTED_LIMIT_S:-60}" "$DISTRIBUTED_TESTS" \
      --gtest_color=no --gtest_filter='*Cuda*'
    counts=$(grep -E '^\[ *(PASSED|SKIPPED|FAILED) *\] [0-9]+ test' "$LOG_DIR/distributed.log" | tr -s ' ' | sed 's/, listed below://' | paste -sd ';' -)
    record distributed "$(status_word "$RUN_STATUS")" "${RUN_SECONDS}s ${counts}"
  else
    record distributed FAILED "no test program at $DISTRIBUTED_TESTS"
  fi
fi

# ---- python: the operator from Python (CPU and CUDA tensors) ----------------------------------
if wants python; then
  if [ -f "$LIBRARY" ] || [ -L "$LIBRARY" ]; then
    run_limited "$LOG_DIR/python.log" "${PYTHON_LIMIT_S:-90}" \
      env "GRADDROP_LIBRARY=$LIBRARY" "$PYTHON" -m pytest -q -rs -p no:cacheprovider "$PYTHON_TESTS"
    last=$(grep -E '(passed|failed|error)' "$LOG_DIR/python.log" | tail -1 | tr -d '=')
    record python "$(status_word "$RUN_STATUS")" "${RUN_SECONDS}s ${last}"
  else
    record python FAILED "no library at $LIBRARY"
  fi
fi

# ---- sanitize: compute-sanitizer over every kernel path at small sizes ------------------------
# memcheck and initcheck: every kernel path (CudaKernelPaths.*: per element vector and element by
# element, marginalised small batches, cached strips, a strip over 48 KB, rows split over blocks,
# many columns, statistics, keep_grad_norm, the custom keep function), the out-of-range inputs and
# the edge cases (empty, 0-d, 1-d), with PyTorch's caching allocator off so that every tensor is
# its own allocation. racecheck and synccheck (shared memory and barriers; slower): the small
# shapes, which still take every marginalised path.
if wants sanitize; then
  if [ -x "$SANITIZER" ] && [ -x "$TESTS" ]; then
    for tool in ${SANITIZER_TOOLS:-memcheck initcheck racecheck synccheck}; do
      case "$tool" in
        memcheck) filter=${MEMCHECK_FILTER:-'CudaKernelPaths.*:CudaOutOfRange.*:CudaReference.EdgeCases'}
                  limit=${MEMCHECK_LIMIT_S:-60}; extra=(--leak-check no); no_cache=1 ;;
        initcheck) filter=${INITCHECK_FILTER:-'CudaKernelPaths.*:CudaReference.EdgeCases'}
                   limit=${INITCHECK_LIMIT_S:-50}; extra=(); no_cache=1 ;;
        racecheck) filter=${RACECHECK_FILTER:-'CudaKernelPaths.SmallShapes'}
                   limit=${RACECHECK_LIMIT_S:-45}; extra=(--racecheck-report hazard); no_cache=0 ;;
        synccheck) filter=${SYNCCHECK_FILTER:-'CudaKernelPaths.SmallShapes'}
                   limit=${SYNCCHECK_LIMIT_S:-35}; extra=(); no_cache=0 ;;
        *) record "$tool" FAILED "unknown compute-sanitizer tool"; continue ;;
      esac
      echo "==== compute-sanitizer --tool $tool, --gtest_filter=$filter" | tee -a "$LOG_DIR/sanitizer.log"
      before=$(wc -l < "$LOG_DIR/sanitizer.log")
      environment=()
      [ "$no_cache" = 1 ] && environment=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1)
      run_limited "$LOG_DIR/sanitizer.log" "$limit" "${environment[@]}" "$SANITIZER" --tool "$tool" "${extra[@]}" \
        --error-exitcode "$SANITIZER_EXIT" --print-limit 20 "$TESTS" --gtest_color=no --gtest_brief=1 \
        "--gtest_filter=$filter"
      output=$(tail -n +"$before" "$LOG_DIR/sanitizer.log")
      errors=$(echo "$output" | grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' | tail -1 | sed 's/^=* *//')
      record "$tool" "$(sanitizer_status "$RUN_STATUS" "$output")" "${RUN_SECONDS}s ${errors}"
    done
  else
    record sanitize FAILED "compute-sanitizer ($SANITIZER) or the test program ($TESTS) not found"
  fi
fi

# ---- bench: the CUDA benchmark ----------------------------------------------------------------
if wants bench; then
  if [ -x "$BENCH" ]; then
    run_limited "$LOG_DIR/bench.log" "${BENCH_LIMIT_S:-180}" "$BENCH" --benchmark_counters_tabular=true \
      ${BENCH_FILTER:+"--benchmark_filter=$BENCH_FILTER"}
    if grep -q 'no CUDA GPU' "$LOG_DIR/bench.log"; then
      record bench SKIPPED "${RUN_SECONDS}s no CUDA GPU"
    else
      record bench "$(status_word "$RUN_STATUS")" "${RUN_SECONDS}s (table in bench.log and below)"
    fi
  else
    record bench FAILED "no benchmark program at $BENCH"
  fi
fi

# ---- Summary ----------------------------------------------------------------------------------
{
  echo "graddrop gpu_check, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(($(date +%s) - START_TIME))s in all"
  echo "GPU: ${GPU_LINE:-none}; $TORCH_LINE; test seed $GRADDROP_TEST_SEED"
  [ -n "$PREBUILT" ] && echo "prebuilt: $(head -2 "$PREBUILT/MANIFEST.txt" 2>/dev/null | tr '\n' ' ')"
  for line in "${SUMMARY[@]}"; do echo "$line"; done
  if [ -n "${FAILED_TESTS:-}" ]; then
    echo "failed tests:"
    echo "$FAILED_TESTS"
  fi
  if [ -f "$LOG_DIR/bench.log" ] && grep -q '^Summary' "$LOG_DIR/bench.log"; then
    sed -n '/^Summary/,$p' "$LOG_DIR/bench.log"
  fi
  if [ ${#FAILED[@]} -gt 0 ]; then
    echo "RESULT: FAILED: ${FAILED[*]}"
  elif [ "$GPU_PRESENT" = True ]; then
    echo "RESULT: OK"
  else
    echo "RESULT: OK as a dry run: no GPU here, so every GPU test, sanitizer and benchmark skipped"
  fi
} > "$LOG_DIR/summary.txt"
echo
echo "==================================== summary ===================================="
cat "$LOG_DIR/summary.txt"
[ ${#FAILED[@]} -eq 0 ]
