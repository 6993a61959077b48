#!/usr/bin/env python3
"""How fast does replay catch a hang, at the daemon's default cadence?

Generates N synthetic traces per case with the hang starting at a random
moment (tests/scenarios/world.py), replays each with the default thresholds,
and reports the median and 90th percentile of (raised - onset). Also times a
24-hour replay at 1 s sampling.

    python scripts/bench_detection.py [--runs 200]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.scenarios.catalog import make_server  # noqa: E402
from tests.scenarios.world import Cadence, World  # noqa: E402
from watchdog.commands.replay import replay_file, replay_trace  # noqa: E402
from watchdog.config.model import CanarySettings, WatchdogSettings  # noqa: E402
from watchdog.trace.io import Trace, write_trace  # noqa: E402


def default_cadence() -> Cadence:
    """What the daemon does out of the box (config defaults)."""
    canary = CanarySettings()
    watchdog = WatchdogSettings()
    return Cadence(
        gpu_dt=watchdog.gpu_interval,
        poll_dt=watchdog.poll_interval,
        canary_dt=canary.interval,
        canary_timeout=canary.first_token_timeout,
        stall_s=canary.stall_timeout,
        confirm_dt=canary.confirm_interval,
        canary_tokens=canary.max_tokens,
    )


def hang_latency(kind: str, traffic: float, seed: int, collective: bool = False) -> float | None:
    rng = random.Random(seed)
    world = World(make_server(rng, kind), default_cadence(), seed=seed, traffic=traffic)
    onset = rng.uniform(200, 400)

    def go(w: World) -> None:
        w.s.hung = True
        if collective:  # stuck in an engine step, with a request in flight, the GPU pinned at 100%
            from tests.scenarios.world import Request

            w.s.requests.append(Request(200.0, 2000.0, started=w.t))
            w.s.hang_util = 100.0
            w.s.hang_cpu = 100.0

    world.at(onset, go)
    records = world.run(onset + 400)
    result = replay_trace(Trace(world.header, records))
    raised = [f.t for f in result.findings if f.finding == "hang" and f.state == "raised" and f.t >= onset - 5]
    return raised[0] - onset if raised else None


def summarize(name: str, latencies: list[float | None]) -> str:
    found = sorted(x for x in latencies if x is not None)
    missed = len(latencies) - len(found)
    if not found:
        return f"| {name} | - | - | {missed} |"
    p90 = found[min(len(found) - 1, int(0.9 * len(found)))]
    return f"| {name} | {statistics.median(found):.1f} s | {p90:.1f} s | {missed} |"


def day_long_replay_seconds() -> tuple[float, int]:
    """Time the replay of a 24-hour trace at 1 s GPU sampling, 2 s polls."""
    cadence = Cadence(gpu_dt=1.0, poll_dt=2.0, canary_dt=30.0, canary_timeout=10.0)
    rng = random.Random(7)
    world = World(make_server(rng, "vllm"), cadence, seed=7, traffic=0.05)
    world.dt = 0.5
    records = world.run(24 * 3600)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "day.trace.jsonl"
        write_trace(path, world.header, records)
        start = time.perf_counter()
        result = replay_file(path)
        return time.perf_counter() - start, result.records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--skip-day", action="store_true")
    args = parser.parse_args()
    cadence = default_cadence()
    print(f"default cadence: GPU every {cadence.gpu_dt:g} s, polls every {cadence.poll_dt:g} s, canary every "
          f"{cadence.canary_dt:g} s (first token within {cadence.canary_timeout:g} s, re-check after "
          f"{cadence.confirm_dt:g} s); {args.runs} runs per case\n")
    print("| case | median | p90 | missed |")
    print("| --- | --- | --- | --- |")
    cases = [
        ("Ollama, idle between requests (canaries only)", "ollama", 0.0),
        ("Ollama, with traffic (canaries only)", "ollama", 0.1),
        ("vLLM, with traffic (token counter)", "vllm", 0.3),
        ("llama.cpp, with traffic (token counter)", "llamacpp", 0.3),
        ("vLLM, idle (canaries, then the counter)", "vllm", 0.0),
    ]
    for name, kind, traffic in cases:
        print(summarize(name, [hang_latency(kind, traffic, seed) for seed in range(args.runs)]), flush=True)
    for name, kind in (("vLLM, stuck collective at 100% (engine steps)", "vllm"),
                       ("llama.cpp, stuck collective at 100% (engine steps)", "llamacpp")):
        latencies = [hang_latency(kind, 0.1, seed, collective=True) for seed in range(args.runs)]
        print(summarize(name, latencies), flush=True)
    if not args.skip_day:
        seconds, count = day_long_replay_seconds()
        print(f"\n24-hour trace at 1 s sampling: {count} records replayed in {seconds:.2f} s")


if __name__ == "__main__":
    main()
