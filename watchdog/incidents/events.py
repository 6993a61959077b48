"""Where actions, alerts and metrics attach: incident events and their listeners.

A listener is any callable taking an :class:`IncidentEvent` (``opened``,
``updated``, ``closed``, with the incident after the change and the change
itself). It may be a plain function (called inline: keep it quick) or return an
awaitable (run as its own task on the daemon's loop, so a slow webhook never
holds up the next finding). Either way, a listener that raises is logged and
forgotten: it can never break the incident manager or the other listeners.
Events are published after the manager has applied the change and written it
to the store (or, when the store cannot be written, kept it to retry: a hang is
still acted on when the disk is full).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable

from loguru import logger

from watchdog.incidents.model import IncidentEvent

Listener = Callable[[IncidentEvent], "Awaitable[None] | None"]
_log = logger.bind(component="incidents")


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns a function that removes it again."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def publish(self, events: Iterable[IncidentEvent]) -> None:
        for event in events:
            for listener in list(self._listeners):
                self._deliver(listener, event)

    def _deliver(self, listener: Listener, event: IncidentEvent) -> None:
        name = getattr(listener, "__qualname__", repr(listener))
        try:
            result = listener(event)
        except Exception as exc:  # noqa: BLE001 - a listener never breaks the manager
            _log.opt(exception=exc).error(f"incident listener {name} failed on {event.kind} #{event.incident.id}: {exc!r}")
            return
        if not inspect.isawaitable(result):
            return
        try:
            task = asyncio.ensure_future(_guarded(result, name, event))
        except RuntimeError:
            # No running loop (a synchronous caller): an async listener cannot run here.
            if inspect.iscoroutine(result):
                result.close()
            _log.error(f"incident listener {name} is async but no event loop is running; event dropped")
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the async listeners still running (at shutdown, and in tests)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


async def _guarded(awaitable: Awaitable[None], name: str, event: IncidentEvent) -> None:
    try:
        await awaitable
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a listener never breaks the manager
        _log.opt(exception=exc).error(f"incident listener {name} failed on {event.kind} #{event.incident.id}: {exc!r}")
