"""TTFT (p50, p90) and output tokens/s of a real vLLM engine: recompute vs storecomp's host, disk and S3 tiers.

    scripts/setup-vllm-venv.sh                      # once: vLLM in its own venv
    python benchmarks/bench_vllm.py                 # the RESULTS.md workload ("full")
    python benchmarks/bench_vllm.py --workload tiny # smoke run (what the tests run)

Same code as ``storecomp bench vllm`` (storecomp.bench.vllm); S3 is a
SeaweedFS on loopback started for the run unless STORECOMP_BENCH_S3_URL names
one. On a GPU machine the same command runs vLLM's CUDA build if the venv
holds one (dummy weights of the model shape in the workload).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from storecomp.bench import Context, report
from storecomp.bench import vllm as suite


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=sorted(suite.WORKLOADS), default="full")
    p.add_argument("--configs", default="recompute,host,disk,s3", help="comma-separated subset of recompute,host,disk,s3")
    p.add_argument("--dir", help="work directory (default: a temporary one)")
    p.add_argument("--json", help="write the result here")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vllm-", dir=a.dir) as d:
        ctx = Context(d, 0, 1.0, progress=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True))
        result = suite.run_suite(ctx, workload=a.workload, configs=tuple(a.configs.split(",")))
    print(report.table(suite.figures(result)))
    for r in result.get("results", []):
        print(json.dumps(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
