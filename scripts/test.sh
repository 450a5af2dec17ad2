#!/usr/bin/env bash
# Installs what is missing (scripts/setup.sh), builds graddrop against a LibTorch and runs every
# test with CTest.
#   bash scripts/test.sh            # the primary LibTorch: pip torch in .venv (CUDA kernels
#                                   # compiled and linked; GPU tests skip without a GPU)
#   bash scripts/test.sh --debian   # Debian's libtorch-dev 1.13 (CPU only)
# Extra CMake arguments can be passed in GRADDROP_CMAKE_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

if [ "${1:-}" = "--debian" ]; then
  build_dir=build-debian
  torch_args=(-DTorch_DIR=/usr/lib/x86_64-linux-gnu/cmake/Torch)
else
  build_dir=build
  torch_args=(-DCMAKE_PREFIX_PATH="$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')")
fi

# shellcheck disable=SC2086
cmake -S . -B "$build_dir" -G Ninja "${torch_args[@]}" ${GRADDROP_CMAKE_ARGS:-}
cmake --build "$build_dir" -j "${GRADDROP_JOBS:-$(nproc)}"
# The suites use both cores themselves (at::set_num_threads), so run them one at a time.
ctest --test-dir "$build_dir" --output-on-failure
