"""Running the real daemon (``watchdogctl run``) as a subprocess in tests, with a real NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent


class NotifySocket:
    """An AF_UNIX datagram socket bound by the test, as systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def pump(self) -> None:
        """Take every datagram that has arrived."""
        while True:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError, socket.timeout):
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def wait(self, prefix: str, timeout: float, after: float = 0.0) -> str:
        def seen() -> str | None:
            self.pump()
            for when, line in self.messages:
                if when >= after and line.startswith(prefix):
                    return line
            return None

        return wait_for(seen, timeout, f"{prefix} on NOTIFY_SOCKET")

    def times(self, line: str) -> list[float]:
        self.pump()
        return [when for when, text in self.messages if text == line]

    def close(self) -> None:
        self.sock.close()


class DaemonProcess:
    """``python -m watchdog --config FILE run`` with its output in a file."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = workdir / f"daemon-{int(time.monotonic() * 1000)}.log"
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watchdog", "--config", str(config), "--log-format", "json", "run"],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                lines.append({"msg": line})
        return lines

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        return wait_for(lambda: next((line for line in self.log() if predicate(line)), None), timeout, what)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()


def ctl(config: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``watchdogctl --config FILE ARGS`` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "watchdog", "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=dict(os.environ, COLUMNS="200"),
    )


def status_json(config: Path) -> dict[str, Any] | None:
    """The daemon's status, found through the socket beside the config (even while the file is broken)."""
    result = ctl(config, "status", "--json", "--socket", str(config.parent / "control.sock"))
    if result.returncode == 3 or not result.stdout.strip():
        return None
    return json.loads(result.stdout)


def write_config(path: Path, workdir: Path, targets: list[dict[str, Any]], *, gpu_dir: Path | None,
                 extra: str = "") -> Path:
    """A config for tests: fast cadence, observe mode, state and socket in ``workdir``."""
    lines = [
        "[watchdog]",
        f'state_dir = "{workdir / "state"}"',
        f'control_socket = "{workdir / "control.sock"}"',
        f'gpu_backend = "{"sim" if gpu_dir else "none"}"',
        f'sim_gpu_dir = "{gpu_dir or ""}"',
        'gpu_interval = "1s"',
        'poll_interval = "1s"',
        'process_interval = "1s"',
        'recorder_window = "5m"',
        'incident_context = "1m"',
        "[policy]",
        'mode = "observe"',
        "[debug]",
        "allow_wedge = true",
    ]
    for target in targets:
        lines.append("[[targets]]")
        tables = {key: target.pop(key) for key in list(target) if isinstance(target[key], dict)}
        for key, value in target.items():
            lines.append(f"{key} = {json.dumps(value)}")
        for name, table in tables.items():  # canary, detect, restart, ...
            if table:
                lines.append(f"[targets.{name}]")
                lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path
