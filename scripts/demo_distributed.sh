#!/usr/bin/env bash
# Data-parallel Multi-Fashion with GradDrop: N processes on this machine (Gloo over 127.0.0.1),
# then the single-process run on the same global batches, side by side. Installs what is missing
# and builds like scripts/demo.sh. Extra arguments go to every rank (distributed_fashion --help):
#   bash scripts/demo_distributed.sh --ranks=2
#   bash scripts/demo_distributed.sh --ranks=2 --epochs=3 --purity=local
#   bash scripts/demo_distributed.sh --ranks=2 --compare-step-time   # step time, no training
# GRADDROP_SKIP_SETUP=1 skips the setup check; GRADDROP_BUILD_DIR picks the build folder.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build_dir="${GRADDROP_BUILD_DIR:-$root/build}"

ranks=2
port="${GRADDROP_MASTER_PORT:-29512}"
compare=0
arguments=()
for argument in "$@"; do
  case "$argument" in
    --ranks=*) ranks="${argument#--ranks=}" ;;
    --master-port=*) port="${argument#--master-port=}" ;;
    --compare-step-time*) compare=1; arguments+=("$argument") ;;
    *) arguments+=("$argument") ;;
  esac
done
if ! [[ "$ranks" =~ ^[1-9][0-9]*$ ]]; then
  echo "demo_distributed: --ranks must be a positive integer, got '$ranks'" >&2
  exit 2
fi

if [ "${GRADDROP_SKIP_SETUP:-0}" != 1 ]; then
  bash "$root/scripts/setup.sh"
fi
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  torch_prefix="$("$root/.venv/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_PREFIX_PATH="$torch_prefix" \
    -DCMAKE_BUILD_TYPE=Release
fi
cmake -S "$root" -B "$build_dir" -DGRADDROP_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$build_dir" --target distributed_fashion -j "${GRADDROP_BUILD_JOBS:-$(nproc)}"
program="$build_dir/examples/distributed_fashion"
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

# Starts the ranks (rank 0 in the foreground of its log), waits for all; fails if any failed.
run_ranks() {
  local world="$1"; shift
  local pids=()
  for ((rank = 1; rank < world; rank++)); do
    "$program" --rank="$rank" --world-size="$world" --master-port="$port" "$@" \
      >"$logs/rank$rank.log" 2>&1 &
    pids+=($!)
  done
  local status=0
  "$program" --rank=0 --world-size="$world" --master-port="$port" "$@" || status=$?
  for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
  if [ "$status" != 0 ]; then
    for ((rank = 1; rank < world; rank++)); do
      echo "--- rank $rank:" >&2; cat "$logs/rank$rank.log" >&2
    done
  fi
  return "$status"
}

echo "=== $ranks processes (data-parallel)"
run_ranks "$ranks" "${arguments[@]}" | tee "$logs/parallel.txt"
if [ "$compare" = 1 ]; then exit 0; fi
echo "=== 1 process, the same global batches"
run_ranks 1 "${arguments[@]}" | tee "$logs/single.txt"
echo
echo "=== side by side"
grep -h '^summary:' "$logs/parallel.txt" "$logs/single.txt"
