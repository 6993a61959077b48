#!/usr/bin/env python3
"""How long ``watchdogctl`` takes: ``--version``, and ``status`` against a running daemon.

Starts one simulated server and the daemon watching it, then runs each command N
times as a user would (a fresh process each time, the installed console script)
and reports the median and 90th percentile of the wall time (the commands
interleaved: each round runs every command once). For reference: the
bare interpreter start (``python -c pass``) and the daemon's own answer on its
socket (one HTTP request over the unix socket from this process, like
``curl --unix-socket``).

    python scripts/bench_cli.py [--runs 20] [--json out.json] [--ctl [LABEL=]PATH/bin/watchdogctl ...]

``--ctl`` times another installation's console script (the daemon and the
simulator still run from this one); given several times, all are timed in the
same rounds, so they compare under the same load. What users get from ``scripts/install.sh``
is a regular (non-editable) install; a development venv's editable install
(``pip install -e``) adds an import hook to every start (about 15 ms here).
Make a regular one to measure with:

    python3 -m venv /tmp/iw-release && /tmp/iw-release/bin/pip install .
    python scripts/bench_cli.py --ctl /tmp/iw-release/bin/watchdogctl --ctl editable=.venv/bin/watchdogctl

Goal (issue 15): ``status`` <= 150 ms; ``--version`` fast.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import fleet, machine, table  # noqa: E402

GOAL_STATUS_MS = 150.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def timed(command: list[str], runs: int, env: dict[str, str]) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False)
        times.append(1000 * (time.perf_counter() - t0))
        if done.returncode not in (0, 1, 2):  # status exits 1/2 for degraded/critical
            raise SystemExit(f"{command}: exit {done.returncode}: {done.stderr.decode()[-500:]}")
    return times


def socket_times(path: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        conn = _UnixConnection(path)
        conn.request("GET", "/status")
        conn.getresponse().read()
        conn.close()
        times.append(1000 * (time.perf_counter() - t0))
    return times


def install_kind(script: Path) -> str:
    """"editable" when the script's environment imports the package through an editable
    install's hook (a ``__editable__*inference_watchdog*.pth``), else "regular"."""
    venv = script.resolve().parent.parent
    hooks = list(venv.glob("lib/python3*/site-packages/__editable__*inference_watchdog*.pth"))
    return "editable" if hooks else "regular"


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": round(statistics.median(ordered), 1),
            "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1),
            "min_ms": round(ordered[0], 1), "runs": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", default=None, metavar="FILE")
    parser.add_argument("--ctl", action="append", default=[], metavar="[LABEL=]PATH",
                        help="a watchdogctl to time (repeatable: all are timed in the same rounds; "
                             "default: the one beside this interpreter)")
    args = parser.parse_args()
    started = datetime.now(UTC)
    host = machine()  # load average at the start; loadavg_end at the end
    ctls: dict[str, list[str]] = {}
    installs: dict[str, dict[str, str]] = {}
    for given in args.ctl or [shutil.which("watchdogctl", path=str(Path(sys.executable).parent)) or ""]:
        label, _, script = given.rpartition("=") if "=" in given else ("", "", given)
        ctl = [script] if script else [sys.executable, "-m", "watchdog"]
        install = install_kind(Path(script)) if script else "source tree (python -m watchdog)"
        label = label or (install if len(args.ctl) > 1 else "")
        ctls[label] = ctl
        installs[label or "watchdogctl"] = {"path": ctl[0], "install": install}
    env = dict(os.environ)
    env.pop("INFERENCE_WATCHDOG_SOCKET", None)
    results: dict[str, dict[str, float]] = {}
    with fleet(1, 1) as f:
        sock = str(f.work / "control.sock")
        commands = {"python -c pass (interpreter start)": [sys.executable, "-c", "pass"]}
        for label, ctl in ctls.items():
            suffix = f" [{label}]" if label else ""
            commands.update({
                f"watchdogctl --version{suffix}": [*ctl, "--version"],
                f"watchdogctl --config FILE status{suffix}": [*ctl, "--config", str(f.config), "status"],
                f"watchdogctl --socket SOCK status{suffix}": [*ctl, "status", "--socket", sock],
                f"watchdogctl --config FILE status --json{suffix}": [*ctl, "--config", str(f.config), "status",
                                                                      "--json"],
            })
        for command in commands.values():
            timed(command, 2, env)  # warm the page cache
        # Interleaved (each round runs every command once), so that a change in the machine's
        # load during the run weighs on every command alike.
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                times[name] += timed(command, 1, env)
        results.update({name: summary(t) for name, t in times.items()})
        results["daemon's answer on its socket (GET /status)"] = summary(socket_times(sock, args.runs))
    first = next(iter(ctls))
    status = results["watchdogctl --config FILE status" + (f" [{first}]" if first else "")]["median_ms"]
    rows = []
    for name, r in results.items():
        goal = met = ""
        if "status" in name and name.startswith("watchdogctl"):
            goal = f"<= {GOAL_STATUS_MS:.0f} ms"
            met = "yes" if r["median_ms"] <= GOAL_STATUS_MS else f"no (+{r['median_ms'] - GOAL_STATUS_MS:.0f} ms)"
        rows.append((name, f"{r['median_ms']:.0f} ms (p90 {r['p90_ms']:.0f})", goal, met))
    print(f"watchdogctl wall time, median of {args.runs} fresh processes each:")
    for label, info in installs.items():
        print(f"  {label}: {info['path']} ({info['install']} install)")
    print(table(rows))
    out = {"benchmark": "cli latency", "date": started.isoformat(timespec="seconds"), "machine": host,
           "loadavg_end": os.getloadavg(), "watchdogctl": installs,
           "results": results, "goal_status_ms": GOAL_STATUS_MS,
           "status_median_ms": status}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
