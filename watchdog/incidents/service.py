"""The daemon's door to incidents: an async facade over the manager and its store.

Everything that touches SQLite or the recording files runs in **one dedicated
worker thread** (a single-thread executor), in the order it was asked for, so
the asyncio loop never waits on a disk and the store is only ever used from the
thread that opened it. Events go to the listeners on the loop, after the
manager has applied the change and written it to the store.

How the daemon uses it, for every batch of observations::

    recorder.add(records)                    # the flight recorder first,
    await incidents.on_records(records)      # then running recordings,
    findings = engine.feed(records)
    await incidents.on_findings(findings)    # then what the detectors concluded.

In that order a recording that opens takes the batch with its context (from the
recorder) and never twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from loguru import logger

from watchdog.detect.finding import Finding
from watchdog.incidents.events import EventBus
from watchdog.incidents.manager import DEFAULT_RETENTION, IncidentManager
from watchdog.incidents.model import Incident, IncidentEvent
from watchdog.incidents.recording import DEFAULT_MAX_BYTES
from watchdog.incidents.store import DB_NAME, IncidentStore, StoreError
from watchdog.logs import LogOnce
from watchdog.redact import NO_SECRETS, Redactor
from watchdog.trace.records import Canary, Header, Record

T = TypeVar("T")
_log = logger.bind(component="incidents")

#: The flight recorder's records with ``t >= since`` (called on the loop thread).
ContextSource = Callable[[float], Iterable[Record]]


class DaemonClock(Protocol):
    """The daemon's clock: ``clock()`` is seconds since start, ``wall_start`` the Unix time of 0."""

    wall_start: float

    def __call__(self) -> float: ...


