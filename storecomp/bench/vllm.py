"""``storecomp bench vllm``: TTFT and output tokens/s of a real vLLM engine with the storecomp connector.

A shared-prefix, multi-turn chat (:mod:`storecomp.bench._vllm_run`) on a
Llama sized so that prefill dominates on the machine, served with vLLM's own
prefix cache off (a server whose KV memory cannot keep every conversation),
once per configuration in the same run: ``recompute`` (no connector: the
peer every tier is compared with), ``host`` (host RAM tier), ``disk`` (local
disk only), ``s3`` (the shared tier only: SeaweedFS on loopback started for
the run, or ``STORECOMP_BENCH_S3_URL``). vLLM runs in its own venv
(``STORECOMP_VLLM_VENV``, made by scripts/setup-vllm-venv.sh); without it the
suite reports ``skipped`` with the install hint. benchmarks/bench_vllm.py
runs this suite with more knobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from ..config import vllm_venv
from ..errors import UnavailableError
from . import Context
from .report import Figure

#: workload sizes: "ci" for ``bench all`` and tests, "full" for RESULTS.md figures
WORKLOADS: dict[str, dict[str, Any]] = {
    "tiny": {"system_tokens": 256, "user_tokens": 32, "output_tokens": 4, "conversations": 1, "turns": 2,
             "model": {"hidden": 256, "intermediate": 512, "layers": 2, "heads": 4, "kv_heads": 2}},
    "ci": {"system_tokens": 1024, "user_tokens": 64, "output_tokens": 8, "conversations": 2, "turns": 3,
           "model": {"hidden": 1024, "intermediate": 2816, "layers": 8, "heads": 16, "kv_heads": 4}},
    "full": {"system_tokens": 2048, "user_tokens": 128, "output_tokens": 16, "conversations": 3, "turns": 4,
             "model": {"hidden": 1024, "intermediate": 2816, "layers": 16, "heads": 16, "kv_heads": 4}},
}  # fmt: skip


def run_suite(ctx: Context, *, workload: str = "ci", configs: tuple[str, ...] = ("recompute", "host", "disk", "s3")) -> dict:
    """Run the workload once per configuration in the vLLM venv; ``{"skipped": reason}`` without the venv."""
    venv = vllm_venv()
    python = venv / "bin" / "python"
    if not python.exists():
        return {"skipped": f"no vLLM venv at {venv}: run scripts/setup-vllm-venv.sh (or set STORECOMP_VLLM_VENV)"}
    work = Path(ctx.directory) / "vllm-bench"
    work.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = dict(WORKLOADS[workload], model_dir=str(work / f"model-{workload}"))
    skipped: dict[str, str] = {}

    def conn(**kw: Any) -> dict[str, Any]:
        return {"host_bytes": 0, "disk_dir": None, "break_even": False, "stats_file": str(work / "stats.jsonl")} | kw

    from ._store_s3 import s3_target

    wanted = {"recompute": None, "host": conn(host_bytes=8 << 30), "disk": conn(disk_dir=str(work / "disk"))}
    with contextlib.ExitStack() as stack:
        if "s3" in configs:
            try:
                t = stack.enter_context(s3_target(str(work)))
                url = f"s3://{t.bucket}/{t.prefix}/vllm-bench".replace("//vllm", "/vllm")
                wanted["s3"] = conn(shared=url, shared_options=dict(t.conn))
            except UnavailableError as e:
                skipped["s3"] = str(e)
        spec["configs"] = [(name, wanted[name]) for name in configs if name in wanted]
        (work / "spec.json").write_text(json.dumps(spec))
        ctx.say(f"vllm: {len(spec['configs'])} engines, workload {workload}")
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        proc = subprocess.run(
            [str(python), "-m", "storecomp.bench._vllm_run", str(work / "spec.json"), str(work / "out.json")],
            capture_output=True, text=True, env=env, timeout=3600,
        )  # fmt: skip
    if proc.returncode != 0:
        raise UnavailableError(f"vLLM benchmark failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    out = json.loads((work / "out.json").read_text())
    return {"workload": workload, "spec": {k: v for k, v in spec.items() if k != "configs"}, "results": out["results"],
            "skipped_configs": skipped, "cpu_count": os.cpu_count(), "loadavg": os.getloadavg()}  # fmt: skip


def figures(result: dict[str, Any]) -> list[Figure]:
    """TTFT p50/p90 (lower is better) and output tokens/s per tier, each next to recompute (the peer)."""
    if "skipped" in result:
        return [Figure(suite="vllm", case="ttft", unit="s", value=float("nan"), note=f"skipped: {result['skipped']}")]
    by = {r["config"]: r for r in result["results"]}
    base = by.get("recompute")
    spec = result["spec"]
    note = (f"{spec['conversations']} conversations x {spec['turns']} turns, system prompt {spec['system_tokens']} tokens; "
            f"Llama {spec['model']['layers']}x{spec['model']['hidden']} (dummy weights) on vLLM CPU; load avg "
            f"{result['loadavg'][0]:.1f} on {result['cpu_count']} cores")  # fmt: skip
    out = []
    for name, r in by.items():
        if name == "recompute":
            continue
        for case, key, better_high in (("ttft_p50", "ttft_p50_s", False), ("ttft_p90", "ttft_p90_s", False),
                                       ("output_tok_s", "output_tok_s", True)):  # fmt: skip
            peers = {"recompute": base[key]} if base else {}
            out.append(Figure(suite="vllm", case=f"{name}_{case}", unit="tok/s" if better_high else "s", value=r[key],
                              peers=peers, higher_is_better=better_high, note=note))  # fmt: skip
    return out
