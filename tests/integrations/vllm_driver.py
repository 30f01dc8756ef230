"""Runs real vLLM engines one after another in the vLLM venv, as a test scenario says (JSON).

Usage: python vllm_driver.py SPEC.json RESULTS.jsonl

SPEC: {"model_dir", "prompts": [[ids...]], "max_tokens", "steps": [...]} where a step is
* {"engine": NAME, "connector": EXTRA_CONFIG | null, "role": "kv_both"}: start an engine
  (a new EngineCore and worker process), generate every prompt greedily, record
  {"name", "tokens", "cached", "seconds"} (or {"name", "error"} when the engine does not start), shut it down;
* {"corrupt": DIR, "mode": "flip" | "truncate" | "mixed"}: damage every chunk file under DIR (mixed:
  every other one truncated, the rest with one byte of the last layer flipped);
* {"copy_disk": SRC, "to": DST}: copy a disk tier directory.
Each engine is a fresh process pair, so engine B sees nothing of engine A but the tiers.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import time

from storecomp.integrations import vllm_engine


def damage(root: str, mode: str) -> int:
    n = 0
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if not f.endswith(".kv"):
                continue
            path = os.path.join(dirpath, f)
            size = os.path.getsize(path)
            with open(path, "r+b") as fh:
                if mode == "truncate" or (mode == "mixed" and n % 2):
                    fh.truncate(size // 2)
                else:  # one byte in the last layer's payload: the header and earlier layers stay valid
                    fh.seek(size - 5000)
                    b = fh.read(1)
                    fh.seek(size - 5000)
                    fh.write(bytes([b[0] ^ 0xFF]))
            n += 1
    return n


def kv_usage(llm: object) -> float:
    """The engine's KV cache usage gauge after its requests finished (0.0: no block left held), after
    a few idle steps so that blocks waiting for a save to finish come back."""
    eng = llm.llm_engine  # type: ignore[attr-defined]
    value = -1.0
    for _ in range(200):
        value = next((m.value for m in eng.get_metrics() if m.name == "vllm:kv_cache_usage_perc"), -1.0)
        if value == 0.0:
            break
        eng.step()
        time.sleep(0.02)
    return value


def run_engine(spec: dict, step: dict) -> dict:
    from vllm import SamplingParams

    t0 = time.perf_counter()
    try:
        llm = vllm_engine.start_llm(
            spec["model_dir"],
            step.get("connector"),
            role=step.get("role", "kv_both"),
            failure_policy=step.get("failure_policy", "recompute"),
            kv_cache_bytes=spec.get("kv_cache_bytes", 256 << 20),
            disable_log_stats=False,
        )
    except Exception as e:  # noqa: BLE001 - the scenario checks the message
        return {"name": step["engine"], "error": f"{type(e).__name__}: {e}"}
    started = time.perf_counter() - t0
    params = SamplingParams(max_tokens=spec.get("max_tokens", 8), temperature=0.0)
    aborted = 0
    if step.get("abort"):  # every request aborted right after its first step (prefill done, save in flight)
        eng = llm.llm_engine
        for i, p in enumerate(spec["prompts"]):
            eng.add_request(f"abort-{i}", {"prompt_token_ids": p}, params)
        eng.step()
        eng.abort_request([f"abort-{i}" for i in range(len(spec["prompts"]))])
        while eng.has_unfinished_requests():
            eng.step()
        aborted = len(spec["prompts"])
    out = []
    for _ in range(spec.get("rounds", 1)):
        out = llm.generate([{"prompt_token_ids": p} for p in spec["prompts"]], params, use_tqdm=False)
    res = {
        "name": step["engine"],
        "tokens": [list(o.outputs[0].token_ids) for o in out],
        "cached": [o.num_cached_tokens for o in out],
        "start_seconds": started,
        "seconds": time.perf_counter() - t0,
        "aborted": aborted,
        "kv_usage": kv_usage(llm),
    }
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return res


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    vllm_engine.make_model(spec["model_dir"], **spec.get("model", {}))
    with open(sys.argv[2], "a") as out:
        for step in spec["steps"]:
            if "engine" in step:
                res = run_engine(spec, step)
            elif "corrupt" in step:
                res = {"corrupted": damage(step["corrupt"], step.get("mode", "flip"))}
            elif "copy_disk" in step:
                shutil.copytree(step["copy_disk"], step["to"], dirs_exist_ok=True)
                res = {"copied": step["to"]}
            else:
                raise SystemExit(f"unknown step {step}")
            out.write(json.dumps(res) + "\n")
            out.flush()
            print("STEP", json.dumps(res)[:300], flush=True)


if __name__ == "__main__":
    main()
