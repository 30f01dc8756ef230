#!/usr/bin/env bash
# The peer loaders' own virtual environment (see benchmarks/peers/README.md).
#
#   benchmarks/peers/setup_venv.sh [VENV]      # default ~/.cache/storecomp-peers-venv
#
# MosaicML Streaming imports torchvision, whose binary needs a CUDA build of
# torch, so the peers cannot share the project's CPU-torch environment. pip
# pulls a CUDA torch (~6 GB, about a minute); it runs fine on the CPU.
set -euo pipefail
VENV="${1:-${STORECOMP_PEERS_VENV:-$HOME/.cache/storecomp-peers-venv}}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet mosaicml-streaming litdata webdataset numpy
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("mosaicml-streaming", "litdata", "webdataset", "torch", "numpy"):
    print(f"{name} {md.version(name)}")
PY
echo "peer venv ready: $VENV/bin/python"
