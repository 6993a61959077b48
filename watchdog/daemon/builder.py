"""Builds every part of the daemon from a config, in one place.

:func:`build` returns :class:`Parts`; :class:`~watchdog.daemon.daemon.Daemon`
only drives them (start, loop, reload, stop), so a test can build the parts,
swap one, and run the daemon without an end-to-end setup.

Listeners (actions, alerts, metrics) plug in here: add a factory to
:data:`LISTENERS`. Each gets the :class:`~watchdog.listener.Hub` and returns a
:class:`~watchdog.listener.Component`; the daemon starts them in this order
(after incidents and the pipeline), reloads them with every accepted config,
and stops them in reverse order (before the pipeline drains and incidents close).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from watchdog.act.listener import make_actions
from watchdog.config import Config
from watchdog.daemon.hub import DaemonHub
from watchdog.daemon.pipeline import Pipeline
from watchdog.daemon.recorder import FlightRecorder
from watchdog.daemon.systemd_notify import SystemdNotify
from watchdog.daemon.workers import Scheduler
from watchdog.detect.factory import make_engine
from watchdog.incidents import Incidents
from watchdog.listener import Component, ListenerFactory
from watchdog.metrics.service import make_metrics
from watchdog.notify.listener import make_notifier
from watchdog.probes.base import Clock, Emit, MonotonicClock
from watchdog.probes.known_models import KnownModels
from watchdog.probes.suite import ProbeSuite
from watchdog.redact import Redactor
from watchdog.status import LatestRecords

LISTENERS: list[ListenerFactory] = [
    make_actions,
    make_notifier,
    make_metrics,
]
"""Listener factories, in start order."""


def gpu_table(config: Config) -> Any:
    """The NVML function table for ``gpu_backend``: None for "none", the simulator's
    reader for "sim", else None (the suite loads pynvml itself)."""
    if config.watchdog.gpu_backend == "sim":
        from watchdog.sim.nvml import SimNvml

        return SimNvml(config.watchdog.sim_gpu_dir)
    return None


def make_suite(config: Config, clock: Clock, emit: Emit, **options: Any) -> ProbeSuite:
    """A probe suite for ``config``, with the simulated GPU table handed in when configured.
    Used by the daemon and by the one-shot commands."""
    if "gpu_table" not in options or options["gpu_table"] is None:
        options["gpu_table"] = gpu_table(config)
    return ProbeSuite(config, clock, emit, **options)


SuiteFactory = Callable[[Config, "ProbeSuite | None"], ProbeSuite]
"""Makes the probe suite for a config, reusing the unchanged targets' probes of the old one."""


@dataclass
class Parts:
    """Everything the daemon drives. Long-lived: they survive reloads (reconfigured in place)."""

    config: Config
    clock: MonotonicClock
    redactor: Redactor
    notify: SystemdNotify
    recorder: FlightRecorder
    incidents: Incidents
    pipeline: Pipeline
    hub: DaemonHub
    scheduler: Scheduler
    make_suite: SuiteFactory
    gpu_totals: dict[int, float]
    listeners: list[Component] = field(default_factory=list)


def build(
    config: Config,
    config_path: str = "",
    *,
    clock: MonotonicClock | None = None,
    notify: SystemdNotify | None = None,
    listeners: Sequence[ListenerFactory] | None = None,
    suite_options: dict[str, Any] | None = None,
) -> Parts:
    """Build the daemon's parts for ``config``. ``listeners`` defaults to :data:`LISTENERS`;
    ``suite_options`` go to every :class:`ProbeSuite` (a test's transport, a fake table)."""
    clock = clock or MonotonicClock()
    notify = notify or SystemdNotify()
    redactor = Redactor.from_config(config)
    recorder = FlightRecorder(config.watchdog.recorder_window)
    incidents = Incidents(
        config.watchdog.state_dir,
        clock=clock,
        context=lambda since: recorder.records(since),
        incident_context=config.watchdog.incident_context,
        redactor=redactor,
        flap_window=config.watchdog.flap_window,
    )
    latest = LatestRecords()
    gpu_totals: dict[int, float] = {}
    pipeline = Pipeline(make_engine(config, totals=gpu_totals), recorder, latest, incidents,
                        on_progress=notify.progress)
    hub = DaemonHub(config_path, config, clock, redactor, incidents, latest, pipeline)
    known_models = KnownModels.in_state_dir(config.watchdog.state_dir)

    def suite_for(new_config: Config, old: ProbeSuite | None) -> ProbeSuite:
        options = dict(suite_options or {})
        # Each target's last known models, kept across restarts: canaries while a status endpoint fails.
        options.setdefault("known_models", known_models)
        return make_suite(new_config, clock, pipeline.emit, reuse=old, **options)

    parts = Parts(config=config, clock=clock, redactor=redactor, notify=notify, recorder=recorder,
                  incidents=incidents, pipeline=pipeline, hub=hub, scheduler=Scheduler(), make_suite=suite_for,
                  gpu_totals=gpu_totals)
    parts.listeners = [make(hub) for make in (LISTENERS if listeners is None else listeners)]
    return parts
