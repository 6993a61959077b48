"""Shared by the footprint and scale benchmarks: a fleet of simulated servers and the real daemon.

Targets alternate Ollama and vLLM flavours; the GPUs are spread over them round
robin (4 targets and 8 GPUs: two GPUs each; 32 targets and 8 GPUs: four targets
share each GPU), so every simulated GPU has a writer and the daemon watches all.
The daemon's CPU time and peak resident memory are read from /proc
(``utime+stime`` in /proc/PID/stat, ``VmHWM`` in /proc/PID/status).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from watchdog.control.client import ControlClient, DaemonUnreachable  # noqa: E402
from watchdog.sim.launch import Simulator  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far (its threads included)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start) in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release(), "loadavg_start": os.getloadavg()}


@dataclass
class Fleet:
    work: Path
    daemon: subprocess.Popen[bytes]
    client: ControlClient
    sims: list[Simulator] = field(default_factory=list)
    config: Path = Path()

    @property
    def log(self) -> Path:
        return self.work / "daemon.log"


def gpu_sets(targets: int, gpus: int) -> list[list[int]]:
    """The GPUs of each target: target i gets GPU i mod G (so targets share GPUs when there
    are more targets than GPUs); GPUs left over go to the Ollama targets (even i) in turn,
    because the vLLM simulator starts on one GPU only."""
    sets: list[list[int]] = [[i % gpus] for i in range(targets)]
    ollamas = list(range(0, targets, 2))
    for n, g in enumerate(range(targets, gpus)):
        sets[ollamas[n % len(ollamas)]].append(g)
    return sets


def start_daemon(config: Path, work: Path, ready_timeout: float = 120.0) -> tuple[subprocess.Popen, ControlClient]:
    """``watchdogctl run`` on ``config`` as a subprocess (its log in ``work/daemon.log``), once it says ready."""
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    with open(work / "daemon.log", "wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "watchdog", "--config", str(config), "run"],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
    client = ControlClient(work / "control.sock")
    deadline = time.monotonic() + ready_timeout
    while True:
        try:
            if client.status().daemon.ready:
                return daemon, client
        except DaemonUnreachable:
            pass
        if daemon.poll() is not None or time.monotonic() > deadline:
            stop_daemon(daemon)
            raise SystemExit(f"the daemon did not become ready; see {work / 'daemon.log'}")
        time.sleep(0.2)


def stop_daemon(daemon: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()


@contextmanager
def fleet(targets: int, gpus: int, *, extra_config: list[str] = (), sim_args: dict[int, list[str]] | None = None,
          ready_timeout: float = 120.0) -> Iterator[Fleet]:
    """Start ``targets`` simulated servers over ``gpus`` simulated GPUs and the daemon watching them."""
    work = Path(tempfile.mkdtemp(prefix="iw-bench-"))
    sims: list[Simulator] = []
    lines = ["[watchdog]", f'state_dir = "{work / "state"}"', f'control_socket = "{work / "control.sock"}"',
             'gpu_backend = "sim"', f'sim_gpu_dir = "{work / "gpu"}"', 'log_format = "json"',
             *extra_config, "[policy]", 'mode = "observe"']
    daemon = None
    sharers = max(1, -(-targets // max(gpus, 1)))  # targets per GPU, rounded up
    try:
        import httpx

        for i, indices in enumerate(gpu_sets(targets, gpus)):
            kind = "ollama" if i % 2 == 0 else "vllm"
            args = [a for g in indices for a in ("--gpu-index", str(g))] + list((sim_args or {}).get(i, []))
            if kind == "vllm":  # vLLM takes a share of the GPU; leave room for the others on it
                args += ["--gpu-memory-utilization", f"{0.8 / sharers:.3f}"]
            sim = Simulator(kind, *args, gpu_dir=work / "gpu", log_path=work / f"{kind}{i}.log",
                            workdir=work).start()
            sims.append(sim)
            lines += ["[[targets]]", f'name = "{kind}{i}"', f'kind = "{kind}"', f'url = "{sim.url}"',
                      f"gpus = {indices}", f'log_file = "{sim.log_path}"']
            if kind == "ollama":  # a model held loaded, so canaries go out
                httpx.post(f"{sim.url}/api/generate", json={"model": sim.model, "prompt": "hi", "stream": False,
                                                             "keep_alive": -1}, timeout=60)
        config = work / "watchdog.toml"
        config.write_text("\n".join(lines) + "\n")
        daemon, client = start_daemon(config, work, ready_timeout)
        yield Fleet(work, daemon, client, sims, config)
    finally:
        if daemon is not None:
            stop_daemon(daemon)
        for sim in sims:
            sim.stop()


def log_records(path: Path) -> Iterator[dict[str, Any]]:
    """The daemon's JSON log lines (other lines skipped)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def table(rows: list[tuple[str, str, str, str]]) -> str:
    """A markdown table: measure, value, goal, verdict."""
    head = ("measure", "value", "goal", "met")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    fmt = "| " + " | ".join(f"{{:{w}}}" for w in widths) + " |"
    out = [fmt.format(*head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt.format(*r) for r in rows]
    return "\n".join(out)
