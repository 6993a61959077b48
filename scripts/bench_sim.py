#!/usr/bin/env python3
"""Benchmark the simulator: start-up time, and N concurrent streaming requests.

    .venv/bin/python scripts/bench_sim.py [--kind vllm] [--runs 5] [--concurrency 50]

Start-up is measured from spawning ``python -m watchdog.sim`` to its ready
line. The streaming run sends N chat completions at once (openai's async
client), each streaming ``--tokens`` tokens at ``--decode-tps`` per request,
and reports time to first token, total latency and the aggregate tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time

import openai

from watchdog.sim.launch import Simulator


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(int(q * len(values)), len(values) - 1)]


async def stream_one(client: openai.AsyncOpenAI, model: str, tokens: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = 0.0
    count = 0
    stream = await client.chat.completions.create(model=model, max_tokens=tokens, stream=True,
                                                  messages=[{"role": "user", "content": "benchmark"}])
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            count += 1
            if not first:
                first = time.perf_counter() - started
    return first, time.perf_counter() - started, count


async def concurrent(url: str, model: str, n: int, tokens: int) -> dict[str, float]:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(stream_one(client, model, tokens) for _ in range(n)))
        wall = time.perf_counter() - started
    ttft = [r[0] for r in results]
    total = [r[1] for r in results]
    count = sum(r[2] for r in results)
    assert count == n * tokens, f"expected {n * tokens} tokens, got {count}"
    return {"requests": n, "tokens": count, "wall_s": wall, "tokens_per_s": count / wall,
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p99_s": pct(ttft, 0.99),
            "latency_p50_s": pct(total, 0.5), "latency_p99_s": pct(total, 0.99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="all", choices=["all", "ollama", "vllm", "llamacpp"])
    ap.add_argument("--runs", type=int, default=5, help="start-ups measured per kind")
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--decode-tps", type=float, default=50.0)
    args = ap.parse_args()
    kinds = ["ollama", "vllm", "llamacpp"] if args.kind == "all" else [args.kind]
    report: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="iw-bench-sim-") as tmp:
        for kind in kinds:
            startups = []
            for i in range(args.runs):
                with Simulator(kind, gpu_dir=f"{tmp}/gpu-{kind}-{i}", workdir=tmp) as sim:
                    startups.append(sim.startup_s)
            with Simulator(kind, "--decode-tps", str(args.decode_tps), "--parallel", str(args.concurrency),
                           "--response-tokens", str(args.tokens),
                           "--load-time", "0.1", gpu_dir=f"{tmp}/gpu-{kind}", workdir=tmp) as sim:
                if kind == "llamacpp":
                    sim.wait_loaded()
                asyncio.run(concurrent(sim.url, sim.model, 2, 2))  # load on demand (ollama), warm up
                result = asyncio.run(concurrent(sim.url, sim.model, args.concurrency, args.tokens))
            result["startup_median_s"] = statistics.median(startups)
            result["startup_max_s"] = max(startups)
            report[kind] = result
    print(json.dumps(report, indent=2))
    print(f"\n{'kind':9} {'start-up median/max':>20} {'streams':>8} {'tokens/s':>9} "
          f"{'TTFT p50/p99':>15} {'latency p50/p99':>17}")
    for kind, r in report.items():
        print(f"{kind:9} {r['startup_median_s']:>9.3f}s/{r['startup_max_s']:.3f}s {r['requests']:>8} "
              f"{r['tokens_per_s']:>9.0f} {r['ttft_p50_s']:>7.3f}/{r['ttft_p99_s']:.3f}s "
              f"{r['latency_p50_s']:>8.2f}/{r['latency_p99_s']:.2f}s")


if __name__ == "__main__":
    main()
