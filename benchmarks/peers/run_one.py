"""One peer step in its own process: write a format, or measure one (peer, num_workers).

    python run_one.py write FORMAT OUT N
    python run_one.py run DATA_ROOT PEER:W [PEER:W ...] --duration S [--max-samples N] [--step-ms MS] [--seed K]

``run`` measures each (peer, num_workers) in turn, reading
``DATA_ROOT/<format>``: it evicts the data files from the page cache (and
again whenever a pass ends), measures (harness.measure) and prints one line ``RESULT {json}`` per case
on stdout. A full benchmark gives one case per process; the smoke run
(``--tiny``) puts the project-Python cases in one process to save torch's
import time. The driver
(bench_peers.py) launches this with the project's Python for storecomp and
torch, and with the peer venv's Python for the others: each in its own
process, since Mosaic's shared memory does not survive a second loader in one
process and LitData's optimize() spawns workers (hence the __main__ guard).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import evict, measure  # noqa: E402
from loaders import PEERS, open_peer, write  # noqa: E402

MARK = "RESULT "


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("format")
    w.add_argument("out")
    w.add_argument("n", type=int)
    r = sub.add_parser("run")
    r.add_argument("data_root")
    r.add_argument("cases", nargs="+", help="PEER:NUM_WORKERS")
    r.add_argument("--duration", type=float, default=15.0)
    r.add_argument("--max-samples", type=int, default=0, help="stop after this many samples (0: no cap)")
    r.add_argument("--step-ms", type=float, default=0.0)
    r.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.cmd == "write":
        write(args.format, args.out, args.n)
        return 0
    for case in args.cases:
        peer, _, workers = case.partition(":")
        data = os.path.join(args.data_root, PEERS[peer][0])
        evicted = evict(data)
        one_pass, count = open_peer(peer, data, int(workers or 0), args.seed)
        res = measure(
            one_pass,
            count,
            duration=args.duration,
            max_samples=args.max_samples,
            step_s=args.step_ms / 1e3,
            on_pass_end=lambda data=data: evict(data),
        )
        res.update(peer=peer, workers=int(workers or 0), files_evicted=evicted)
        print(MARK + json.dumps(res), flush=True)
        del one_pass, count
    return 0


if __name__ == "__main__":
    sys.exit(main())
