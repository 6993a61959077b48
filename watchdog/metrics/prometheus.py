"""Prometheus: ``/metrics`` served by the daemon, a custom Collector over the snapshot.

The endpoint runs on the daemon's own loop (aiohttp): each scrape takes a fresh snapshot,
hands it to the collector and lets prometheus_client write the exposition text. Every
family is always declared (HELP and TYPE), even with no sample yet, so dashboards and
alert rules can name it from the start.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.core import Metric as PromMetric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from watchdog.metrics.catalogue import METRICS
from watchdog.metrics.snapshot import MetricsSnapshot

_log = logger.bind(component="metrics")


class SnapshotCollector:
    """A prometheus_client collector that describes one snapshot."""

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[PromMetric]:
        for metric in METRICS:
            samples = [s for s in self.snapshot if s.metric is metric]
            label_names = sorted({k for s in samples for k in s.labels()}) or (
                ["target"] if metric.scope == "target" else ["gpu"] if metric.scope == "gpu" else [])
            family_cls = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
            family = family_cls(metric.prom_name, metric.help, labels=label_names)
            for sample in samples:
                labels = sample.labels()
                family.add_metric([labels[k] for k in label_names], sample.value * metric.prom_scale)
            yield family


def exposition(snapshot: MetricsSnapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))  # type: ignore[arg-type]
    return generate_latest(registry)


class PrometheusEndpoint:
    """``GET /metrics`` on ``listen`` (host:port)."""

    def __init__(self, listen: str, snapshot: Callable[[], Awaitable[MetricsSnapshot]]) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self._snapshot = snapshot
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        _log.info(f"prometheus: serving /metrics on {self.host}:{self.port}")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = exposition(await self._snapshot())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
