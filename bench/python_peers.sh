#!/usr/bin/env bash
# The Python peers side by side (bench/python_peers.py): installs LibMTL 1.1.5 and TorchJD 0.18.0
# from PyPI into a side folder (build/peers, --no-deps: LibMTL pins an old torchvision stack we do
# not need; GradDrop uses only their weighting/aggregation code and torch), then runs the
# benchmark with .venv's python, which must have the graddrop package installed
# (pip install --no-build-isolation .). Arguments go to python_peers.py, e.g.
#   bash bench/python_peers.sh --tasks 2,4,8 --width 2048 --steps 10
# --trunk gives a trunk that is not uniform width (input size first, then each layer's output
# size; overrides --in-features/--width/--depth). --preset celeba is the GradDrop paper's CelebA
# shape: --trunk 512,2048,2048,512 --classes 2 --batch 256 --tasks 2,8,40, each overridable by
# giving it explicitly. The full CelebA table (all four methods, 2 threads):
#   bash bench/python_peers.sh --preset celeba --devices cpu --threads 2 --steps 15 --warmup 2
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PEERS=build/peers
if ! PYTHONPATH=$PEERS $PY -c "import importlib.metadata as m, sys; \
    sys.exit(not (m.version('libmtl') == '1.1.5' and m.version('torchjd') == '0.18.0'))" 2>/dev/null; then
  $PY -m pip install -q --no-deps --upgrade --target "$PEERS" libmtl==1.1.5 torchjd==0.18.0
fi
$PY -c "import graddrop" || { echo "install graddrop first: $PY -m pip install --no-build-isolation ."; exit 1; }
PYTHONPATH=$PEERS exec $PY bench/python_peers.py "$@"
