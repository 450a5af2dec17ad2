#!/usr/bin/env bash
# Installs what is missing (scripts/setup.sh), builds the Multi-Fashion demo and runs it with
# default settings (about a minute and a half on one idle core); extra arguments go to the
# program, e.g.
#   bash scripts/demo.sh --epochs=20 --seeds=0,1,2
#   bash scripts/demo.sh --help
# The build goes to ./build (GRADDROP_BUILD_DIR to change), configured once against the LibTorch
# of the project's .venv. Results go to ./out unless --out-dir says otherwise.
# GRADDROP_SKIP_SETUP=1 skips the setup check.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build_dir="${GRADDROP_BUILD_DIR:-$root/build}"

if [ "${GRADDROP_SKIP_SETUP:-0}" != 1 ]; then
  bash "$root/scripts/setup.sh"
fi
if [ ! -x "$root/.venv/bin/python" ]; then
  echo "demo: $root/.venv is missing; run bash scripts/setup.sh" >&2
  exit 1
fi
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  torch_prefix="$("$root/.venv/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
  generator=()
  if command -v ninja >/dev/null; then generator=(-G Ninja); fi
  cmake -S "$root" -B "$build_dir" "${generator[@]}" -DCMAKE_PREFIX_PATH="$torch_prefix" \
    -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$build_dir" --target multitask_fashion -j "${GRADDROP_BUILD_JOBS:-$(nproc)}"
exec "$build_dir/examples/multitask_fashion" "$@"
