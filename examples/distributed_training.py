"""Data-parallel training on a storecomp dataset with torch.distributed (gloo, CPU).

Each rank builds the same ``storecomp.DataLoader``; it finds its rank and the
world size from torch.distributed and reads only its interleaved slice of the
global order. Run it for a few steps, save the loader state, and resume with
another world size: across the run no sample is lost or repeated.

    python examples/distributed_training.py --data /data/ds --world-size 4 --steps 5 --save state.json
    python examples/distributed_training.py --data /data/ds --world-size 2 --resume state.json

``--data`` may be any dataset storecomp opens; without it a small one is
written to a temporary folder. ``--report FILE`` writes the sample ids each
rank saw (JSON), which is how tests/data/test_distributed.py checks the run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import storecomp
from storecomp.data import write_dataset


def make_dataset(path: str, n: int = 1000) -> None:
    rng = np.random.default_rng(0)
    write_dataset(path, {"x": rng.random((n, 16)).astype(np.float32), "id": np.arange(n)}, shard_bytes=16 << 10)


def worker(rank: int, args: argparse.Namespace, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.world_size)
    try:
        loader = storecomp.DataLoader(args.data, args.batch_size, seed=args.seed)  # rank and world from torch.distributed
        if args.resume:
            with open(args.resume) as f:
                loader.load_state_dict(json.load(f))
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        seen: list[int] = []
        for step, batch in enumerate(loader):
            loss = model(batch["x"]).pow(2).mean()
            opt.zero_grad()
            loss.backward()  # gradients all-reduced across ranks
            opt.step()
            seen += batch["id"].tolist()
            if args.steps is not None and step + 1 == args.steps:
                break
        state = loader.state_dict()
        if args.save and rank == 0:
            with open(args.save, "w") as f:
                json.dump(state, f)
        everyone: list[Any] = [None] * args.world_size
        dist.all_gather_object(everyone, {"rank": rank, "seen": seen, "state": state, "metrics": loader.metrics()})
        if rank == 0:
            total = sum(len(e["seen"]) for e in everyone)
            print(f"world {args.world_size}: {total} samples, position {state['position']}, epoch {state['epoch']}")
            if args.report:
                with open(args.report, "w") as f:
                    json.dump(everyone, f)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset path or URL (default: write a small one)")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="stop after this many steps (default: one epoch)")
    p.add_argument("--save", help="write the loader state here at the end")
    p.add_argument("--resume", help="resume from a saved loader state")
    p.add_argument("--report", help="write each rank's sample ids here (JSON)")
    args = p.parse_args()
    if args.data is None:
        args.data = os.path.join(tempfile.mkdtemp(prefix="storecomp-example-"), "ds")
        make_dataset(args.data)
    # fork: ranks start without importing torch again (spawn works too, slower).
    mp.start_processes(worker, args=(args, free_port()), nprocs=args.world_size, join=True, start_method="fork")


if __name__ == "__main__":
    main()
