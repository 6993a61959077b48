#!/usr/bin/env python3
"""Benchmark of the incident store, recordings, status builder and control socket.

    .venv/bin/python scripts/bench_incidents.py [--dir DIR]

Prints one line per measurement. DIR (default: a new directory under /tmp)
should be on the disk the state dir will live on: commit latency is an fsync.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog.detect.finding import Finding  # noqa: E402
from watchdog.incidents import IncidentManager, Incidents  # noqa: E402
from watchdog.status import LatestRecords, build_status  # noqa: E402
from watchdog.trace.records import (  # noqa: E402
    Canary,
    GpuDevice,
    GpuProc,
    GpuSample,
    Header,
    LoadedModel,
    ServerPoll,
    TraceTarget,
)

TARGETS = 8
HEADER = Header(
    host="bench",
    gpus=[GpuDevice(i, "GPU", 81559) for i in range(TARGETS)],
    targets=[TraceTarget(f"t{i}", "vllm", [i]) for i in range(TARGETS)],
)


def batch(t: float) -> list:
    out = []
    for i in range(TARGETS):
        out.append(GpuSample(t=t, index=i, util=50.0, mem_used_mib=40000, temp_c=60.0, power_w=300.0,
                             procs=[GpuProc(1000 + i, 39000, f"t{i}")]))
        out.append(ServerPoll(t=t, target=f"t{i}", state="ready", models=[LoadedModel("m", 39000)], running=1,
                              waiting=0, gen_tokens_total=t * 100))
    return out


def ms(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[int(len(values) * 0.95) - 1]
    return f"median {statistics.median(values) * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms"


def bench_commits(root: Path, n: int = 200) -> None:
    for sync in ("FULL", "NORMAL"):
        manager = IncidentManager(root / f"commits-{sync}", wall_start=time.time(), header=HEADER)
        manager.store._conn.execute(f"PRAGMA synchronous = {sync}")
        manager.start(0.0)
        manager.handle([Finding(0.0, "t0", "hang", "raised", "bench")])
        times = []
        for i in range(n):
            start = time.perf_counter()
            manager.note("t0", f"note {i}", float(i), {"i": i})
            times.append(time.perf_counter() - start)
        manager.stop()
        print(f"commit of one timeline change, synchronous={sync}: {ms(times)}")


def bench_recording(root: Path, seconds: int = 3600) -> None:
    manager = IncidentManager(root / "recording", wall_start=time.time(), header=HEADER)
    manager.start(0.0)
    manager.handle([Finding(0.0, "t0", "hang", "raised", "bench")], batch(0.0))
    batches = [batch(float(t)) for t in range(1, seconds)]
    start = time.perf_counter()
    for records in batches:
        manager.record(records)
    elapsed = time.perf_counter() - start
    count = sum(len(b) for b in batches)
    size = (manager.state_dir / manager.open_incidents()[0].recording.file).stat().st_size
    manager.stop()
    print(
        f"recording: {count} records offered ({TARGETS} targets x 1 h at 1 s), {len(batches) / elapsed:.0f} batches/s, "
        f"{elapsed / len(batches) * 1e6:.0f} us per batch; file {size / 1e6:.2f} MB for 1 h of one target's scope"
    )


async def bench_facade(root: Path, n: int = 2000) -> None:
    class Clock:
        wall_start = time.time()

        def __call__(self) -> float:
            return 0.0

    incidents = Incidents(root / "facade", clock=Clock(), header=HEADER)
    await incidents.start()
    idle = []
    for t in range(n):
        start = time.perf_counter()
        await incidents.on_records(batch(float(t)))
        idle.append(time.perf_counter() - start)
    await incidents.on_findings([Finding(float(n), "t0", "hang", "raised", "bench")])
    busy = []
    for t in range(n, 2 * n):
        start = time.perf_counter()
        await incidents.on_records(batch(float(t)))
        busy.append(time.perf_counter() - start)
    await incidents.stop()
    print(f"Incidents.on_records(16 records), no incident open: {ms(idle)}")
    print(f"Incidents.on_records(16 records), one recording running (worker thread hop + write): {ms(busy)}")


def bench_status(n: int = 2000) -> None:
    latest = LatestRecords()
    latest.add_all(batch(100.0))
    for i in range(TARGETS):
        latest.add(Canary(t=99.0, target=f"t{i}", ok=True, ttft_s=0.2, tokens=4, tokens_per_s=50.0))
    findings = [Finding(90.0, "t3", "hang", "raised", "no tokens for 30 s")]
    times = []
    for _ in range(n):
        start = time.perf_counter()
        snapshot = build_status(header=HEADER, polls=latest.polls, canaries=latest.canaries, gpu_samples=latest.gpus,
                                xids=latest.xids, findings=findings, now=101.0, wall_start=time.time())
        snapshot.model_dump_json()
        times.append(time.perf_counter() - start)
    print(f"build_status + JSON for {TARGETS} targets and {TARGETS} GPUs: {ms(times)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory under /tmp)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="iw-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        bench_commits(root)
        bench_recording(root)
        asyncio.run(bench_facade(root))
        bench_status()
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
