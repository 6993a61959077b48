"""Start simulators as real subprocesses and drive them (used by the demo, tests and benchmarks).

    sim = Simulator("ollama", "--decode-tps", "100").start()
    sim.inject("hang")          # POST /_sim/fault
    sim.state()                 # GET /_sim/state
    sim.nvml()                  # an initialised SimNvml over its GPU directory
    sim.stop()

``start`` waits for the simulator's ready line with a deadline, never a sleep.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from watchdog.sim.nvml import SimNvml

T = TypeVar("T")

READY_TIMEOUT_S = 15.0


class SimulatorError(RuntimeError):
    pass


class Simulator:
    """One ``python -m watchdog.sim`` process and what it told us when it became ready.

    Also a context manager: ``with Simulator("vllm") as sim: ...`` starts and stops it.
    """

    def __init__(self, kind: str = "ollama", *args: str, gpu_dir: str | Path | None = None,
                 log_path: str | Path | None = None, workdir: str | Path | None = None,
                 env: dict[str, str] | None = None):
        self.kind = kind
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="iw-sim-"))
        self.gpu_dir = Path(gpu_dir) if gpu_dir else self.workdir / "gpu"
        self.log_path = Path(log_path) if log_path else self.workdir / f"{kind}.log"
        self.stderr_path = self.workdir / f"{kind}-{id(self)}.stderr"
        self.args = list(args)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}
        self.startup_s = 0.0

    # -- life cycle ---------------------------------------------------------------------------
    def start(self, timeout: float = READY_TIMEOUT_S) -> Simulator:
        cmd = [sys.executable, "-m", "watchdog.sim", "--kind", self.kind, "--port", "0",
               "--gpu-dir", str(self.gpu_dir), "--log-file", str(self.log_path), "--exit-with-parent",
               *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        started = time.monotonic()
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        line = self._read_line(started + timeout)
        self.startup_s = time.monotonic() - started
        try:
            self.ready = json.loads(line)
        except ValueError:
            self.stop()
            raise SimulatorError(f"simulator printed {line!r} instead of its ready line") from None
        if self.ready.get("event") != "ready":
            raise SimulatorError(f"unexpected first line {self.ready}")
        return self

    def _read_line(self, deadline: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf = b""
        fd = self.proc.stdout.fileno()
        try:
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    self.stop()
                    raise SimulatorError(f"no ready line from the {self.kind} simulator in time; "
                                         f"stderr: {self.stderr()[-2000:]}")
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self.proc.wait()
                    raise SimulatorError(f"simulator exited with {code} before it was ready; "
                                         f"stderr: {self.stderr()[-2000:]}")
                buf += chunk
        finally:
            sel.close()
        return buf.split(b"\n", 1)[0].decode()

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test froze it
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Simulator:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it told us ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return str(self.ready["url"])

    @property
    def pid(self) -> int:
        return int(self.ready["pid"])

    @property
    def gpu_state(self) -> Path:
        return Path(self.ready["gpu_state"])

    @property
    def model(self) -> str:
        return str(self.ready["models"][0])

    # -- control ------------------------------------------------------------------------------
    def inject(self, fault: str, **params: Any) -> dict[str, Any]:
        """POST /_sim/fault; raises on a refused fault."""
        resp = httpx.post(f"{self.url}/_sim/fault", json={"fault": fault, **params}, timeout=5)
        if resp.status_code != 200:
            raise SimulatorError(f"fault {fault} refused: {resp.status_code} {resp.text}")
        return resp.json()

    def recover(self) -> dict[str, Any]:
        return self.inject("recover")

    def state(self) -> dict[str, Any]:
        resp = httpx.get(f"{self.url}/_sim/state", timeout=5)
        resp.raise_for_status()
        return resp.json()

    def nvml(self) -> SimNvml:
        """An initialised SimNvml over this simulator's GPU directory."""
        nvml = SimNvml(self.gpu_dir)
        nvml.nvmlInit()
        return nvml

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, needle: str, timeout: float = 5.0) -> str:
        """The first log line containing ``needle``, waiting for it up to ``timeout``."""
        def find() -> str | None:
            return next((line for line in self.log_text().splitlines() if needle in line), None)

        return _wait(find, timeout, f"{needle!r} in {self.log_path}")

    def wait_loaded(self, timeout: float = 10.0) -> None:
        """Until every model the server loads at start-up is in (llama.cpp loads after listening)."""
        _wait(lambda: all(m["state"] == "ready" for m in self.state()["models"])
              and self.state()["models"], timeout, f"the {self.kind} simulator's model loaded")

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def _wait(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
            if value:
                return value
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise SimulatorError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
