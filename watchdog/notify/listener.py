"""The notifier as a daemon listener (``watchdog.listener.Component``): ``make_notifier(hub)``.

It subscribes :meth:`Notifier.on_event` to ``hub.incidents.bus`` (it only
queues), takes over the incidents already open when it starts (the daemon
starts listeners after the incidents, so carried-over incidents are seeded,
not replayed), and offers itself as ``hub.alerts`` for ``status`` (each sink's
health and outbox depth) and ``watchdogctl alert test``. With no
``[[alerts]]`` it still runs (an empty outbox, no workers), so a reload that
adds a sink needs no restart.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from watchdog.notify.notifier import Notifier, TestResult
from watchdog.redact import Redactor
from watchdog.status.model import AlertSinkStatus

if TYPE_CHECKING:
    from watchdog.config.model import Config
    from watchdog.listener import Hub


class NotifyListener:
    """Component for the daemon: alerts about incident transitions."""

    name = "notify"

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        config = hub.config
        self.notifier = Notifier(config, config.watchdog.state_dir, Redactor.from_config(config), _host(hub),
                                 snapshot=hub.status)
        self._unsubscribe: Callable[[], None] | None = None

    async def start(self) -> None:
        await self.notifier.start()
        self.notifier.seed(self.hub.incidents.open_incidents.values())
        self._unsubscribe = self.hub.incidents.bus.subscribe(self.notifier.on_event)
        self.hub.alerts = self

    async def reload(self, config: Config) -> None:
        await self.notifier.reload(config, Redactor.from_config(config))

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.hub.alerts = None
        await self.notifier.stop()

    # --- what status and the control socket use (hub.alerts) ---------------------------------------

    def sink_status(self) -> list[AlertSinkStatus]:
        return self.notifier.sink_status()

    async def test(self, sink: str | None, timeout: float) -> list[TestResult]:
        return await self.notifier.test(sink, timeout)


def make_notifier(hub: Hub) -> NotifyListener:
    """The listener factory for ``watchdog/daemon/builder.py``'s LISTENERS."""
    return NotifyListener(hub)


def _host(hub: Hub) -> str:
    """The host name alerts carry (and idempotency keys contain): the trace header's."""
    return hub.header.host or hub.config.watchdog.host or socket.gethostname() or os.uname().nodename
