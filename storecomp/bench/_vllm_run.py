"""The vLLM workload of ``storecomp bench vllm``; runs inside the vLLM venv (it imports vllm).

    python -m storecomp.bench._vllm_run SPEC.json OUT.json

A shared-prefix, multi-turn chat: ``conversations`` conversations share a
system prompt of ``system_tokens``; each has ``turns`` turns, every turn
appending ``user_tokens`` of user text and the ``output_tokens`` the model
answered to the conversation so far. Requests run one at a time (TTFT is
then the prefill, not queueing). vLLM's own prefix cache is off, as in a
server whose KV memory cannot keep every conversation: each turn's history
comes from the configured storecomp tier or is recomputed. One engine per
configuration (recompute, host, disk, shared), same weights (dummy, seeded),
same prompts; TTFT is arrival to first token, output tokens/s the decode
rate after it. A conversation's first turn finds nothing stored in any
configuration, so the figures are over turns 2..n.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from typing import Any

from storecomp.integrations import vllm_engine


def make_model(model_dir: str, model: dict[str, int]) -> None:
    vllm_engine.make_model(
        model_dir,
        vocab=32000,
        hidden=model["hidden"],
        intermediate=model["intermediate"],
        layers=model["layers"],
        heads=model["heads"],
        kv_heads=model["kv_heads"],
        max_positions=16384,
    )


def run_config(spec: dict[str, Any], name: str, connector: dict[str, Any] | None) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    t0 = time.perf_counter()
    llm = vllm_engine.start_llm(
        spec["model_dir"],
        connector,
        max_model_len=16384,
        kv_cache_bytes=spec.get("kv_cache_bytes", 1 << 30),
        max_num_seqs=4,
        enable_prefix_caching=False,
    )
    start_s = time.perf_counter() - t0
    eng = llm.llm_engine
    rng = random.Random(0)
    system = [rng.randrange(1, 32000) for _ in range(spec["system_tokens"])]
    convs = [list(system) for _ in range(spec["conversations"])]
    params = SamplingParams(max_tokens=spec["output_tokens"], temperature=0.0, output_kind=RequestOutputKind.DELTA)
    ttft: list[float] = []
    decode: list[float] = []
    counted = []
    for turn in range(spec["turns"]):
        for c, conv in enumerate(convs):
            conv.extend(rng.randrange(1, 32000) for _ in range(spec["user_tokens"]))
            rid = f"{name}-{turn}-{c}"
            t_arrive = time.perf_counter()
            eng.add_request(rid, {"prompt_token_ids": list(conv)}, params)
            first = end = 0.0
            out_tokens: list[int] = []
            while eng.has_unfinished_requests():
                for o in eng.step():
                    if o.outputs and o.outputs[0].token_ids:
                        if not first:
                            first = time.perf_counter()
                        out_tokens.extend(o.outputs[0].token_ids)
                    if o.finished:
                        end = time.perf_counter()
            conv.extend(out_tokens)
            if turn > 0:
                ttft.append(first - t_arrive)
                if len(out_tokens) > 1 and end > first:
                    decode.append((len(out_tokens) - 1) / (end - first))
                counted.append(len(conv))
    llm.llm_engine.engine_core.shutdown()
    q = statistics.quantiles(ttft, n=10) if len(ttft) >= 2 else [ttft[0]] * 9
    return {
        "config": name,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p90_s": q[8],
        "output_tok_s": statistics.median(decode) if decode else 0.0,
        "requests": len(ttft),
        "mean_prompt_tokens": statistics.mean(counted) if counted else 0,
        "engine_start_s": start_s,
    }


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    make_model(spec["model_dir"], spec["model"])
    results = []
    for name, connector in spec["configs"]:
        results.append(run_config(spec, name, connector))
        print("CONFIG", json.dumps(results[-1]), flush=True)
    json.dump({"spec": spec, "results": results}, open(sys.argv[2], "w"), indent=1)


if __name__ == "__main__":
    main()
