"""The notifier: incident events in, alerts out through the outbox to every sink.

A listener on ``Incidents.bus``: :meth:`Notifier.on_event` only queues the
event (detection and actions never wait). One task turns events into alerts,
in order, and stores them in the outbox (SQLite, its own worker thread) before
anything is sent; one worker per sink delivers what is due, oldest first,
retrying with backoff (a 429's Retry-After honoured) until delivered or
expired. A crash loses nothing that was stored: the next start sends it.

Flapping: a "resolved" is held for ``flap_window`` (the incident manager
reopens an incident that raises again within that window); if it reopens, the
held "resolved" is withdrawn, so a flapping target is one "opened" and, once it
stays quiet, one "resolved", however often it flapped.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger

from watchdog.config.model import Config
from watchdog.config.secrets import SecretError
from watchdog.incidents.model import Incident, IncidentEvent, TimelineEntry, to_datetime
from watchdog.logs import LogOnce
from watchdog.notify.alert import SEVERITY_RANK, Alert
from watchdog.notify.compose import alert_key, compose, make_sink_alert, make_test_alert, transition
from watchdog.notify.outbox import DB_NAME, Outbox, Row, SinkCounts
from watchdog.redact import Redactor
from watchdog.status.model import AlertSinkStatus, StatusSnapshot

if TYPE_CHECKING:  # the sinks (smtplib, email, html) load with the first configured sink (issue 15)
    from watchdog.notify.sinks import DeliveryError, Sink

T = TypeVar("T")
_log = logger.bind(component="notify")
_IDLE_POLL_S = 30.0
_SNAPSHOT_TIMEOUT_S = 2.0
_PRUNE_EVERY_S = 3600.0


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt n+1 after n failures: first, first*factor, ... up to ``most``, with jitter."""

    first: float = 5.0
    factor: float = 2.0
    most: float = 300.0
    jitter: float = 0.1

    def delay(self, failures: int) -> float:
        base = min(self.most, self.first * self.factor ** max(0, failures - 1))
        return base * (1 + random.uniform(-self.jitter, self.jitter))


@dataclass
class _Health:
    state: str = "idle"
    last_error: str | None = None
    last_error_at: float | None = None
    last_ok_at: float | None = None
    failing_since: float | None = None
    told: bool = False  # the other sinks were told about this failure episode


@dataclass(frozen=True)
class TestResult:
    """How a test alert went for one sink (what ``watchdogctl alert test`` prints)."""

    sink: str
    kind: str
    delivered: bool
    attempts: int
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"sink": self.sink, "kind": self.kind, "delivered": self.delivered, "attempts": self.attempts,
                "error": self.error}


SnapshotSource = Callable[[], Awaitable[StatusSnapshot]]


