#!/usr/bin/env python3
"""The daemon's own footprint: CPU and memory while it watches simulated servers and GPUs.

Starts N simulated servers (alternating Ollama and vLLM) over G simulated GPUs
(round robin), the real daemon at the default cadence (GPU every 2 s, polls
every 5 s, a canary every 15 s), lets it settle, then measures over a window:
CPU as a share of one core (utime+stime from /proc/PID/stat) and peak resident
memory (VmHWM from /proc/PID/status: the kernel's high-water mark since start,
so start-up and the settle time count too). Prints a table, writes JSON.

    python scripts/bench_daemon.py --targets 4 --gpus 8 --seconds 600 [--json out.json]

Goal (issue 15): <= 1% of one core and <= 60 MB peak RSS at 4 targets, 8 GPUs, 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import cpu_seconds, fleet, machine, memory_kib, table  # noqa: E402

GOAL_CPU_PCT = 1.0
GOAL_RSS_MB = 60.0
GOAL_CANARY_PCT = 0.5
GIN = re.compile(r'^\[GIN\] .*?\| *(\d+) \| *([0-9.]+)(µs|ms|s) \|.*POST +"(/api/generate|/api/chat)"')
UNIT = {"µs": 1e-6, "ms": 1e-3, "s": 1.0}


def canary_seconds(log: Path, offset: int) -> tuple[float, int]:
    """Seconds the server spent answering generation requests written to its log after ``offset``
    (Ollama's GIN access lines carry the duration), and how many there were."""
    total, count = 0.0, 0
    with open(log, "rb") as fh:
        fh.seek(offset)
        for raw in fh:
            m = GIN.match(raw.decode("utf-8", "replace"))
            if m:
                total += float(m.group(2)) * UNIT[m.group(3)]
                count += 1
    return total, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=4)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds before measuring (first canaries)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    started = datetime.now(UTC)
    host = machine()  # load average at the start; loadavg_end at the end
    with fleet(args.targets, args.gpus) as f:
        pid = f.daemon.pid
        time.sleep(args.settle)
        ollamas = [sim for sim in f.sims if sim.kind == "ollama"]
        offsets = {sim.log_path: sim.log_path.stat().st_size for sim in ollamas}
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        rss_samples = []
        while time.monotonic() - t0 < args.seconds:
            rss_samples.append(memory_kib(pid)["VmRSS"])
            time.sleep(1.0)
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        mem = memory_kib(pid)
        status = f.client.status()
        canaries = [canary_seconds(path, offset) for path, offset in offsets.items()]
    elapsed = t1 - t0
    busy = sum(c[0] for c in canaries)
    sent = sum(c[1] for c in canaries)
    canary_pct = 100 * busy / (elapsed * len(canaries)) if canaries else 0.0
    cpu_pct = 100 * (cpu1 - cpu0) / elapsed
    peak_mb = mem["VmHWM"] * 1024 / 1e6
    result = {
        "benchmark": "daemon footprint", "date": started.isoformat(timespec="seconds"), "machine": host,
        "loadavg_end": os.getloadavg(), "targets": args.targets, "gpus": args.gpus, "seconds": round(elapsed, 1),
        "cpu_seconds": round(cpu1 - cpu0, 2), "cpu_pct_one_core": round(cpu_pct, 2),
        "rss_peak_mb": round(peak_mb, 1), "rss_window_max_mb": round(max(rss_samples) * 1024 / 1e6, 1),
        "rss_end_mb": round(mem["VmRSS"] * 1024 / 1e6, 1), "threads": mem["Threads"],
        "targets_in_status": len(status.targets), "gpus_in_status": len(status.gpus),
        "canary": {"servers": len(canaries), "requests": sent, "busy_seconds": round(busy, 3),
                   "share_pct": round(canary_pct, 3),
                   "method": "Ollama servers' access-log duration of every generation request in the window "
                             "(all are canaries), summed, over window x servers"},
        "goals": {"cpu_pct_one_core": GOAL_CPU_PCT, "rss_peak_mb": GOAL_RSS_MB, "canary_share_pct": GOAL_CANARY_PCT},
    }
    print(f"daemon watching {args.targets} simulated server(s) and {args.gpus} GPU(s), default cadence, "
          f"{elapsed:.0f} s measured after {args.settle:.0f} s settling:")
    print(table([
        ("CPU, % of one core", f"{cpu_pct:.2f}% ({cpu1 - cpu0:.1f} s CPU)", f"<= {GOAL_CPU_PCT}%",
         "yes" if cpu_pct <= GOAL_CPU_PCT else f"no (+{cpu_pct - GOAL_CPU_PCT:.2f} points)"),
        ("peak RSS (VmHWM)", f"{peak_mb:.1f} MB", f"<= {GOAL_RSS_MB:.0f} MB",
         "yes" if peak_mb <= GOAL_RSS_MB else f"no (+{peak_mb - GOAL_RSS_MB:.1f} MB)"),
        ("canary share of server time", f"{canary_pct:.2f}% ({sent} canaries, {busy:.1f} s)", f"<= {GOAL_CANARY_PCT}%",
         "yes" if canary_pct <= GOAL_CANARY_PCT else f"no (+{canary_pct - GOAL_CANARY_PCT:.2f} points)"),
        ("RSS at the end", f"{result['rss_end_mb']} MB", "", ""),
        ("threads", str(mem["Threads"]), "", ""),
        ("targets / GPUs in status", f"{len(status.targets)} / {len(status.gpus)}", "", ""),
    ]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
