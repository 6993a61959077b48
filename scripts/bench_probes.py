#!/usr/bin/env python3
"""What the probes cost: flight recorder memory and time per record, a GPU round, a poll, a canary.

    .venv/bin/python scripts/bench_probes.py [--json]

The recorder is filled with a synthetic host (8 GPUs sampled every second, 4
targets polled every 5 s, canaries every 30 s) for its default 15-minute
window; the GPU round, polls and canaries run against simulator processes
(SimNvml stands in for the driver, so the GPU figure is our own overhead, not
NVML's: on a real H100 NVML calls took 4-25 µs each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog.config.model import TargetSettings
from watchdog.daemon.recorder import FlightRecorder
from watchdog.probes.adapters import make_adapter
from watchdog.probes.attribution import Attributor
from watchdog.probes.canary import CanaryProbe
from watchdog.probes.gpu import GpuProbe
from watchdog.sim.launch import Simulator
from watchdog.sim.nvml import SimNvml
from watchdog.trace.records import (
    Canary,
    GpuProc,
    GpuSample,
    LoadedModel,
    ProcessSample,
    ServerPoll,
)


def bench_recorder(window_s: float = 900.0) -> dict[str, float]:
    records = list(_synthetic_host(window_s))
    recorder = FlightRecorder(window_s=window_s)
    began = time.perf_counter()
    for record in records:
        recorder.add(record)
    elapsed = time.perf_counter() - began
    count = len(records)
    held = len(recorder)
    del records, recorder
    # Memory: what a full window costs, records included (they are built by the probes anyway).
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    recorder = FlightRecorder(window_s=window_s)
    for record in _synthetic_host(window_s):
        recorder.add(record)
    memory = tracemalloc.get_traced_memory()[0] - base
    began = time.perf_counter()
    snapshot = recorder.records()
    snapshot_s = time.perf_counter() - began
    tracemalloc.stop()
    return {
        "records_added": count,
        "records_held": held,
        "add_us_per_record": round(elapsed / count * 1e6, 2),
        "memory_mib": round(memory / 2**20, 1),
        "bytes_per_record_held": round(memory / held),
        "snapshot_ms": round(snapshot_s * 1e3, 1),
        "snapshot_len": len(snapshot),
    }


def _synthetic_host(window_s: float) -> Any:
    seconds = int(window_s * 1.5)  # past the window, so eviction runs too
    for t in range(seconds):
        for index in range(8):
            yield (
                GpuSample(
                    t=t + 0.01 * index,
                    index=index,
                    util=87.0,
                    mem_used_mib=70000,
                    procs=[GpuProc(pid=4000 + index, mem_mib=69000, target=f"t{index % 4}")],
                    temp_c=70.0,
                    power_w=400.0,
                )
            )
        if t % 5 == 0:
            for n in range(4):
                yield (
                    ServerPoll(
                        t=t + 0.5,
                        target=f"t{n}",
                        state="ready",
                        models=[LoadedModel("llama3.1:70b", 40000, 240.0)],
                        running=3,
                        waiting=0,
                        gen_tokens_total=float(t * 100),
                        kv_cache_usage=0.4,
                    )
                )
                yield (
                    ProcessSample(
                        t=t + 0.6,
                        target=f"t{n}",
                        status="sleeping",
                        pid=100 + n,
                        rss_mib=2048.0,
                        cpu_percent=12.0,
                    )
                )
        if t % 30 == 0:
            for n in range(4):
                yield (
                    Canary(
                        t=t + 0.7,
                        target=f"t{n}",
                        ok=True,
                        model="m",
                        started=t + 0.2,
                        ttft_s=0.1,
                        tokens=4,
                        tokens_per_s=40.0,
                    )
                )


async def bench_live(rounds: int = 200) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="iw-bench-") as tmp:
        gpu_dir = Path(tmp) / "gpu"
        sims = [
            Simulator(
                kind,
                *("--decode-tps", "500", "--load-time", "0.2"),
                *(["--gpu-memory-utilization", "0.3"] if kind == "vllm" else []),
                gpu_dir=gpu_dir,
                workdir=Path(tmp) / kind,
            )
            for kind in ("ollama", "vllm", "llamacpp")
        ]
        for sim in sims:
            (Path(tmp) / sim.kind).mkdir()
            sim.start()
        try:
            import httpx

            ollama = sims[0]
            httpx.post(
                f"{ollama.url}/api/generate", json={"model": ollama.model, "keep_alive": -1}, timeout=10
            )
            sims[2].wait_loaded()
            targets = [
                TargetSettings(name=s.kind, kind=s.kind, url=s.url, restart={"method": "none"}) for s in sims
            ]
            probe = GpuProbe(
                SimNvml(gpu_dir), time.monotonic, lambda r: None, attribute=Attributor(targets).owners
            )
            await probe.round()
            times = []
            for _ in range(rounds):
                began = time.perf_counter()
                await probe.round()
                times.append(time.perf_counter() - began)
            out["gpu_round"] = _stats(times)
            probe.close()
            for settings in targets:
                adapter = make_adapter(settings, time.monotonic)
                canary = CanaryProbe(adapter, settings.canary, time.monotonic, lambda r: None)
                polls, canaries = [], []
                for _ in range(50):
                    began = time.perf_counter()
                    poll = await adapter.poll()
                    polls.append(time.perf_counter() - began)
                    canary.note_poll(poll)
                for _ in range(10):
                    began = time.perf_counter()
                    result = await canary.round(force=True)
                    assert result is not None and result.ok, result
                    canaries.append(time.perf_counter() - began)
                await adapter.aclose()
                out[f"poll_{settings.kind}"] = _stats(polls)
                out[f"canary_{settings.kind}"] = _stats(canaries)
        finally:
            for sim in sims:
                sim.stop()
    return out


def _stats(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "median_ms": round(statistics.median(values) * 1e3, 2),
        "p95_ms": round(values[int(len(values) * 0.95) - 1] * 1e3, 2),
        "max_ms": round(values[-1] * 1e3, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {"recorder_15min_8gpus_4targets": bench_recorder(), **asyncio.run(bench_live())}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, values in results.items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


if __name__ == "__main__":
    main()