class Notifier:
    """Tells people. ``await start()``, subscribe :meth:`on_event`, ``await stop()``; ``reload`` on SIGHUP."""

    def __init__(
        self,
        config: Config,
        state_dir: str | Path,
        redactor: Redactor,
        host: str,
        *,
        snapshot: SnapshotSource | None = None,
        clock: Callable[[], float] = time.time,
        backoff: Backoff = Backoff(),
        reminder_every: float = 30.0,
        sink_alert_after: float = 900.0,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.state_dir = Path(state_dir)
        self.redactor = redactor
        self.host = host
        self.snapshot = snapshot
        self.clock = clock
        self.backoff = backoff
        self.reminder_every = reminder_every
        self.sink_alert_after = sink_alert_after
        self.environ = environ
        self._settings = {s.name: s for s in config.alerts}
        self._sinks: dict[str, Sink] = {}
        self._health: dict[str, _Health] = {}
        self._counts: dict[str, SinkCounts] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._queue: asyncio.Queue[IncidentEvent] = asyncio.Queue()
        self._severity: dict[int, str] = {}
        self._open: dict[int, Incident] = {}
        self._waiters: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._outbox: Outbox | None = None
        self._once = LogOnce("notify")
        self._next_prune = 0.0
        self._running = False
        self.problems: dict[str, str] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the outbox, build the sinks, start delivering (what an earlier run left goes first)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alert-outbox")
        path = self.state_dir / DB_NAME
        try:
            self._outbox = await self._db(Outbox, path)
        except Exception as exc:  # noqa: BLE001 - alerts in memory beat no alerts
            _log.error(f"alert outbox {path} unusable ({exc}); alerts are kept in memory until the daemon restarts")
            self.problems["outbox"] = f"alert outbox unusable ({exc}); kept in memory only"
            self._outbox = await self._db(Outbox, ":memory:")
        await self._build_sinks()
        await self._db(self._outbox.retry_now, self.clock())
        await self._refresh_counts()
        self._running = True
        self._tasks = [
            asyncio.create_task(self._process(), name="notify:events"),
            asyncio.create_task(self._remind_loop(), name="notify:reminders"),
        ]
        for name in self._settings:
            self._start_worker(name)
        if self._settings:
            _log.info(f"alerts: {len(self._settings)} sink(s): {', '.join(self._settings)}")

    async def stop(self, timeout: float = 5.0) -> None:
        """Store what is queued (it is sent at the next start), stop the workers, close the outbox."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            _log.warning(f"alerts: {self._queue.qsize()} incident event(s) not stored before the stop")
        self._running = False
        workers = list(self._workers.values())
        self.wake()  # idle workers see the flag and return; one mid-send is cancelled
        tasks = [*self._tasks, *workers]
        for task in self._tasks:
            task.cancel()
        await _finish(tasks, timeout)
        self._tasks, self._workers = [], {}
        for sink in self._sinks.values():
            try:
                await sink.aclose()
            except Exception as exc:  # noqa: BLE001 - closing must finish
                _log.debug(f"alert sink {sink.name}: error while closing: {exc!r}")
        self._sinks = {}
        if self._outbox is not None and self._executor is not None:
            outbox, self._outbox = self._outbox, None
            await self._db(outbox.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def reload(self, config: Config, redactor: Redactor) -> None:
        """New sinks and secrets; pending messages of a sink that stays are delivered with its new settings."""
        self.config, self.redactor = config, redactor
        old = set(self._settings)
        self._settings = {s.name: s for s in config.alerts}
        for name in old - set(self._settings):
            task = self._workers.pop(name, None)
            wake = self._wake.pop(name, None)
            if wake is not None:
                wake.set()  # the worker sees its sink gone and returns
            if task is not None:
                await _finish([task], 5.0)
            self._health.pop(name, None)
        await self._build_sinks()
        for name in self._settings:
            if name not in self._workers:
                self._start_worker(name)
            else:
                self._wake[name].set()

    async def _build_sinks(self) -> None:
        for sink in self._sinks.values():
            try:
                await sink.aclose()
            except Exception as exc:  # noqa: BLE001 - closing must finish
                _log.debug(f"alert sink {sink.name}: error while closing: {exc!r}")
        self._sinks = {}
        if self._settings:
            from watchdog.notify.sinks import build_sink
        for name, settings in self._settings.items():
            self._health.setdefault(name, _Health())
            try:
                self._sinks[name] = build_sink(settings, self.redactor, self.environ)
                self._once.ok(f"secret:{name}")
            except SecretError as exc:
                message = f"alert sink {name}: cannot read its secret ({exc}); its messages wait in the outbox"
                self._once.problem(f"secret:{name}", message, "ERROR")
                self._fail(name, f"cannot read its secret: {exc}")

    def _start_worker(self, name: str) -> None:
        self._wake[name] = asyncio.Event()
        self._workers[name] = asyncio.create_task(self._worker(name), name=f"notify:{name}")

    # --- events -------------------------------------------------------------------------------

    def seed(self, incidents: Iterable[Incident]) -> None:
        """Incidents already open when it starts (for reminders and escalations; no message now)."""
        for incident in incidents:
            self._open[incident.id] = incident
            self._severity[incident.id] = incident.severity

    def on_event(self, event: IncidentEvent) -> None:
        """The bus listener: queue it and return (detection never waits for a webhook)."""
        self._queue.put_nowait(event)

    def wake(self) -> None:
        """Look at the outbox now (after the clock moved, in tests; after a reload)."""
        for event in self._wake.values():
            event.set()

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued event is in the outbox (tests, the demo)."""
        await asyncio.wait_for(self._queue.join(), timeout)

    async def _process(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._handle(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad event never stops the alerts
                _log.opt(exception=exc).error(f"alerts: cannot handle {event.kind} of incident "
                                              f"#{event.incident.id}: {exc!r}")
            finally:
                self._queue.task_done()

    async def _handle(self, event: IncidentEvent) -> None:
        incident = event.incident
        previous = self._severity.get(incident.id)
        kind = transition(event, previous)
        self._severity[incident.id] = incident.severity
        if incident.is_open:
            self._open[incident.id] = incident
        else:
            self._open.pop(incident.id, None)
        if kind is None:
            return
        outbox = self._require()
        if kind == "reopened":
            withdrawn = await self._db(outbox.cancel, incident.id, "resolved")
            _log.info(f"incident #{incident.id} on {incident.target} reopened (flap {incident.flaps}): "
                      f"not paged again{'; its held resolved message withdrawn' if withdrawn else ''}")
            await self._refresh_counts()
            return
        now = self.clock()
        alert = compose(event, kind, host=self.host, now=now, snapshot=await self._snapshot())
        hold = self.config.watchdog.flap_window if kind == "resolved" else 0.0
        await self._enqueue(alert, now, not_before=now + hold, urgent=kind == "gave_up")

    async def _enqueue(self, alert: Alert, now: float, not_before: float, urgent: bool = False,
                       only: list[str] | None = None) -> list[str]:
        outbox = self._require()
        added = []
        for name, settings in self._settings.items():
            if only is not None and name not in only:
                continue
            if only is None and not urgent and not _passes(alert.severity, settings.min_severity):
                continue
            expires = now + settings.expire_after
            if await self._db(outbox.add, name, alert, now, not_before, expires):
                added.append(name)
                wake = self._wake.get(name)  # a sink being added by a reload has none yet: it looks at start
                if wake is not None:
                    wake.set()
        await self._refresh_counts()
        return added

    async def _snapshot(self) -> StatusSnapshot | None:
        if self.snapshot is None:
            return None
        try:
            return await asyncio.wait_for(self.snapshot(), _SNAPSHOT_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - an alert without the GPU line beats no alert
            self._once.problem("snapshot", f"alerts: no status snapshot for the GPU/canary lines ({exc!r})")
            return None

    # --- reminders ----------------------------------------------------------------------------

    async def _remind_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reminder_every)
            try:
                await self.remind()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                _log.opt(exception=exc).error(f"alerts: reminders failed: {exc!r}")

    async def remind(self) -> int:
        """Queue a reminder for every incident open longer than a sink's ``remind_every`` (once per period)."""
        now = self.clock()
        outbox = self._require()
        queued = 0
        for incident in list(self._open.values()):
            age = now - incident.opened_at.timestamp()
            for name, settings in self._settings.items():
                every = settings.remind_every
                if every <= 0 or age < every or not _passes(incident.severity, settings.min_severity):
                    continue
                key = alert_key(self.host, incident.id, f"reminder-{int(age // every)}")
                if await self._db(outbox.has_key, name, key):
                    continue
                change = TimelineEntry(at=to_datetime(now), kind="note", summary=incident.title)
                event = IncidentEvent(kind="updated", incident=incident, change=change)
                alert = compose(event, "reminder", host=self.host, now=now, snapshot=await self._snapshot(),
                                key=key)
                queued += len(await self._enqueue(alert, now, now, only=[name]))
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_EVERY_S
            await self._db(outbox.prune, now)
        return queued

    # --- delivery -----------------------------------------------------------------------------

    async def _worker(self, name: str) -> None:
        wake = self._wake[name]
        while self._running and name in self._settings:
            wake.clear()
            try:
                delay = await self._deliver_one(name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a worker never dies
                _log.opt(exception=exc).error(f"alert sink {name}: internal error: {exc!r}")
                delay = 5.0
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await wake.wait()
                except TimeoutError:
                    pass

    async def _deliver_one(self, name: str) -> float:
        """Deliver the oldest due message; returns how long to wait before looking again (0: at once)."""
        outbox = self._require()
        settings = self._settings.get(name)
        if settings is None:
            return _IDLE_POLL_S
        now = self.clock()
        row = await self._db(outbox.due, name, now)
        if row is None:
            later = await self._db(outbox.next_time, name)
            return _IDLE_POLL_S if later is None else max(0.01, min(_IDLE_POLL_S, later - now))
        if now >= row.expires_at:
            await self._db(outbox.finish, row.id, "expired", None, now)
            _log.warning(f"alert sink {name}: message {row.alert.event} of "
                         f"{_about(row.alert)} expired undelivered after {row.attempts} attempt(s)")
            await self._settle(name, row)
            return 0.0
        sink = self._sinks.get(name)
        if sink is None:  # its secret cannot be read: wait for a reload
            await self._db(outbox.defer, row.id, now + min(_IDLE_POLL_S, 60.0))
            await self._tell_others(name)
            return 0.0
        if row.alert.event != "test" and settings.rate_limit > 0:
            count, oldest = await self._db(outbox.delivered_since, name, now - settings.rate_window)
            if count >= settings.rate_limit and oldest is not None:
                until = oldest + settings.rate_window
                self._once.problem(f"rate:{name}", f"alert sink {name}: rate limit of {settings.rate_limit} per "
                                   f"{settings.rate_window:g} s reached; messages wait in the outbox")
                await self._db(outbox.defer, row.id, until)
                return 0.0
            self._once.ok(f"rate:{name}")
        await self._db(outbox.sending, row.id)
        from watchdog.notify.sinks import DeliveryError  # loaded already: there is a sink

        try:
            await asyncio.wait_for(sink.send(row.alert), settings.timeout * 4 + 70)
        except DeliveryError as exc:
            await self._failed(name, row, sink, exc)
        except TimeoutError:
            await self._failed(name, row, sink, DeliveryError("timed out", temporary=True))
        except Exception as exc:  # noqa: BLE001 - a sink bug: retried, never fatal
            await self._failed(name, row, sink, DeliveryError(f"internal error ({type(exc).__name__})"))
        else:
            done = self.clock()
            await self._db(outbox.delivered, row.id, done)
            health = self._health.setdefault(name, _Health())
            if health.state == "failing":
                _log.info(f"alert sink {name}: delivering again")
            health.state, health.last_ok_at = "ok", done
            health.failing_since, health.told = None, False
            self._once.ok(f"sink:{name}")
            _log.debug(f"alert sink {name}: delivered {row.alert.event} of {_about(row.alert)}")
            await self._settle(name, row)
        await self._refresh_counts()
        return 0.0

    async def _failed(self, name: str, row: Row, sink: Sink, exc: DeliveryError) -> None:
        now = self.clock()
        message = self.redactor.text(getattr(sink, "safe", lambda s: s)(exc.message))
        self._fail(name, message)
        attempts = row.attempts + 1
        if not exc.temporary:
            await self._db(self._require().finish, row.id, "failed", message, now)
            _log.error(f"alert sink {name}: message {row.alert.event} of {_about(row.alert)} refused: {message}; "
                       "not retried")
            await self._settle(name, row)
            return
        delay = exc.retry_after if exc.retry_after is not None else self.backoff.delay(attempts)
        await self._db(self._require().retry, row.id, message, now + delay)
        self._once.problem(f"sink:{name}", f"alert sink {name} ({row.alert.event} of {_about(row.alert)}): "
                           f"{message}; retrying (next in {math.ceil(delay)} s)")
        waiter = self._waiters.get((name, row.key))
        if waiter is not None and not waiter.done() and row.alert.event == "test" and now + delay >= row.expires_at:
            waiter.set_result(None)
        await self._tell_others(name)

    def _fail(self, name: str, message: str) -> None:
        health = self._health.setdefault(name, _Health())
        health.state, health.last_error, health.last_error_at = "failing", message, self.clock()
        if health.failing_since is None:
            health.failing_since = health.last_error_at

    async def _tell_others(self, name: str) -> None:
        """A sink failing for ``sink_alert_after``: one message through the other sinks, per episode."""
        health = self._health.get(name)
        if health is None or health.told or health.failing_since is None:
            return
        now = self.clock()
        if now - health.failing_since < self.sink_alert_after:
            return
        health.told = True
        others = [n for n in self._settings if n != name]
        waiting = self._counts.get(name, SinkCounts()).pending
        settings = self._settings.get(name)
        _log.error(f"alert sink {name} has not delivered for {now - health.failing_since:.0f} s "
                   f"({health.last_error}); {waiting} message(s) waiting"
                   + (f"; telling {', '.join(others)}" if others else ""))
        if others and settings is not None:
            alert = make_sink_alert(self.host, name, settings.kind, health.last_error or "failing",
                                    health.failing_since, now, waiting)
            await self._enqueue(alert, now, now, only=others)

    async def _settle(self, name: str, row: Row) -> None:
        waiter = self._waiters.pop((name, row.key), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- test and status ----------------------------------------------------------------------

    async def test(self, sink: str | None = None, timeout: float = 20.0) -> list[TestResult]:
        """Send a test alert through the outbox to one sink or all; wait for each to be delivered or fail."""
        if sink is not None and sink not in self._settings:
            known = ", ".join(self._settings) or "none configured"
            raise KeyError(f"no alert sink named {sink!r} (sinks: {known})")
        names = [sink] if sink is not None else list(self._settings)
        now = self.clock()
        key = f"{self.host}:test-{uuid.uuid4().hex[:12]}"
        loop = asyncio.get_running_loop()
        waiters = {}
        for name in names:
            waiters[name] = self._waiters[(name, key)] = loop.create_future()
            await self._enqueue(make_test_alert(self.host, key, now, name), now, now, only=[name])
        if waiters:
            await asyncio.wait(list(waiters.values()), timeout=timeout)
        results = []
        outbox = self._require()
        for name in names:
            self._waiters.pop((name, key), None)
            row = await self._db(outbox.get, name, key)
            delivered = row is not None and row.state == "delivered"
            if row is not None and row.state in ("pending", "sending") and not delivered:
                await self._db(outbox.finish, row.id, "expired", None, self.clock())  # never late
            error = None if delivered else (row.last_error if row and row.last_error else "not delivered in time")
            results.append(TestResult(sink=name, kind=self._settings[name].kind, delivered=delivered,
                                      attempts=row.attempts if row else 0, error=error))
        await self._refresh_counts()
        return results

    def sink_status(self) -> list[AlertSinkStatus]:
        """Each sink's health and outbox depth (for ``status`` and the metrics)."""
        out = []
        for name, settings in self._settings.items():
            health = self._health.get(name, _Health())
            counts = self._counts.get(name, SinkCounts())
            out.append(AlertSinkStatus(
                name=name,
                kind=settings.kind,
                state=health.state,  # type: ignore[arg-type]
                pending=counts.pending,
                delivered=counts.delivered,
                dropped=counts.failed + counts.expired,
                last_delivered_at=to_datetime(counts.last_delivered_at) if counts.last_delivered_at else None,
                last_error=self.redactor.optional(health.last_error),
                last_error_at=to_datetime(health.last_error_at) if health.last_error_at else None,
            ))
        return out

    @property
    def outbox_depth(self) -> int:
        return sum(c.pending for c in self._counts.values())

    async def rows(self, sink: str | None = None) -> list[Row]:
        """The outbox's rows (tests and diagnostics)."""
        return await self._db(self._require().rows, sink)

    # --- plumbing -----------------------------------------------------------------------------

    async def _refresh_counts(self) -> None:
        self._counts = await self._db(self._require().counts)

    def _require(self) -> Outbox:
        if self._outbox is None:
            raise RuntimeError("the notifier is not started")
        return self._outbox

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the notifier is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


async def _finish(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Let tasks end on their own (they watch a flag), then cancel what is left."""
    if not tasks:
        return
    _, left = await asyncio.wait(tasks, timeout=min(timeout, 2.0))
    for task in left:
        task.cancel()
    if left:
        _, stuck = await asyncio.wait(left, timeout=timeout)
        if stuck:
            _log.warning(f"alerts: {len(stuck)} task(s) did not stop in time")


def _passes(severity: str, least: str) -> bool:
    return SEVERITY_RANK.get(severity, 1) >= SEVERITY_RANK.get(least, 1)


def _about(alert: Alert) -> str:
    return f"incident #{alert.incident_id}" if alert.incident_id is not None else "a test"
