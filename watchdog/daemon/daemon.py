"""``watchdogctl run``: the daemon. Wires observe → decide → incidents, and schedules it.

One asyncio loop runs everything. APScheduler drives the periodic probes (no
overlapping runs of a job, missed runs coalesced); every probe has a deadline,
blocking work (NVML, psutil, Docker, SQLite) runs in worker threads, so the
loop stays free. The records flow through :class:`~watchdog.daemon.pipeline.Pipeline`.

Signals: SIGTERM/SIGINT stop gracefully; SIGHUP reloads the config (validated
first; a broken one is logged and the running config kept). systemd hears
``READY=1`` after the first full round, a ``STATUS=`` line, ``WATCHDOG=1``
only while the loop makes progress, and ``STOPPING=1``.

Actions, alerts and metrics attach to ``Daemon.incidents.bus``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from loguru import logger

from watchdog.config import Config, ConfigError, load_config
from watchdog.control.server import ControlServer
from watchdog.control.socket import ControlSocketError
from watchdog.incidents import Incident, Incidents
from watchdog.logs import set_redactor, setup_logging
from watchdog.daemon.systemd_notify import SystemdNotify
from watchdog.daemon.pipeline import Pipeline, make_engine
from watchdog.probes.base import MonotonicClock
from watchdog.daemon.recorder import FlightRecorder, build_header
from watchdog.probes.suite import ProbeSuite
from watchdog.redact import Redactor
from watchdog.status import DaemonInfo, LatestRecords, ReloadStatus, StatusSnapshot, build_status, summary_line
from watchdog.trace.records import GpuDevice, Header

_log = logger.bind(component="daemon")
_CANARY_TICK_S = 1.0
_HOUSEKEEPING_S = 5.0


class Daemon:
    """The long-running watchdog. ``await Daemon(path, config).run()`` until stopped."""

    def __init__(self, config_path: str, config: Config, log_format: str | None = None,
                 log_level: str | None = None) -> None:
        self.config_path = config_path
        self.log_format, self.log_level = log_format, log_level  # from the command line: they win
        self.config = config
        self.clock = MonotonicClock()
        self.notify = SystemdNotify()
        self.redactor = Redactor.from_config(config)
        set_redactor(self.redactor)
        self.recorder = FlightRecorder(config.watchdog.recorder_window)
        self.latest = LatestRecords()
        self.incidents = Incidents(
            config.watchdog.state_dir,
            clock=self.clock,
            context=lambda since: self.recorder.records(since),
            incident_context=config.watchdog.incident_context,
            redactor=self.redactor,
        )
        self.gpu_totals: dict[int, float] = {}
        self.pipeline = Pipeline(make_engine(config, self.gpu_totals), self.recorder, self.latest, self.incidents,
                                 on_progress=self.notify.progress)
        self.suite: ProbeSuite | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self.control: ControlServer | None = None
        self.header = Header()
        self.ready = False
        self.last_reload: ReloadStatus | None = None
        self._pending_first_round: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._reloading = asyncio.Lock()
        self._status_line = ""

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT. Returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                             (signal.SIGHUP, self._reload_from_signal)):
            loop.add_signal_handler(sig, handler)
        _log.info(f"starting: {len(self._enabled_targets())} target(s), config {self.config_path}, "
                  f"state in {self.config.watchdog.state_dir}")
        other = self._lock_state_dir()
        if other is not None:
            _log.error(f"another watchdog daemon (pid {other}) already uses the state dir "
                       f"{self.config.watchdog.state_dir} and its control socket "
                       f"{self.config.watchdog.control_socket}: refusing to start")
            return 1
        await self.incidents.start()  # it logs incidents as they open and close
        self.pipeline.start()
        try:
            try:
                await self._start_control()
            except ControlSocketError as exc:
                _log.error(f"control socket: {exc}; refusing to start")
                return 1
            self._start_probes()
            self._spawn(self.notify.run_watchdog(), "systemd-watchdog")
            await self._stop.wait()
        finally:
            await self._shutdown()
        return 0

    def _lock_state_dir(self) -> str | None:
        """Take the state dir for this daemon; returns the pid of another daemon holding it.

        Two daemons on one state dir would share incident numbers and recordings (and,
        once they act, act twice). A dir that cannot be written is left to the incident
        store, which falls back to memory and says so.
        """
        path = Path(self.config.watchdog.state_dir) / "daemon.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
        except OSError as exc:
            _log.warning(f"cannot lock the state dir ({exc}); not guarding against a second daemon")
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            other = handle.read().strip() or "?"
            handle.close()
            return other
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_handle = handle  # held (and the lock with it) until the process exits
        return None

    def stop(self) -> None:
        if not self._stop.is_set():
            _log.info("stopping (signal)")
            self.notify.stopping("stopping")
            self._stop.set()

    async def _shutdown(self) -> None:
        await self._stop_probes()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pipeline.stop()
        if self.control is not None:
            await self.control.stop()
        await self.incidents.stop()
        self.notify.close()
        _log.info("stopped")

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _enabled_targets(self) -> list[str]:
        return [t.name for t in self.config.targets if t.enabled]

    # --- probes and jobs ---------------------------------------------------------------------

    def _start_probes(self) -> None:
        config = self.config
        self.suite = suite = ProbeSuite(config, self.clock, self.pipeline.emit)
        self._update_header()
        scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        )
        pending: set[str] = set()
        now = datetime.now(timezone.utc)

        def add(name: str, interval: float, job: Callable[[], Awaitable[Any]], deadline: float) -> None:
            scheduler.add_job(self._guarded(name, job, deadline), "interval", seconds=max(interval, 0.1),
                              id=name, name=name, next_run_time=now)
            pending.add(name)

        if suite.gpu is not None:
            add("gpu", config.watchdog.gpu_interval, suite.gpu.round, max(config.watchdog.gpu_interval * 2, 10))
            suite.gpu.start_xid_watch()
        if suite.targets:  # one probe for every target's processes: as often as the keenest wants
            every = min(config.intervals_for(p.settings)["process"] for p in suite.targets.values())
            add("processes", every, suite.processes.round, 15.0)
        for name, probes in suite.targets.items():
            intervals = config.intervals_for(probes.settings)
            add(f"poll:{name}", intervals["poll"], probes.server.round, probes.settings.request_timeout + 5)
            scheduler.add_job(self._canary_tick(name), "interval", seconds=_CANARY_TICK_S, id=f"canary:{name}",
                              name=f"canary:{name}", next_run_time=now)
            if probes.logs is not None:
                self._spawn(self._follow_logs(name), f"logs:{name}")
        scheduler.add_job(self._housekeeping, "interval", seconds=_HOUSEKEEPING_S, id="housekeeping",
                          name="housekeeping")
        self._pending_first_round = pending
        if not pending:
            self._mark_ready()
        scheduler.start()
        self.scheduler = scheduler

    async def _stop_probes(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        probing = [t for t in self._tasks if t.get_name().startswith(("logs:", "canary:"))]
        for task in probing:
            task.cancel()
        await asyncio.gather(*probing, return_exceptions=True)
        if self.suite is not None:
            suite, self.suite = self.suite, None
            with contextlib.suppress(Exception):
                await suite.aclose()

    def _guarded(self, name: str, job: Callable[[], Awaitable[Any]], deadline: float) -> Callable[[], Awaitable[None]]:
        """A job with a deadline that never raises into the scheduler and marks progress."""

        async def run() -> None:
            try:
                await asyncio.wait_for(job(), timeout=deadline)
            except asyncio.TimeoutError:
                _log.warning(f"job {name} overran its {deadline:.0f} s deadline; cancelled")
            except Exception as exc:  # noqa: BLE001 - a probe bug must not stop the schedule
                _log.opt(exception=exc).error(f"job {name} failed: {exc!r}")
            self.notify.progress()
            if name in self._pending_first_round:
                self._pending_first_round.discard(name)
                if name == "gpu":
                    self._update_header()
                if not self._pending_first_round:
                    self._mark_ready()

        return run

    def _canary_tick(self, name: str) -> Callable[[], Awaitable[None]]:
        """Every second: start the target's canary if one is due (it runs as its own task)."""

        async def tick() -> None:
            suite = self.suite
            if suite is None or name not in suite.targets:
                return
            canary = suite.targets[name].canary
            if canary.in_flight or not canary.decide().send:
                return
            self._spawn(self._guarded(f"canary:{name}", canary.round, canary.settings.timeout + 10)(),
                        f"canary:{name}")

        return tick

    async def _follow_logs(self, name: str) -> None:
        """Follow a target's log for as long as the daemon runs; restart it if it ends."""
        backoff = 1.0
        while True:
            suite = self.suite
            if suite is None or name not in suite.targets or suite.targets[name].logs is None:
                return
            try:
                await suite.targets[name].logs.run()  # type: ignore[union-attr]
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logs are best effort
                _log.warning(f"log follower for {name} failed: {exc!r}; retrying in {backoff:.0f} s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)

    async def _housekeeping(self) -> None:
        suite = self.suite
        if suite is not None:  # a target with gpus = "auto" may have moved onto a GPU since
            seen = {t.name: list(t.gpus) for t in self.header.targets}
            if suite.target_gpus() != {name: seen.get(name, []) for name in suite.target_gpus()}:
                self._update_header()
        await self.incidents.tick()
        self.notify.progress()
        line = summary_line(await self.status())
        if line != self._status_line:
            self._status_line = line
            self.notify.status(line)

    def _mark_ready(self) -> None:
        if self.ready:
            return
        self.ready = True

        async def announce() -> None:
            await self.pipeline.drain()
            line = summary_line(await self.status())
            self._status_line = line
            self.notify.ready(line)
            _log.info(f"ready: {line}")

        self._spawn(announce(), "ready")

    def _update_header(self) -> None:
        suite = self.suite
        devices: list[GpuDevice] = list(suite.gpu.devices) if suite is not None and suite.gpu is not None else []
        for device in devices:
            if device.mem_total_mib:
                self.gpu_totals[device.index] = float(device.mem_total_mib)
        self.header = build_header(
            self.config, devices, target_gpus=suite.target_gpus() if suite is not None else None,
            wall_zero=self.clock.wall_start,
        )
        self._spawn(self.incidents.set_header(self.header), "set-header")

    # --- reload ------------------------------------------------------------------------------

    def _reload_from_signal(self) -> None:
        self._spawn(self.reload(), "reload")

    async def reload(self) -> ReloadStatus:
        """Load the config file again; keep the running one if the new one is broken."""
        async with self._reloading:
            at = datetime.now(timezone.utc)
            try:
                config = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                message = f"kept the running config: {len(exc.problems)} problem(s) in {exc.file}: " + "; ".join(
                    str(p) for p in exc.problems[:5])
                _log.error(f"reload refused: {exc}")
                self.last_reload = ReloadStatus(at=at, ok=False, message=message)
                return self.last_reload
            if config == self.config:
                self.last_reload = ReloadStatus(at=at, ok=True, message="no changes")
                _log.info("reload: no changes")
                return self.last_reload
            self.notify.reloading()
            _log.info("reloading the configuration")
            await self._stop_probes()
            if config.watchdog.state_dir != self.config.watchdog.state_dir:
                _log.warning("reload: state_dir changes take effect at the next restart")
            old_socket = (self.config.watchdog.control_socket, self.config.watchdog.control_group)
            self.config = config
            self.redactor = Redactor.from_config(config)
            set_redactor(self.redactor)
            await self.incidents.configure(redactor=self.redactor, incident_context=config.watchdog.incident_context)
            setup_logging(config.watchdog.log_format if self.log_format is None else self.log_format,
                          config.watchdog.log_level if self.log_level is None else self.log_level)
            self.recorder.window_s = config.watchdog.recorder_window
            await self.pipeline.swap_engine(make_engine(config, self.gpu_totals), self.recorder.records())
            if (config.watchdog.control_socket, config.watchdog.control_group) != old_socket:
                if self.control is not None:
                    await self.control.stop()
                with contextlib.suppress(ControlSocketError):
                    await self._start_control()
            self.ready = False
            self._start_probes()
            self.last_reload = ReloadStatus(at=at, ok=True, message="reloaded")
            return self.last_reload

    # --- control socket ------------------------------------------------------------------------

    async def _start_control(self) -> None:
        path = Path(self.config.watchdog.control_socket)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.control = ControlServer(path, _Provider(self), group=self.config.watchdog.control_group)
        await self.control.start()
        _log.info(f"control socket at {path}")

    async def status(self) -> StatusSnapshot:
        return build_status(
            header=self.header,
            polls=self.latest.polls,
            canaries=self.latest.canaries,
            gpu_samples=self.latest.gpus,
            xids=self.latest.xids,
            findings=self.pipeline.engine.active(),
            incidents=self.incidents.open_incidents.values(),
            daemon=DaemonInfo(
                config_path=self.config_path,
                host=self.header.host,
                mode=self.config.policy.mode,
                ready=self.ready,
                last_reload=self.last_reload,
                problems=self.incidents.problems,
            ),
            now=self.clock(),
            wall_start=self.clock.wall_start,
            stale_after=self._stale_after(),
            redactor=self.redactor,
        )

    def _stale_after(self) -> float:
        """How old a target's last observation may be before status calls it unknown."""
        slowest = max([self.config.watchdog.gpu_interval]
                      + [max(self.config.intervals_for(t)["poll"], self.config.intervals_for(t)["process"])
                         for t in self.config.targets if t.enabled] or [0.0])
        return max(120.0, 3 * slowest)


class _Provider:
    """What the control socket may ask of the daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def status(self) -> StatusSnapshot:
        return await self.daemon.status()

    async def incidents(self, since: float | None, limit: int, timeline: bool) -> list[Incident]:
        return await self.daemon.incidents.list(since, limit, timeline)

    async def incident(self, incident_id: int) -> Incident | None:
        return await self.daemon.incidents.get(incident_id)

    def recording_path(self, incident: Incident) -> Path | None:
        return self.daemon.incidents.recording_path(incident)

    async def reload(self) -> ReloadStatus:
        # Its own task: a reload that moves the control socket stops the server that is
        # handling this very request, which must not cancel the reload half-way.
        return await asyncio.shield(self.daemon._spawn(self.daemon.reload(), "reload"))

    def allow_wedge(self) -> bool:
        return self.daemon.config.debug.allow_wedge


async def run_daemon(config_path: str, config: Config, log_format: str | None = None,
                     log_level: str | None = None) -> int:
    return await Daemon(config_path, config, log_format, log_level).run()
