"""What the actor needs from the daemon, and nothing more (so it is built and tested alone).

The daemon (watchdog/daemon/) provides one object with these methods; tests
provide their own around a real simulator. Nothing here is called from a
detector or a probe: they know nothing of actions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from watchdog.act.policy import TargetSnapshot
from watchdog.config.model import Config
from watchdog.incidents.model import Incident, IncidentEvent
from watchdog.trace.records import Canary, Record


class Clock(Protocol):
    """Seconds since the daemon started; ``wall_start`` is the Unix time of 0."""

    wall_start: float

    def __call__(self) -> float: ...


class Bus(Protocol):
    def subscribe(self, listener: Callable[[IncidentEvent], Awaitable[None] | None]) -> Callable[[], None]: ...


class IncidentsPort(Protocol):
    """The slice of :class:`watchdog.incidents.Incidents` the actor uses."""

    bus: Bus

    @property
    def open_incidents(self) -> dict[str, Incident]: ...

    @property
    def db_path(self) -> Path | None: ...

    async def note(self, target: str, summary: str, evidence: dict[str, Any] | None = None,
                   incident_id: int | None = None) -> list[IncidentEvent]: ...

    async def get(self, incident_id: int) -> Incident | None: ...


class ActHost(Protocol):
    clock: Clock

    def config(self) -> Config:
        """The running config (it changes on reload)."""
        ...

    def emit(self, record: Record) -> None:
        """Put a record (the ``event`` records of trace-v1) into the daemon's pipeline."""
        ...

    def snapshot(self, target: str) -> TargetSnapshot | None:
        """The detectors' view of the target now (None if unknown)."""
        ...

    async def canary(self, target: str) -> Canary | None:
        """Send a canary now and return it; None when none can be sent (no model loaded...)."""
        ...

    # Optional: ``owner_of(pid) -> str | None``, the probes' attribution (blocking). When the
    # host has it, a kill also needs it to name the target, on top of the per-pid proof.
