#!/usr/bin/env python3
"""The daemon's own footprint: CPU and memory while it watches simulated servers.

Starts N simulated servers (alternating Ollama and vLLM, each with its own
simulated GPU), the real daemon with the default cadence (GPU every 2 s, polls
every 5 s, a canary every 15 s), lets it settle, then measures its CPU time
and resident memory over a window.

    python scripts/bench_daemon.py [--targets 2] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from watchdog.control.client import ControlClient, DaemonUnreachable  # noqa: E402
from watchdog.sim.launch import Simulator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="iw-bench-daemon-"))
    sims = []
    lines = ["[watchdog]", f'state_dir = "{work / "state"}"', f'control_socket = "{work / "control.sock"}"',
             'gpu_backend = "sim"', f'sim_gpu_dir = "{work / "gpu"}"', "[policy]", 'mode = "observe"']
    try:
        for i in range(args.targets):
            kind = "ollama" if i % 2 == 0 else "vllm"
            sim = Simulator(kind, "--gpu-index", str(i), gpu_dir=work / "gpu", log_path=work / f"{kind}{i}.log",
                            workdir=work).start()
            sims.append(sim)
            lines += ["[[targets]]", f'name = "{kind}{i}"', f'kind = "{kind}"', f'url = "{sim.url}"',
                      f"gpus = [{i}]", f'log_file = "{sim.log_path}"']
            if kind == "ollama":  # a loaded model, so canaries go out
                import httpx

                httpx.post(f"{sim.url}/api/generate", json={"model": sim.model, "prompt": "hi", "stream": False,
                                                             "keep_alive": -1}, timeout=60)
        config = work / "watchdog.toml"
        config.write_text("\n".join(lines) + "\n")
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        with open(work / "daemon.log", "wb") as log:
            daemon = subprocess.Popen([sys.executable, "-m", "watchdog", "--config", str(config), "run"],
                                      stdout=log, stderr=subprocess.STDOUT, env=env)
            client = ControlClient(work / "control.sock")
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.status().daemon.ready:
                        break
                except DaemonUnreachable:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the daemon did not become ready")
                time.sleep(0.2)
            proc = psutil.Process(daemon.pid)
            time.sleep(10)  # settle: first canaries, caches warm
            cpu0 = proc.cpu_times()
            rss = []
            start = time.monotonic()
            while time.monotonic() - start < args.seconds:
                rss.append(proc.memory_info().rss)
                time.sleep(1.0)
            cpu1 = proc.cpu_times()
            elapsed = time.monotonic() - start
            used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
            records = client.status()
            threads = proc.num_threads()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        print(f"daemon watching {args.targets} simulated server(s) with their GPUs, default cadence, "
              f"{elapsed:.0f} s measured:")
        print(f"  CPU: {100 * used / elapsed:.1f}% of one core ({used:.2f} s of CPU time)")
        print(f"  resident memory: {max(rss) / 2**20:.0f} MiB peak, {rss[-1] / 2**20:.0f} MiB at the end")
        print(f"  threads: {threads}; targets in status: {len(records.targets)}")
    finally:
        for sim in sims:
            sim.stop()


if __name__ == "__main__":
    main()
