#!/usr/bin/env bash
# The GPU checks of graddrop in one command, for a machine with an NVIDIA GPU, nvcc, CMake and a
# CUDA-enabled LibTorch (a pip torch), and no network: configure, build, run the GPU tests, run
# them again under compute-sanitizer (memcheck and racecheck, on a subset that takes minutes),
# and run the CUDA benchmark. Everything is printed, and logged under $OUT when it is set.
#
# Usage:  scripts/gpu_check.sh [--googletest=DIR] [--benchmark=DIR] [STAGE...]
#   STAGE: build, test, sanitize, bench, or all (the default). The build folder (build-gpu) is
#   kept, so the stages can run in separate calls where one call has a time limit (each takes a
#   few minutes on a 16-core H100 machine): `build test`, then `sanitize bench`.
#
# Offline inputs, prepared once on a machine with the Debian packages, in the repository root
# (.carry/ is ignored by git):
#   mkdir -p .carry && cp -r /usr/src/googletest .carry/
#   GoogleTest is then built from .carry/googletest (or --googletest=DIR, or the environment
#   variable GRADDROP_GOOGLETEST_SOURCE_DIR).
#   Google Benchmark: Debian ships no sources (libbenchmark-dev holds headers and a library built
#   for Debian). With a source tree of https://github.com/google/benchmark (1.7 or later) in
#   .carry/benchmark (or --benchmark=DIR, or GRADDROP_BENCHMARK_SOURCE_DIR) the benchmark uses
#   it; without one, the CUDA benchmark builds as a plain program (CUDA-event timing, the same
#   summary table) and the CPU benchmarks are left out.
#
# Environment: PYTHON (the python whose torch to use; default /opt/torch/.venv/bin/python3 if it
# exists, else python3), CUDA_ARCH (e.g. 9.0; default: the local GPU's), BUILD_DIR (build-gpu),
# BENCH_FILTER (a substring/regex of the benchmark names to run), OUT (a folder for the logs).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

GOOGLETEST_DIR=${GRADDROP_GOOGLETEST_SOURCE_DIR:-$ROOT/.carry/googletest}
BENCHMARK_DIR=${GRADDROP_BENCHMARK_SOURCE_DIR:-$ROOT/.carry/benchmark}
BUILD_DIR=${BUILD_DIR:-$ROOT/build-gpu}
STAGES=()
for argument in "$@"; do
  case "$argument" in
    --googletest=*) GOOGLETEST_DIR=${argument#*=} ;;
    --benchmark=*) BENCHMARK_DIR=${argument#*=} ;;
    build|test|sanitize|bench|all) STAGES+=("$argument") ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$argument' (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#STAGES[@]} -eq 0 ] && STAGES=(all)
wants() { local stage; for stage in "${STAGES[@]}"; do [ "$stage" = all ] || [ "$stage" = "$1" ] && return 0; done; return 1; }

LOG_DIR=""
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  LOG_DIR=$OUT
  exec > >(tee -a "$LOG_DIR/gpu_check.log") 2>&1
fi
# Runs a command; with OUT set, its output also goes to $OUT/NAME.log. Returns its status.
logged() {
  local name=$1; shift
  echo "+ $*"
  if [ -n "$LOG_DIR" ]; then
    "$@" 2>&1 | tee "$LOG_DIR/$name.log"
    return "${PIPESTATUS[0]}"
  fi
  "$@"
}

FAILED=()
step_failed() { echo "gpu_check: FAILED: $1"; FAILED+=("$1"); }

# ---- The machine ------------------------------------------------------------------------------
if [ -z "${PYTHON:-}" ]; then
  if [ -x /opt/torch/.venv/bin/python3 ]; then PYTHON=/opt/torch/.venv/bin/python3; else PYTHON=python3; fi
fi
echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>/dev/null ||
  echo "gpu_check: no nvidia-smi"

TORCH_PREFIX=$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)') || {
  echo "gpu_check: $PYTHON has no torch (set PYTHON)"; exit 1; }
"$PYTHON" -c 'import torch; print("gpu_check: torch", torch.__version__, "CUDA", torch.version.cuda, "GPU", torch.cuda.is_available())'
if [ -z "${CUDA_ARCH:-}" ]; then
  CUDA_ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' ')
  [ -z "$CUDA_ARCH" ] && CUDA_ARCH=$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null)
  [ -z "$CUDA_ARCH" ] && CUDA_ARCH=9.0
