#!/usr/bin/env bash
# Installs everything graddrop needs on a fresh Debian 12 machine:
#   - Debian packages: compilers, CMake, GoogleTest, Google Benchmark, zlib, the
#     Fashion-MNIST data set, gnuplot, Gloo's headers (the data-parallel tests create Gloo
#     groups; the pip wheel has Gloo's symbols but not its headers), and Debian's LibTorch 1.13
#     (the compatibility target);
#   - the primary LibTorch: PyPI's torch (pinned, CUDA-enabled) in the project-local
#     virtual environment .venv, plus pytest, and scikit-build-core (the build backend of the
#     graddrop Python package; it uses the system's CMake and Ninja).
# Idempotent: a second run only checks. Set GRADDROP_SKIP_APT=1 to skip the Debian part.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${GRADDROP_TORCH_VERSION:-2.11.0}"
APT_PACKAGES=(build-essential cmake ninja-build pkg-config python3-venv
  libgtest-dev libgmock-dev googletest libbenchmark-dev zlib1g-dev
  dataset-fashion-mnist gnuplot-nox libtorch-dev libgloo-dev)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ "${GRADDROP_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

PY="${GRADDROP_PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION into .venv (large download, once)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==$TORCH_VERSION" pytest numpy
fi
if ! .venv/bin/python -c "import scikit_build_core, pytest" 2>/dev/null; then
  echo "setup: installing scikit-build-core and pytest into .venv (the Python package's build)"
  .venv/bin/python -m pip install -q "scikit-build-core>=0.10" pytest
fi
echo "setup: torch $(.venv/bin/python -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"