class Incidents:
    """Incidents for the daemon. Create, ``await start()``, feed, ``await stop()``."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        clock: DaemonClock,
        header: Header | None = None,
        context: ContextSource | None = None,
        incident_context: float = 300.0,
        carryover_grace: float = 600.0,
        retention: float = DEFAULT_RETENTION,
        redactor: Redactor = NO_SECRETS,
        max_recording_bytes: int = DEFAULT_MAX_BYTES,
        flap_window: float = 0.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.bus = EventBus()
        self._context = context
        self._incident_context = incident_context
        self._settings = dict(
            header=header,
            incident_context=incident_context,
            carryover_grace=carryover_grace,
            retention=retention,
            redactor=redactor,
            max_recording_bytes=max_recording_bytes,
            flap_window=flap_window,
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="incident-store")
        self._manager: IncidentManager | None = None
        self._open: dict[str, Incident] = {}
        self._wants_records = False
        self._problems: dict[str, str] = {}
        self._once = LogOnce("incidents")

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store (creating or migrating it) and take over the open incidents.

        A state dir or database that cannot be used at all (read-only, full,
        from a newer version) does not stop the daemon: incidents are then
        kept in memory only, and ``problems`` says so (status shows it).
        """
        t = self.clock()

        def work() -> list[IncidentEvent]:
            fallback = None
            try:
                store = IncidentStore(self.state_dir / DB_NAME)
            except StoreError as exc:
                fallback = f"{exc}; incidents are kept in memory only, until the daemon restarts"
                _log.error(f"state store unusable: {fallback}")
                store = IncidentStore.in_memory()
            self._manager = IncidentManager(
                self.state_dir, wall_start=self.clock.wall_start, store=store, **self._settings
            )
            if fallback:
                self._manager.problems["store-open"] = f"state store unusable: {fallback}"
            return self._manager.start(t)

        events = await self._run(work)
        await self._refresh()
        self.bus.publish(events)

    async def stop(self, timeout: float = 10.0) -> None:
        """Close recordings and the store cleanly; wait a while for async listeners."""
        if self._manager is not None:
            manager, self._manager = self._manager, None
            try:
                await self._run(manager.stop)
            except Exception as exc:  # noqa: BLE001 - stopping must finish
                _log.error(f"incidents: error while stopping: {exc!r}")
        await self.bus.drain(timeout)
        self._executor.shutdown(wait=True)

    # --- feeding ------------------------------------------------------------------------------

    async def on_records(self, records: Sequence[Record]) -> list[IncidentEvent]:
        """Every batch of observations: appended to the recordings that are running; canaries counted."""
        if not records or self._manager is None:
            return []
        if not self._wants_records:  # nothing records: only the canaries matter (counted for the report)
            canaries = [r for r in records if isinstance(r, Canary)]
            if not canaries:
                return []
            return await self._mutate(lambda m: m.count_canaries(canaries))
        batch = list(records)
        return await self._mutate(lambda m: m.record(batch))

    async def on_findings(self, findings: Sequence[Finding]) -> list[IncidentEvent]:
        """The engine's findings, in order. Returns the events (already published)."""
        if not findings or self._manager is None:
            return []
        batch = list(findings)
        context = self._context_for(batch)
        return await self._mutate(lambda m: m.handle(batch, context))

    async def note(
        self, target: str, summary: str, evidence: dict[str, Any] | None = None, incident_id: int | None = None
    ) -> list[IncidentEvent]:
        """A line in the timeline of the target's open incident (an action, an alert sent...);
        with ``incident_id``, of that incident even if it closed meanwhile."""
        if self._manager is None:
            return []
        t = self.clock()
        return await self._mutate(lambda m: m.note(target, summary, t, evidence, incident_id))

    @property
    def db_path(self) -> Path | None:
        """The SQLite file the incidents live in (None while in memory only): watchdog/act/
        keeps its actions and budget there, through a connection of its own."""
        manager = self._manager
        if manager is None or not manager.store.persistent:
            return None
        return manager.store.path

    async def tick(self) -> list[IncidentEvent]:
        """Let time pass when no records come (call it now and then, e.g. every few seconds)."""
        if self._manager is None:
            return []
        t = self.clock()
        return await self._mutate(lambda m: m.tick(t))

    async def configure(
        self, *, redactor: Redactor, incident_context: float, flap_window: float | None = None
    ) -> None:
        """After a reload: new secrets to mask, a new context window for recordings, a new flap window."""
        self._incident_context = incident_context
        self._settings.update(redactor=redactor, incident_context=incident_context)
        if flap_window is not None:
            self._settings.update(flap_window=flap_window)
        manager = self._manager
        if manager is not None:

            def apply() -> None:
                manager.redactor = redactor
                manager.incident_context = incident_context
                if flap_window is not None:
                    manager.flap_window = flap_window

            await self._run(apply)

    async def set_header(self, header: Header) -> None:
        """After a reload: the targets and GPUs that new recordings name in their header."""
        if self._manager is not None:
            await self._run(self._manager.set_header, header)

    # --- queries ------------------------------------------------------------------------------

    @property
    def open_incidents(self) -> dict[str, Incident]:
        """The open incidents by target, as of the last change (no await: for the status builder)."""
        return dict(self._open)

    @property
    def problems(self) -> list[str]:
        """What is wrong with the store or recordings now, for ``status``."""
        return list(self._problems.values())

    async def get(self, incident_id: int) -> Incident | None:
        return await self._run(self._require().get, incident_id)

    async def list(self, since: float | None = None, limit: int = 50, timeline: bool = False) -> list[Incident]:
        """Newest first: open incidents and those opened or closed since ``since`` (Unix time)."""
        return await self._run(self._require().list, since, limit, timeline)

    def recording_path(self, incident: Incident) -> Path | None:
        if incident.recording is None:
            return None
        path = self.state_dir / incident.recording.file
        return path if path.is_file() else None

    # --- plumbing -----------------------------------------------------------------------------

    def _context_for(self, findings: list[Finding]) -> list[Record]:
        # Any raised finding may open an incident (even on a target whose incident closes
        # earlier in the same batch); they are rare, so the copy costs nothing that matters.
        opening = [f.t for f in findings if f.state == "raised"]
        if not opening or self._context is None:
            return []
        try:
            return list(self._context(min(opening) - self._incident_context))
        except Exception as exc:  # noqa: BLE001 - an incident without context beats no incident
            self._once.problem("context", f"cannot read the flight recorder for an incident's context: {exc!r}")
            return []

    async def _mutate(self, change: Callable[[IncidentManager], list[IncidentEvent]]) -> list[IncidentEvent]:
        manager = self._require()

        def work() -> tuple[list[IncidentEvent], dict[str, Incident], bool, dict[str, str]]:
            events = change(manager)
            return events, *self._state(manager)

        try:
            events, self._open, self._wants_records, self._problems = await self._run(work)
        except Exception as exc:  # noqa: BLE001 - never an exception into the daemon's loop
            _log.opt(exception=exc).error(f"incidents: internal error, change dropped: {exc!r}")
            return []
        self.bus.publish(events)
        return events

    async def _refresh(self) -> None:
        manager = self._require()
        self._open, self._wants_records, self._problems = await self._run(lambda: self._state(manager))

    @staticmethod
    def _state(manager: IncidentManager) -> tuple[dict[str, Incident], bool, dict[str, str]]:
        incidents = {i.target: i for i in manager.open_incidents()}
        wants = manager.recording or bool(incidents)
        return incidents, wants, dict(manager.problems)

    def _require(self) -> IncidentManager:
        if self._manager is None:
            raise RuntimeError("incidents are not started (await Incidents.start() first)")
        return self._manager

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
