#!/usr/bin/env bash
# The GPU checks, as one script for a machine with a CUDA GPU and no network
# (the device machine of this workplace: an image with python3, torch, cupy,
# pybind11 and pytest, nothing else of ours).
#
#   scripts/gpu-check.sh [OUTDIR]
#
# What it needs beside the checkout, in $STORECOMP_WHEELS (default .whl/,
# ignored by git): the wheels of storecomp's run and test dependencies that the
# image lacks (crc32c, google-crc32c, cryptography + cffi + pycparser, obstore,
# kvikio-cu13 + libkvikio-cu13 + rapids-logger), optionally deb/liburing*.deb
# (io_uring), weed.xz (the SeaweedFS binary, xz-compressed, for the S3
# cases) and *.tgz trees unpacked beside the wheels (boto3 with a botocore
# trimmed to the S3 models: the SeaweedFS fixture uses it). It builds the extension in place, then runs, each with its own time
# limit and log under OUTDIR: every gpu-marked test and `storecomp bench read
# --path auto` (the device sweep next to the host cases).
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu-check}}
wheels=${STORECOMP_WHEELS:-.whl}
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1

step() { echo; echo "=== $* ($(date -u +%T))"; }

step machine
nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max --format=csv
nproc; free -g | head -2; df -h /tmp | tail -1; uname -r
python3 -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"

step dependencies
if compgen -G "$wheels/deb/*.deb" >/dev/null; then
    for f in "$wheels"/deb/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
site=/tmp/storecomp-site
if compgen -G "$wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl || exit 1
fi
mkdir -p "$site/bin"
for t in "$wheels"/*.tgz; do [ -f "$t" ] && tar xzf "$t" -C "$site"; done  # unpacked trees (a trimmed botocore)
if [ -f "$wheels/weed.xz" ]; then
    python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
        "$wheels/weed.xz" "$site/bin/weed" && chmod +x "$site/bin/weed"
fi
export PYTHONPATH="$PWD:$site" PATH="$site/bin:$PATH"

step build
STORECOMP_BUILD_JOBS=$(nproc) python3 setup.py -q build_ext --inplace || exit 1
python3 -m storecomp info --json > "$out/info.json"; python3 -m storecomp info

step "pytest -m gpu"
files=$(grep -rlE "mark\.gpu|pytestmark = pytest\.mark\.gpu" tests --include='test_*.py' | sort)
timeout 300 python3 -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml="$out/gpu-tests.xml" $files
echo "pytest exit $?"

[ "${GPU_CHECK_BENCH:-1}" = 0 ] && exit 0
step "bench read --path auto"
timeout 240 python3 -m storecomp bench read --path auto --size "${GPU_CHECK_SIZE:-2G}" --duration 1 --repeats 2 \
    --json "$out/bench-read.json"
echo "bench read exit $?"