fi
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
echo "gpu_check: CUDA architecture $CUDA_ARCH, nvcc $NVCC, torch's CMake config in $TORCH_PREFIX"

# ---- Configure and build ----------------------------------------------------------------------
if wants build; then
  GENERATOR=(-G Ninja)
  command -v ninja > /dev/null || GENERATOR=()
  CONFIGURE=(cmake -S "$ROOT" -B "$BUILD_DIR" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release
    "-DCMAKE_PREFIX_PATH=$TORCH_PREFIX" "-DCMAKE_CUDA_COMPILER=$NVCC" -DGRADDROP_CUDA=ON
    "-DTORCH_CUDA_ARCH_LIST=$CUDA_ARCH" -DGRADDROP_BUILD_EXAMPLES=OFF
    -DGRADDROP_BUILD_TESTS=ON -DGRADDROP_BUILD_BENCHMARKS=ON)
  if [ -f "$GOOGLETEST_DIR/CMakeLists.txt" ]; then
    CONFIGURE+=("-DGRADDROP_GOOGLETEST_SOURCE_DIR=$GOOGLETEST_DIR")
  else
    echo "gpu_check: no GoogleTest sources at $GOOGLETEST_DIR: trying an installed GoogleTest"
  fi
  if [ -f "$BENCHMARK_DIR/CMakeLists.txt" ]; then
    CONFIGURE+=("-DGRADDROP_BENCHMARK_SOURCE_DIR=$BENCHMARK_DIR")
  fi
  TORCH_CUDA_ARCH_LIST=$CUDA_ARCH logged configure "${CONFIGURE[@]}" || { step_failed configure; }
  # Only what the GPU checks run (the CPU suites are CI's).
  if [ ${#FAILED[@]} -eq 0 ]; then
    logged build cmake --build "$BUILD_DIR" --parallel "$(nproc)" \
      --target graddrop_cuda_tests bench_cuda_combine_bench || step_failed build
  fi
  if [ ${#FAILED[@]} -gt 0 ]; then echo "gpu_check: stopping: ${FAILED[*]}"; exit 1; fi
fi

TESTS=$BUILD_DIR/tests/graddrop_cuda_tests
BENCH=$BUILD_DIR/bench/bench_cuda_combine_bench

# ---- The GPU tests ----------------------------------------------------------------------------
if wants test; then
  logged tests "$TESTS" --gtest_color=no || step_failed "GPU tests"
fi

# ---- compute-sanitizer ------------------------------------------------------------------------
# memcheck: every kernel path (per element with vectors and element by element, marginalised
# fused with the strip cached and split over row parts, the task table, statistics) on small
# shapes; racecheck (shared-memory hazards, much slower): the paths with block reductions and the
# cache. MEMCHECK_FILTER / RACECHECK_FILTER override the GoogleTest filters.
if wants sanitize; then
  MEMCHECK_FILTER=${MEMCHECK_FILTER:-'CudaReference.EveryKernelPathAndLayout:CudaReference.EdgeCases:CudaKeying.*:CudaDeterminism.*'}
  RACECHECK_FILTER=${RACECHECK_FILTER:-'CudaDeterminism.*'}
  if [ -x "$SANITIZER" ]; then
    logged memcheck "$SANITIZER" --tool memcheck --error-exitcode 1 --print-limit 20 \
      "$TESTS" --gtest_color=no "--gtest_filter=$MEMCHECK_FILTER" || step_failed memcheck
    logged racecheck "$SANITIZER" --tool racecheck --racecheck-report hazard --error-exitcode 1 \
      --print-limit 20 "$TESTS" --gtest_color=no "--gtest_filter=$RACECHECK_FILTER" ||
      step_failed racecheck
  else
    step_failed "compute-sanitizer not found"
  fi
fi

# ---- The CUDA benchmark -----------------------------------------------------------------------
if wants bench; then
  if [ -x "$BENCH" ]; then
    logged bench "$BENCH" --benchmark_counters_tabular=true ${BENCH_FILTER:+"--benchmark_filter=$BENCH_FILTER"} ||
      step_failed bench
  else
    step_failed "no benchmark program at $BENCH"
  fi
fi

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu_check: FAILED: ${FAILED[*]}"
  exit 1
fi
echo "gpu_check: all requested stages passed (${STAGES[*]})"
