#!/usr/bin/env bash
# Builds graddrop and its CPU suites with AddressSanitizer + UndefinedBehaviorSanitizer (CPU only,
# against the pip LibTorch in .venv) into build-sanitize, and runs the CPU suite, the fuzz test
# and the data-parallel suite (Gloo ranks in threads) under them; any report stops the run
# (halt_on_error) and fails it.
#   bash scripts/sanitize.sh                      # after scripts/setup.sh (scripts/test.sh runs it)
#   GRADDROP_FUZZ_CASES=20000 bash scripts/sanitize.sh   # a longer fuzz run
# LibTorch itself is not instrumented; only graddrop and the tests are (the executables are, so
# no LD_PRELOAD is needed; the Python suite, whose interpreter is not, is left out). Leak
# detection stays on. Against LibTorch 2.11.0 no suppression is needed: the files in
# scripts/sanitizers/ are empty and say why; add an entry there only with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Python whose torch is the LibTorch to build against (default: the project's .venv).
python="${GRADDROP_TORCH_PYTHON:-.venv/bin/python}"
if [ ! -x "$python" ]; then
  echo "sanitize: $python is missing; run scripts/setup.sh (or scripts/test.sh) first" >&2
  exit 1
fi
torch_prefix="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"

cmake -S . -B build-sanitize -G Ninja -DCMAKE_PREFIX_PATH="$torch_prefix" \
  -DGRADDROP_CUDA=OFF -DGRADDROP_BUILD_EXAMPLES=OFF -DGRADDROP_BUILD_BENCHMARKS=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" -DCMAKE_SHARED_LINKER_FLAGS="$flags"
targets=(graddrop_tests graddrop_fuzz_tests)
# The data-parallel tests, where the LibTorch has c10d's registry and Gloo's headers are here.
if ninja -C build-sanitize -t targets all 2>/dev/null | grep -q '^graddrop_distributed_tests:'; then
  targets+=(graddrop_distributed_tests)
fi
cmake --build build-sanitize -j "${GRADDROP_JOBS:-$(nproc)}" --target "${targets[@]}"

supp="$PWD/scripts/sanitizers"
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:strict_init_order=1:check_initialization_order=1:suppressions=$supp/asan.supp${GRADDROP_ASAN_OPTIONS:+:$GRADDROP_ASAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$supp/ubsan.supp"
# The suites run the fuzz test on every instruction set; a sanitized case costs a few times more.
export GRADDROP_FUZZ_CASES="${GRADDROP_FUZZ_CASES:-1000}"
ctest --test-dir build-sanitize --output-on-failure -R '^(cpu_tests|fuzz_tests|distributed_tests)$'
