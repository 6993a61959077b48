"""A small daemon for control-socket tests: the real ControlServer, real Incidents, a real loop.

It stands in only for the wiring the daemon will do (probes and detectors are
replaced by records and findings the test feeds in); everything it serves goes
through the real server, store and status builder, on its own thread and loop,
so synchronous clients and ``watchdogctl`` subprocesses can talk to it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from watchdog.control.server import ControlServer
from watchdog.detect.finding import Finding
from watchdog.incidents import Incident, Incidents
from watchdog.status import DaemonInfo, LatestRecords, ReloadStatus, StatusSnapshot, build_status
from watchdog.trace.records import (
    Canary,
    GpuDevice,
    GpuProc,
    GpuSample,
    Header,
    LoadedModel,
    Record,
    ServerPoll,
    TraceTarget,
)

#: Two servers sharing one simulated GPU, for status and control tests.
HEADER = Header(
    host="box",
    gpus=[GpuDevice(0, "Sim GPU", 24576)],
    targets=[TraceTarget("ollama", "ollama", [0]), TraceTarget("vllm", "vllm", [0])],
)


def observations(t: float, *, vllm_running: int = 1, vllm_waiting: int = 0,
                 vllm_tokens: float | None = None) -> list[Record]:
    """One round of what the probes would see of HEADER's two servers at ``t``."""
    return [
        ServerPoll(t=t, target="ollama", state="ready", models=[LoadedModel("llama3.1:8b", 6144, 300.0)]),
        ServerPoll(t=t, target="vllm", state="ready", running=vllm_running, waiting=vllm_waiting,
                   gen_tokens_total=vllm_tokens),
        Canary(t=t, target="ollama", ok=True, model="llama3.1:8b", ttft_s=0.3, tokens=4, tokens_per_s=40.0),
        GpuSample(t=t, index=0, util=35.0, mem_used_mib=16000, temp_c=55.0, power_w=120.0,
                  procs=[GpuProc(11, 6300, "ollama"), GpuProc(12, 9500, "vllm")]),
    ]

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.wall_start = time.time()
        self._zero = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self._zero


class MiniDaemon:
    def __init__(self, root: Path, header: Header, allow_wedge: bool = False, group: str = "") -> None:
        self.root = root
        self.socket_path = root / "control.sock"
        self.header = header
        self.clock = Clock()
        self.latest = LatestRecords()
        self.findings: dict[tuple[str, str], Finding] = {}
        self.wedge_allowed = allow_wedge
        self.group = group
        self.reload_result = ReloadStatus(at=datetime.now(timezone.utc), ok=True, message="reloaded")
        self.status_error: Exception | None = None
        self.ticks: list[float] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mini-daemon", daemon=True)
        self.service: Incidents | None = None
        self.server: ControlServer | None = None
        self.records: list[Record] = []

    # --- the ControlProvider protocol ---------------------------------------------------------

    async def status(self) -> StatusSnapshot:
        if self.status_error is not None:
            raise self.status_error
        return build_status(
            header=self.header,
            polls=self.latest.polls,
            canaries=self.latest.canaries,
            gpu_samples=self.latest.gpus,
            xids=self.latest.xids,
            findings=list(self.findings.values()),
            incidents=self.incidents_.open_incidents.values(),
            daemon=DaemonInfo(config_path=str(self.root / "watchdog.toml"), mode="observe", ready=True,
                              problems=self.incidents_.problems),
            now=self.clock(),
            wall_start=self.clock.wall_start,
        )

    async def incidents(self, since: float | None, limit: int, timeline: bool) -> list[Incident]:
        return await self.incidents_.list(since, limit, timeline)

    async def incident(self, incident_id: int) -> Incident | None:
        return await self.incidents_.get(incident_id)

    def recording_path(self, incident: Incident) -> Path | None:
        return self.incidents_.recording_path(incident)

    async def reload(self) -> ReloadStatus:
        return self.reload_result

    async def alert_test(self, sink: str | None, timeout: float) -> list[dict[str, Any]]:
        """Canned: one sink "ops" that delivers (the notifier's own tests send for real)."""
        if sink not in (None, "ops"):
            raise KeyError(f"no alert sink named {sink!r} (sinks: ops)")
        return [{"sink": "ops", "kind": "webhook", "delivered": True, "attempts": 1, "error": None,
                 "timeout": timeout}]

    def allow_wedge(self) -> bool:
        return self.wedge_allowed

    # --- driving it from the test -------------------------------------------------------------

    @property
    def incidents_(self) -> Incidents:
        assert self.service is not None
        return self.service

    def start(self) -> None:
        self._thread.start()
        self.call(self._start)

    async def _start(self) -> None:
        self.service = Incidents(self.root / "state", clock=self.clock, header=self.header,
                                 context=lambda since: [r for r in self.records if r.t >= since])
        await self.service.start()
        self.server = ControlServer(self.socket_path, self, group=self.group)
        await self.server.start()
        self._ticker = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            self.ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    def feed(self, records: list[Record], findings: list[Finding] = ()) -> list:
        async def work() -> list:
            self.records.extend(records)
            self.latest.add_all(records)
            await self.incidents_.on_records(records)
            for finding in findings:
                key = (finding.target, finding.finding)
                if finding.state == "raised":
                    self.findings[key] = finding
                else:
                    self.findings.pop(key, None)
            return await self.incidents_.on_findings(list(findings))

        return self.call(work)

    def call(self, make: Callable[[], Awaitable[T]]) -> T:
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout=30)

    def stop(self) -> None:
        async def work() -> None:
            self._ticker.cancel()
            await self.server.stop()
            await self.incidents_.stop()

        try:
            self.call(work)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()


@contextmanager
def short_tmpdir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="iw-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def mini_daemon(header: Header, **kwargs: Any) -> Iterator[MiniDaemon]:
    with short_tmpdir() as root:
        root.chmod(0o755)  # so a test may talk to it as another user
        daemon = MiniDaemon(root, header, **kwargs)
        daemon.start()
        try:
            yield daemon
        finally:
            daemon.stop()
