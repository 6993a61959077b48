"""The seam where actions (``act/``), alerts (``notify/``) and metrics (``metrics/``) plug into the daemon.

A *listener* is a :class:`Component`: the daemon's builder
(``watchdog/daemon/builder.py``) makes one per package from a :class:`Hub`, and
the daemon starts them in order after the probes' pipeline, reloads them with
every accepted config and stops them in reverse order before the incidents
close. Listeners import this module, never ``watchdog.daemon``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from watchdog.config.model import Config
    from watchdog.detect.finding import Finding
    from watchdog.detect.view import TargetView
    from watchdog.incidents import Incidents
    from watchdog.probes.attribution import Attributor
    from watchdog.status import LatestRecords, StatusSnapshot
    from watchdog.status.model import ActionStatus, AlertSinkStatus
    from watchdog.trace.records import Canary, Header, Record


@runtime_checkable
class Component(Protocol):
    """Something with a lifecycle the daemon drives: start, reload with a new config, stop."""

    name: str

    async def start(self) -> None: ...

    async def reload(self, config: Config) -> None: ...

    async def stop(self) -> None: ...


class Hub(Protocol):
    """What a listener may use of the running daemon (all of it lives as long as the daemon).

    - ``incidents``: ``incidents.bus`` for incident events, ``incidents.note()`` to write back;
    - ``emit(record)``: put a trace record (e.g. an ``Event``) into the pipeline, in order;
    - ``latest``: the latest records per target and GPU (what status shows);
    - ``attributor()``: the probes' process-to-target attribution now (None between rounds
      of a reload); act must not signal a process it does not attribute to the target;
    - ``canary_now(target)``: send a canary to the target now (None if one is in flight,
      the target is unknown or no model can be asked);
    - ``status()``: the status snapshot, as ``watchdogctl status`` shows it;
    - ``config`` and ``header``: the running config and trace header (both change on reload);
    - ``acts``: set by the act listener while it carries out actions (status shows the mode);
    - ``alerts``: set by the notify listener while it runs (status shows its sinks; the
      control socket's ``alert test`` goes through it);
    - ``action_status``: set by the act listener: per target its state, pause and restart
      budget, for status;
    - ``target_view(target)`` and ``active_findings()``: what the detectors see now (the act
      listener never restarts a server that is loading, prefilling or idle with a model held);
    - ``canary_in_flight(target)``: whether a canary to it is on its way now.
    """

    @property
    def config(self) -> Config: ...

    @property
    def header(self) -> Header: ...

    incidents: Incidents
    latest: LatestRecords
    clock: Callable[[], float]
    acts: bool  # the act listener sets it while it acts; until then status says "observe"
    alerts: Alerts | None  # the notify listener sets it while it runs
    action_status: Callable[[], Awaitable[Mapping[str, ActionStatus]]] | None

    def target_view(self, target: str) -> TargetView | None: ...

    def active_findings(self) -> list[Finding]: ...

    def canary_in_flight(self, target: str) -> bool: ...

    def emit(self, record: Record) -> None: ...

    def attributor(self) -> Attributor | None: ...

    def canary_now(self, target: str) -> Awaitable[Canary | None]: ...

    def status(self) -> Awaitable[StatusSnapshot]: ...


class Alerts(Protocol):
    """What the notify listener offers the daemon: its sinks' health, and a test alert."""

    def sink_status(self) -> list[AlertSinkStatus]: ...

    async def test(self, sink: str | None, timeout: float) -> Sequence[TestResultLike]: ...


class TestResultLike(Protocol):
    def to_json(self) -> dict[str, Any]: ...


ListenerFactory = Callable[["Hub"], "Component"]
"""Makes a package's listener; it reads ``hub.config`` (and gets every later one through
``reload``), and does nothing while its part of the config is empty."""
