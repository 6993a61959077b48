"""The metrics room: one snapshot source, the action counter on the bus, the enabled exporters.

A daemon component with ``start``/``stop``/``reload``: it asks the daemon for its status
snapshot (``status``), counts actions from ``Incidents.bus``, and runs Prometheus,
CloudWatch and EMF as configured. An exporter that cannot start (a port in use, boto3
missing, no region) is logged and left off; the daemon keeps running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from watchdog.config import Config
from watchdog.incidents.events import EventBus
from watchdog.metrics.actions import ActionCounter
from watchdog.metrics.host import HostIdentity, resolve_host
from watchdog.metrics.snapshot import MetricsSnapshot, build_metrics
from watchdog.status.model import StatusSnapshot

if TYPE_CHECKING:
    from watchdog.listener import Hub

_log = logger.bind(component="metrics")


class MetricsService:
    """A daemon component (``watchdog.listener.Component``): start, reload, stop."""

    name = "metrics"

    def __init__(
        self,
        config: Config,
        status: Callable[[], Awaitable[StatusSnapshot]],
        bus: EventBus | None = None,
        *,
        outbox_depth: Callable[[], int | None] | None = None,
    ) -> None:
        self.config = config
        self._status = status
        self._bus = bus
        self._outbox_depth = outbox_depth
        self.actions = ActionCounter()
        self.identity: HostIdentity | None = None
        self.exporters: dict[str, Any] = {}
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def enabled(self) -> bool:
        m = self.config.metrics
        return m.prometheus.enabled or m.cloudwatch.enabled or m.emf.enabled

    async def snapshot(self) -> MetricsSnapshot:
        status = await self._status()
        host = self.identity.host if self.identity else (self.config.metrics.host or None)
        depth = self._outbox_depth() if self._outbox_depth is not None else None
        return build_metrics(status, self.actions.snapshot(), host=host, outbox_depth=depth)

    async def start(self) -> None:
        if self._bus is not None and self._unsubscribe is None:
            self._unsubscribe = self._bus.subscribe(self.actions)
        await self._start_exporters()

    async def stop(self) -> None:
        await self._stop_exporters()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def reload(self, config: Config) -> None:
        """Restart the exporters when ``[metrics]`` changed; the action counts carry on."""
        changed = config.metrics != self.config.metrics
        self.config = config
        if changed:
            _log.info("metrics: settings changed; restarting the exporters")
            await self._stop_exporters()
            self.identity = None
            await self._start_exporters()

    async def _start_exporters(self) -> None:
        m = self.config.metrics
        if (m.cloudwatch.enabled or m.emf.enabled) and self.identity is None:
            self.identity = await asyncio.to_thread(resolve_host, m.host)
        if m.prometheus.enabled:
            from watchdog.metrics.prometheus import PrometheusEndpoint

            await self._try("prometheus", lambda: PrometheusEndpoint(m.prometheus.listen, self.snapshot))
        if m.cloudwatch.enabled:
            assert self.identity is not None

            def cloudwatch() -> Any:
                from watchdog.metrics.cloudwatch import CloudWatchExporter

                return CloudWatchExporter(m.cloudwatch, self.identity.host, self.snapshot,  # type: ignore[union-attr]
                                          region=self.identity.region)  # type: ignore[union-attr]

            await self._try("cloudwatch", cloudwatch)
        if m.emf.enabled:
            assert self.identity is not None
            from watchdog.metrics.emf import EmfWriter

            await self._try("emf", lambda: EmfWriter(m.emf, self.identity.host, self.snapshot))  # type: ignore[union-attr]

    async def _try(self, name: str, make: Callable[[], Any]) -> None:
        try:
            exporter = make()
            await exporter.start()
        except ImportError as exc:
            _log.error(f"{name}: cannot start: {exc} (install inference-watchdog[cloudwatch]); metrics not exported")
        except Exception as exc:  # noqa: BLE001 - a metrics exporter never stops the daemon
            _log.error(f"{name}: cannot start: {exc}; metrics not exported there")
        else:
            self.exporters[name] = exporter

    async def _stop_exporters(self) -> None:
        exporters, self.exporters = self.exporters, {}
        for name, exporter in exporters.items():
            try:
                await exporter.stop()
            except Exception as exc:  # noqa: BLE001
                _log.warning(f"{name}: stop failed: {exc!r}")


def make_metrics(hub: Hub) -> MetricsService:
    """The daemon builder's factory (a ``watchdog.listener.ListenerFactory``): metrics from the hub's status."""
    return MetricsService(hub.config, hub.status, hub.incidents.bus)
