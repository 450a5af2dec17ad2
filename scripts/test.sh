#!/usr/bin/env bash
# Installs what is missing (scripts/setup.sh), builds graddrop against a LibTorch and runs every
# test with CTest; with the primary LibTorch it then installs the graddrop Python package into
# .venv (reusing the build) and runs its pytest suite.
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

if [ "${1:-}" != "--debian" ]; then
  # The Python package, built from the same build folder: CMake finds the library up to date, so
  # this installs it (and the Python files) without compiling it again.
  .venv/bin/python -m pip install -q --no-build-isolation -C build-dir="$build_dir" .
  (cd tests/python/package && ../../../.venv/bin/python -m pytest -q -p no:cacheprovider .)
fi
