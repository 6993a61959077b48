"""``watchdogctl run``: the daemon. Drives the parts :func:`~watchdog.daemon.builder.build` makes.

Read top to bottom, as :meth:`Daemon.serve` runs: :meth:`~Daemon.startup`
(state-dir lock, incidents, pipeline, control socket, probes, listeners),
:meth:`~Daemon.main_loop` (until SIGTERM/SIGINT; housekeeping every few
seconds), :meth:`~Daemon.shutdown` (the reverse). :meth:`~Daemon.reload` (SIGHUP
or the control socket) validates the new config first and keeps the running one
if it is broken; targets whose settings did not change keep their workers.

One asyncio loop runs everything; blocking work (NVML, psutil, Docker, SQLite)
runs in worker threads. systemd hears ``READY=1`` after the first full round, a
``STATUS=`` line, ``WATCHDOG=1`` only while the loop makes progress, and
``STOPPING=1``. Actions, alerts and metrics are listeners (``watchdog/listener.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from loguru import logger

from watchdog.config import Config, ConfigError, load_config
from watchdog.control.server import ActionRefused, ControlServer
from watchdog.control.socket import ControlSocketError
from watchdog.daemon.builder import Parts, build
from watchdog.daemon.pipeline import Pipeline
from watchdog.daemon.systemd_notify import SystemdNotify
from watchdog.daemon.workers import HOUSEKEEPING_S
from watchdog.detect.factory import gpu_totals, make_engine
from watchdog.exitcodes import EXIT_FAILURE, EXIT_OK
from watchdog.incidents import Incident, Incidents
from watchdog.logs import set_redactor, setup_logging
from watchdog.probes.suite import ProbeSuite
from watchdog.redact import Redactor
from watchdog.status import LatestRecords, ReloadStatus, StatusSnapshot, summary_line
from watchdog.trace.header import build_header
from watchdog.trace.records import GpuDevice, Header

_log = logger.bind(component="daemon")


class Daemon:
    """The long-running watchdog. ``await Daemon(path, config).serve()`` until stopped."""

    def __init__(self, config_path: str, config: Config, log_format: str | None = None,
                 log_level: str | None = None, *, parts: Parts | None = None) -> None:
        self.config_path = config_path
        self.log_format, self.log_level = log_format, log_level  # from the command line: they win
        self.parts = parts or build(config, config_path)
        self.hub = self.parts.hub
        self.parts.scheduler.on_done = self._job_done
        set_redactor(self.parts.redactor)
        self.control: ControlServer | None = None
        self._pending_first_round: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._reloading = asyncio.Lock()
        self._status_line = ""
        self._lock_handle: IO[str] | None = None

    # the parts, by name (tests and the control socket read them)
    @property
    def config(self) -> Config:
        return self.hub.config

    @property
    def incidents(self) -> Incidents:
        return self.parts.incidents

    @property
    def pipeline(self) -> Pipeline:
        return self.parts.pipeline

    @property
    def notify(self) -> SystemdNotify:
        return self.parts.notify

    @property
    def suite(self) -> ProbeSuite | None:
        return self.hub.suite

    @property
    def ready(self) -> bool:
        return self.hub.ready

    @property
    def header(self) -> Header:
        return self.hub.header

    @property
    def latest(self) -> LatestRecords:
        return self.hub.latest

    @property
    def gpu_totals(self) -> dict[int, float]:
        return self.parts.gpu_totals

    # --- run: startup, main loop, shutdown ---------------------------------------------------------

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT. Returns the process exit code."""
        self._install_signal_handlers()
        if not self._lock_state_dir_or_log():
            return EXIT_FAILURE
        try:
            if not await self.startup():
                return EXIT_FAILURE
            await self.main_loop()
        finally:
            await self.shutdown()
        return EXIT_OK

    run = serve

    def _lock_state_dir_or_log(self) -> bool:
        config = self.config
        _log.info(f"starting: {len([t for t in config.targets if t.enabled])} target(s), "
                  f"config {self.config_path}, state in {config.watchdog.state_dir}")
        other = self._lock_state_dir()
        if other is not None:
            _log.error(f"another watchdog daemon (pid {other}) already uses the state dir "
                       f"{config.watchdog.state_dir} and its control socket "
                       f"{config.watchdog.control_socket}: refusing to start")
            return False
        return True

    async def startup(self) -> bool:
        """Start incidents, the pipeline, the control socket, the probes and the listeners
        (the state dir is locked first). False (logged) when the daemon must not run."""
        config = self.config
        await self.incidents.start()  # it logs incidents as they open and close
        self.pipeline.start()
        try:
            await self._start_control()
        except ControlSocketError as exc:
            _log.error(f"control socket: {exc}; refusing to start")
            return False
        self.parts.scheduler.start()
        await self._start_probes(config)
        self.parts.scheduler.every("housekeeping", HOUSEKEEPING_S, self._housekeeping, 60.0,
                                   now=False)
        for listener in self.parts.listeners:
            await listener.start()
        self._spawn(self.notify.run_watchdog(), "systemd-watchdog")
        return True

    async def main_loop(self) -> None:
        """Everything runs in the scheduler's jobs; the loop waits for a stop signal."""
        await self._stop.wait()

    def stop(self) -> None:
        if not self._stop.is_set():
            _log.info("stopping (signal)")
            self.notify.stopping("stopping")
            self._stop.set()

    async def shutdown(self) -> None:
        """Stop in the reverse order of start-up: listeners, probes, pipeline, control, incidents."""
        for listener in reversed(self.parts.listeners):
            try:
                await listener.stop()
            except Exception as exc:  # noqa: BLE001 - stop the rest regardless
                _log.opt(exception=exc).error(f"listener {listener.name} failed to stop: {exc!r}")
        await self.parts.scheduler.stop()
        await self._close_suite(self.hub.suite)
        self.hub.suite = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pipeline.stop()
        if self.control is not None:
            await self.control.stop()
        await self.incidents.stop()
        self.notify.close()
        _log.info("stopped")

    # --- reload ------------------------------------------------------------------------------------

    async def reload(self) -> ReloadStatus:
        """Load the config file again; keep the running one if the new one is broken, or if
        switching to it fails for any reason (then the old one is started again, and ``status``
        says so in ``daemon.last_reload``)."""
        async with self._reloading:
            at = datetime.now(timezone.utc)
            try:
                config = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                message = f"kept the running config: {len(exc.problems)} problem(s) in {exc.file}: " + "; ".join(
                    str(p) for p in exc.problems[:5])
                _log.error(f"reload refused: {exc}")
                return self._reloaded(ReloadStatus(at=at, ok=False, message=message))
            except Exception as exc:  # noqa: BLE001 - whatever it is, the running config stays
                _log.opt(exception=exc).error(f"reload refused: cannot load {self.config_path}: {exc!r}")
                return self._reloaded(ReloadStatus(at=at, ok=False,
                                                   message=f"kept the running config: cannot load it ({exc!r})"))
            if config == self.config:
                _log.info("reload: no changes")
                return self._reloaded(ReloadStatus(at=at, ok=True, message="no changes"))
            old = self.config
            try:
                return await self._switch(config, old, at)
            except Exception as exc:  # noqa: BLE001 - a reload must never leave the daemon blind
                _log.opt(exception=exc).error(f"reload failed half-way ({exc!r}); going back to the running config")
                try:
                    await self._switch(old, config, at)
                except Exception as again:  # noqa: BLE001
                    _log.opt(exception=again).critical(f"cannot restart the old config either: {again!r}")
                return self._reloaded(ReloadStatus(at=at, ok=False,
                                                   message=f"kept the running config: switching failed ({exc!r})"))

    async def _switch(self, config: Config, old: Config, at: datetime) -> ReloadStatus:
        """Apply ``config`` (coming from ``old``) everywhere and start its probes."""
        self.notify.reloading()
        _log.info("reloading the configuration")
        if config.watchdog.state_dir != old.watchdog.state_dir:
            _log.warning("reload: state_dir changes take effect at the next restart")
        await self._apply_config(config)
        if (config.watchdog.control_socket, config.watchdog.control_group) != (
                old.watchdog.control_socket, old.watchdog.control_group):
            if self.control is not None:
                await self.control.stop()
            with contextlib.suppress(ControlSocketError):
                await self._start_control()
        self.hub.ready = False
        await self._start_probes(config)
        for listener in self.parts.listeners:
            try:
                await listener.reload(config)
            except Exception as exc:  # noqa: BLE001 - one listener must not undo the reload of the rest
                _log.opt(exception=exc).error(f"reload: listener {listener.name} failed: {exc!r}")
        return self._reloaded(ReloadStatus(at=at, ok=True, message="reloaded"))

    async def _apply_config(self, config: Config) -> None:
        """Reconfigure the long-lived parts in place: redaction, logging, incidents, recorder, engine."""
        self.hub.config = config
        redactor = Redactor.from_config(config)
        self.parts.redactor = self.hub.redactor = redactor
        set_redactor(redactor)
        await self.incidents.configure(redactor=redactor, incident_context=config.watchdog.incident_context,
                                       flap_window=config.watchdog.flap_window)
        setup_logging(config.watchdog.log_format if self.log_format is None else self.log_format,
                      config.watchdog.log_level if self.log_level is None else self.log_level)
        self.parts.recorder.window_s = config.watchdog.recorder_window
        await self.pipeline.swap_engine(make_engine(config, totals=self.parts.gpu_totals),
                                        self.parts.recorder.records())

    def _reloaded(self, status: ReloadStatus) -> ReloadStatus:
        self.hub.last_reload = status
        return status

    # --- probes ------------------------------------------------------------------------------------

    async def _start_probes(self, config: Config) -> None:
        """Build the suite for ``config`` (keeping unchanged targets' probes) and sync the workers:
        unchanged targets keep running, the others are (re)started."""
        old = self.hub.suite
        suite = self.parts.make_suite(config, old)
        self.hub.suite = suite
        scheduler = self.parts.scheduler
        pending = set(scheduler.schedule_host(suite, config))
        pending.update(await scheduler.sync_workers(suite, config))
        await self._close_suite(old, keep=[n for n, p in suite.targets.items()
                                           if old is not None and old.targets.get(n) is p])
        self._update_header()
        self._pending_first_round = pending
        if not pending:
            self._mark_ready()

    @staticmethod
    async def _close_suite(suite: ProbeSuite | None, keep: list[str] | None = None) -> None:
        if suite is not None:
            with contextlib.suppress(Exception):
                await suite.aclose(keep=keep or (), keep_docker=keep is not None)

    def _job_done(self, name: str) -> None:
        """After every job run: progress for systemd; readiness after the first full round."""
        self.notify.progress()
        if name in self._pending_first_round:
            self._pending_first_round.discard(name)
            if name == "gpu":
                self._update_header()
            if not self._pending_first_round:
                self._mark_ready()

    async def _housekeeping(self) -> None:
        suite = self.hub.suite
        if suite is not None:  # a target with gpus = "auto" may have moved onto a GPU since
            seen = {t.name: list(t.gpus) for t in self.header.targets}
            if suite.target_gpus() != {name: seen.get(name, []) for name in suite.target_gpus()}:
                self._update_header()
        await self.incidents.tick()
        line = await self._summary()
        if line != self._status_line:
            self._status_line = line
            self.notify.status(line)

    def _mark_ready(self) -> None:
        if self.hub.ready:
            return
        self.hub.ready = True

        async def announce() -> None:
            await self.pipeline.drain()
            line = await self._summary()
            self._status_line = line
            self.notify.ready(line)
            _log.info(f"ready: {line}")

        self._spawn(announce(), "ready")

    def _update_header(self) -> None:
        suite = self.hub.suite
        devices: list[GpuDevice] = list(suite.gpu.devices) if suite is not None and suite.gpu is not None else []
        self.parts.gpu_totals.update(gpu_totals(devices))  # shared with the engine
        self.hub.header = build_header(
            self.config, devices, target_gpus=suite.target_gpus() if suite is not None else None,
            wall_zero=self.parts.clock.wall_start,
        )
        self._spawn(self.incidents.set_header(self.hub.header), "set-header")

    # --- status and the control socket ---------------------------------------------------------------

    async def status(self) -> StatusSnapshot:
        return await self.hub.status()

    async def _summary(self) -> str:
        """The one line for systemd's STATUS= and the log (it shows no action state)."""
        return summary_line(await self.hub.status(with_actions=False))

    async def _start_control(self) -> None:
        path = Path(self.config.watchdog.control_socket)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.control = ControlServer(path, _Provider(self), group=self.config.watchdog.control_group)
        await self.control.start()
        _log.info(f"control socket at {path}")

    # --- plumbing ------------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload(), "reload"))

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

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


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

    async def alert_test(self, sink: str | None, timeout: float) -> list[dict[str, Any]]:
        alerts = self.daemon.hub.alerts
        if alerts is None:
            raise KeyError("alerts are not running in this daemon")
        return [result.to_json() for result in await alerts.test(sink, timeout)]

    def allow_wedge(self) -> bool:
        return self.daemon.config.debug.allow_wedge

    async def act(self, action: str, target: str, params: dict[str, Any]) -> dict[str, Any]:
        from watchdog.act import ActError

        if target not in {t.name for t in self.daemon.config.targets}:
            raise LookupError(f"no target named {target!r}")
        listener = next((x for x in self.daemon.parts.listeners if x.name == "act"), None)
        actor = getattr(listener, "actor", None)
        if actor is None:
            raise ActionRefused("this daemon runs without the act listener")
        try:
            if action == "pause":
                return await actor.pause(target, seconds=params.get("seconds"))
            if action == "resume":
                return await actor.resume(target)
            return await actor.manual(action, target, model=params.get("model"))
        except ActError as exc:
            raise ActionRefused(str(exc)) from None


async def run_daemon(config_path: str, config: Config, log_format: str | None = None,
                     log_level: str | None = None) -> int:
    return await Daemon(config_path, config, log_format, log_level).serve()
