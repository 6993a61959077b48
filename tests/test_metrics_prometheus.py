"""Prometheus: /metrics over HTTP from the metrics service, parsed with prometheus_client's parser."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.infra.system import free_port
from tests.metrics_support import note, snapshot
from tests.paths import ROOT
from watchdog.config.model import Config, MetricsSettings, PrometheusSettings
from watchdog.incidents.events import EventBus
from watchdog.metrics.catalogue import METRICS
from watchdog.metrics.service import MetricsService
from watchdog.status.model import StatusSnapshot


def config_with(listen: str) -> Config:
    return Config(metrics=MetricsSettings(prometheus=PrometheusSettings(enabled=True, listen=listen)))


async def status() -> StatusSnapshot:
    return snapshot()


@pytest.fixture
async def service() -> AsyncIterator[MetricsService]:
    bus = EventBus()
    svc = MetricsService(config_with(f"127.0.0.1:{free_port()}"), status, bus)
    await svc.start()
    svc.bus = bus  # type: ignore[attr-defined] - for the test to publish on
    yield svc
    await svc.stop()


async def scrape(svc: MetricsService) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    listen = svc.config.metrics.prometheus.listen
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://{listen}/metrics", timeout=10)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def test_metrics_are_served_in_prometheus_naming(service: MetricsService) -> None:
    service.bus.publish([note("vllm", {"action": "restart", "result": "ok"})])  # type: ignore[attr-defined]
    s = await scrape(service)
    assert s["inference_watchdog_target_healthy"] == {(("target", "ollama"),): 1.0, (("target", "vllm"),): 0.0}
    assert s["inference_watchdog_canary_ttft_seconds"] == {(("target", "ollama"),): 0.25}
    assert s["inference_watchdog_canary_tokens_per_second"][(("target", "ollama"),)] == 80.0
    assert s["inference_watchdog_canary_failures_total"][(("target", "vllm"),)] == 1.0
    assert s["inference_watchdog_restarts_total"] == {(("target", "ollama"),): 0.0, (("target", "vllm"),): 1.0}
    assert s["inference_watchdog_open_incidents"][(("target", "vllm"),)] == 1.0
    assert s["inference_watchdog_gpu_utilization_percent"][(("gpu", "0"),)] == 42.0
    assert s["inference_watchdog_gpu_memory_used_bytes"][(("gpu", "0"),)] == 40780 * 1024 * 1024
    assert s["inference_watchdog_gpu_xid_errors_total"][(("gpu", "1"),)] == 2.0
    assert "inference_watchdog_alert_outbox_depth" not in s  # declared, no sample: alerts not configured


async def test_every_family_is_declared_with_its_type(service: MetricsService) -> None:
    listen = service.config.metrics.prometheus.listen
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://{listen}/metrics", timeout=10)).text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families == {m.prom_family: m.kind for m in METRICS}


async def test_the_grafana_dashboard_names_only_served_metrics(service: MetricsService) -> None:
    dashboard = json.loads((ROOT / "config" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    named = {name for e in exprs for name in re.findall(r"inference_watchdog_\w+", e)}
    service.bus.publish([note("vllm", {"action": "unload", "result": "ok"})])  # type: ignore[attr-defined]
    served = set(await scrape(service)) | {m.prom_name for m in METRICS if m.scope == "host"}
    assert named and named <= served, named - served
    assert len(named) >= 12  # health, canaries, incidents, actions and every GPU metric are on it


async def test_a_taken_port_leaves_the_endpoint_off_and_a_reload_moves_it(caplog: pytest.LogCaptureFixture) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    svc = MetricsService(config_with(f"127.0.0.1:{taken.getsockname()[1]}"), status)
    try:
        await svc.start()  # logged, not raised: the daemon keeps watching
        assert "prometheus" not in svc.exporters
        await svc.reload(config_with(f"127.0.0.1:{free_port()}"))
        assert "prometheus" in svc.exporters
        assert (await scrape(svc))["inference_watchdog_target_healthy"]
    finally:
        await svc.stop()
        taken.close()
