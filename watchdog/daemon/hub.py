"""The running daemon's live state, and what listeners may use of it (:class:`watchdog.listener.Hub`).

The daemon writes it (config, header, suite, ready, last reload); listeners and
the control socket read it. ``status()`` builds the snapshot ``watchdogctl
status`` shows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from loguru import logger

from watchdog.config import Config
from watchdog.daemon.pipeline import Pipeline
from watchdog.detect.finding import Finding
from watchdog.detect.view import TargetView
from watchdog.incidents import Incidents
from watchdog.listener import Alerts
from watchdog.probes.attribution import Attributor
from watchdog.probes.base import MonotonicClock
from watchdog.probes.suite import ProbeSuite
from watchdog.redact import Redactor
from watchdog.status import DaemonInfo, LatestRecords, ReloadStatus, StatusSnapshot, build_status
from watchdog.status.model import ActionStatus
from watchdog.trace.records import Canary, Header, Record

_log = logger.bind(component="daemon")


class DaemonHub:
    """Live state shared by the daemon, its listeners and the control socket."""

    def __init__(self, config_path: str, config: Config, clock: MonotonicClock, redactor: Redactor,
                 incidents: Incidents, latest: LatestRecords, pipeline: Pipeline) -> None:
        self.config_path = config_path
        self._config = config
        self.clock = clock
        self.redactor = redactor
        self.incidents = incidents
        self.latest = latest
        self.pipeline = pipeline
        self._header = Header()
        self.suite: ProbeSuite | None = None
        self.ready = False
        self.last_reload: ReloadStatus | None = None
        # Whether a listener carries out actions: until one does, status says "observe"
        # whatever policy.mode asks for (the act listener sets it when it starts).
        self.acts = False
        # The notify listener while it runs: its sinks' health for status, and ``alert test``.
        self.alerts: Alerts | None = None
        # Set by the act listener: per target its state, pause and restart budget (for status).
        self.action_status: Callable[[], Awaitable[Mapping[str, ActionStatus]]] | None = None

    # --- what listeners read --------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        self._config = config

    @property
    def header(self) -> Header:
        return self._header

    @header.setter
    def header(self, header: Header) -> None:
        self._header = header

    def emit(self, record: Record) -> None:
        """Put a record into the pipeline (on the loop's thread)."""
        self.pipeline.emit(record)

    def attributor(self) -> Attributor | None:
        return self.suite.attributor if self.suite is not None else None

    def target_view(self, target: str) -> TargetView | None:
        found = self.pipeline.engine.targets.get(target)
        return found.view if found is not None else None

    def active_findings(self) -> list[Finding]:
        return self.pipeline.engine.active()

    def canary_in_flight(self, target: str) -> bool:
        suite = self.suite
        return suite is not None and target in suite.targets and suite.targets[target].canary.in_flight

    async def canary_now(self, target: str) -> Canary | None:
        suite = self.suite
        if suite is None or target not in suite.targets:
            return None
        return await suite.targets[target].canary.round(force=True)

    async def status(self, *, with_actions: bool = True) -> StatusSnapshot:
        """The snapshot ``watchdogctl status`` shows. ``with_actions=False`` leaves out each
        target's action state (paused, restarts left: a look into the actor's database per
        target), which the one-line summary the daemon writes every few seconds does not use."""
        config = self._config
        actions: Mapping[str, ActionStatus] = {}
        if with_actions and self.action_status is not None:
            try:
                actions = await self.action_status()
            except Exception as exc:  # noqa: BLE001 - status answers even when the actor cannot
                _log.warning(f"status: the actor's state is unavailable: {exc!r}")
        return build_status(
            actions=actions,
            header=self._header,
            polls=self.latest.polls,
            canaries=self.latest.canaries,
            gpu_samples=self.latest.gpus,
            xids=self.latest.xids,
            findings=self.pipeline.engine.active(),
            incidents=self.incidents.open_incidents.values(),
            daemon=DaemonInfo(
                config_path=self.config_path,
                host=self._header.host,
                mode=config.policy.mode if self.acts else "observe",
                ready=self.ready,
                last_reload=self.last_reload,
                problems=self.incidents.problems,
            ),
            now=self.clock(),
            wall_start=self.clock.wall_start,
            stale_after=stale_after(config),
            redactor=self.redactor,
            canary_failures=self.latest.canary_failures,
            xid_counts=self.latest.xid_counts,
            alerts=self.alerts.sink_status() if self.alerts is not None else (),
        )


def stale_after(config: Config) -> float:
    """How old a target's last observation may be before status calls it unknown."""
    slowest = max([config.watchdog.gpu_interval]
                  + [max(config.intervals_for(t)["poll"], config.intervals_for(t)["process"])
                     for t in config.targets if t.enabled] or [0.0])
    return max(120.0, 3 * slowest)


