"""CloudWatch against a real API stand-in (moto's server): metrics read back, dashboards, alarms, outages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from loguru import logger

from tests.daemon_support import ctl
from tests.infra.moto_server import MotoServer, moto_server  # noqa: F401 - fixture
from tests.infra.system import free_port
from tests.metrics_support import snapshot
from watchdog.config.model import CloudWatchSettings
from watchdog.metrics.cloudwatch import CloudWatchExporter
from watchdog.metrics.snapshot import MetricsSnapshot, build_metrics

NS = "InferenceWatchdog"


def read_back(client: Any, host: str, metric: str, dims: dict[str, str], stat: str = "Maximum") -> list[float]:
    """GetMetricData over the last hour for one stream."""
    now = datetime.now(UTC)
    answer = client.get_metric_data(
        MetricDataQueries=[{"Id": "m", "MetricStat": {
            "Metric": {"Namespace": NS, "MetricName": metric,
                       "Dimensions": [{"Name": "Host", "Value": host}] + [{"Name": k, "Value": v}
                                                                         for k, v in dims.items()]},
            "Period": 60, "Stat": stat}}],
        StartTime=now - timedelta(hours=1), EndTime=now + timedelta(minutes=5))
    return list(answer["MetricDataResults"][0]["Values"])


def provider(host: str):  # type: ignore[no-untyped-def]
    async def snap() -> MetricsSnapshot:
        status = snapshot()
        fresh = status.model_copy(update={"generated_at": datetime.now(UTC)})
        return build_metrics(fresh, {"vllm": {"restart": 2, "unload": 1}}, host=host)
    return snap


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)


async def test_put_metrics_read_back_with_dimensions_and_values(moto_server: MotoServer) -> None:
    settings = CloudWatchSettings(enabled=True, endpoint_url=moto_server.url, interval=60)
    exporter = CloudWatchExporter(settings, "host-readback", provider("host-readback"))
    await exporter.start()
    try:
        await exporter.collect()
        await exporter.flush()
    finally:
        await exporter.stop()
    assert exporter.sent >= 20 and not exporter.buffer and exporter.dropped == 0
    client = moto_server.client()
    assert read_back(client, "host-readback", "TargetHealthy", {"Target": "ollama"}) == [1.0]
    assert read_back(client, "host-readback", "TargetHealthy", {"Target": "vllm"}) == [0.0]
    assert read_back(client, "host-readback", "CanaryTTFT", {"Target": "ollama"}) == [0.25]
    assert read_back(client, "host-readback", "Restarts", {"Target": "vllm"}, "Sum") == [2.0]
    assert read_back(client, "host-readback", "GPUMemoryUsed", {"GPU": "0"}) == [40780.0]
    assert read_back(client, "host-readback", "XidErrors", {"GPU": "1"}, "Sum") == [2.0]
    assert read_back(client, "host-readback", "GPUUtilization", {"Target": "ollama"}) == []  # no such stream
    listed = client.list_metrics(Namespace=NS, Dimensions=[{"Name": "Host", "Value": "host-readback"}])["Metrics"]
    assert {m["MetricName"] for m in listed} >= {"TargetHealthy", "CanaryTokensPerSecond", "GPUPower", "Unloads"}
    for m in listed:
        names = [d["Name"] for d in m["Dimensions"]]
        assert "Host" in names and len(names) == 2 and ("Target" in names or "GPU" in names)


def _cbor_text(text: str) -> bytes:
    data = text.encode()
    return (bytes([0x60 + len(data)]) if len(data) < 24 else bytes([0x78, len(data)])) + data


THROTTLING_BODY = b"\xa2" + _cbor_text("__type") + _cbor_text("Throttling") + _cbor_text("message") + \
    _cbor_text("Rate exceeded")


def throttling_answer(request: web.Request) -> web.Response:
    """400 Throttling in the protocol the client spoke (boto3 picks CBOR, JSON or query per version)."""
    query_error = {"x-amzn-query-error": "Throttling;Sender"}
    if request.headers.get("smithy-protocol") == "rpc-v2-cbor":
        return web.Response(status=400, body=THROTTLING_BODY, headers={
            "Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor", **query_error})
    if "X-Amz-Target" in request.headers:
        return web.Response(status=400, body=json.dumps({"__type": "Throttling", "message": "Rate exceeded"}),
                            headers={"Content-Type": "application/x-amz-json-1.0", **query_error})
    return web.Response(status=400, content_type="text/xml", text=(
        "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>"
        "</Error><RequestId>1</RequestId></ErrorResponse>"))


class ThrottlingProxy:
    """In front of moto: answers 400 Throttling (as CloudWatch does) while ``throttle``, else forwards."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.throttle = True
        self.throttled = 0
        self.forwarded = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.throttle:
            self.throttled += 1
            return throttling_answer(request)
        self.forwarded += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length", "content-encoding")}  # aiohttp unzipped it
        async with ClientSession() as session, session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers) as answer:
            payload = await answer.read()
            keep = {k: v for k, v in answer.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection")}
            return web.Response(status=answer.status, body=payload, headers=keep)


@pytest.fixture
async def throttling_proxy(moto_server: MotoServer) -> AsyncIterator[ThrottlingProxy]:
    proxy = ThrottlingProxy(moto_server.url)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", proxy.port).start()
    yield proxy
    await runner.cleanup()


async def test_throttling_is_survived_with_a_bounded_buffer(moto_server: MotoServer,
                                                            throttling_proxy: ThrottlingProxy,
                                                            log_lines: list[str]) -> None:
    settings = CloudWatchSettings(enabled=True, endpoint_url=throttling_proxy.url, interval=1, buffer=100)
    exporter = CloudWatchExporter(settings, "host-throttled", provider("host-throttled"), max_backoff=2)
    await exporter.start()
    exporter._task.cancel()  # type: ignore[union-attr] - the test drives the rounds itself
    per_round = len(list(await provider("x")()))
    for _ in range(8):
        await exporter.collect()
        await exporter.flush()
    assert throttling_proxy.throttled >= 1 and exporter.sent == 0
    assert len(exporter.buffer) == 100  # bounded: the newest kept
    assert exporter.dropped == 8 * per_round - 100
    assert sum("dropping the oldest" in line for line in log_lines) == 1  # logged once, not per round
    assert sum("PutMetricData failed (Throttling" in line for line in log_lines) == 1

    throttling_proxy.throttle = False
    deadline = asyncio.get_running_loop().time() + 60
    while exporter.buffer and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)  # the backoff passes, then the buffer goes out
        await exporter.flush()
    await exporter.stop()
    assert not exporter.buffer, (exporter._failing, throttling_proxy.forwarded)
    assert exporter.sent == 100 and throttling_proxy.forwarded >= 1
    assert any("sending again" in line for line in log_lines)
    values = read_back(moto_server.client(), "host-throttled", "GPUMemoryUsed", {"GPU": "0"}, "SampleCount")
    assert values and values[0] >= 1


async def test_an_unreachable_endpoint_is_survived_with_a_bounded_buffer(log_lines: list[str]) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = CloudWatchSettings(enabled=True, endpoint_url=closed, interval=1, buffer=100, region="us-east-1")
    exporter = CloudWatchExporter(settings, "host-offline", provider("host-offline"), max_backoff=1)
    await exporter.start()
    exporter._task.cancel()  # type: ignore[union-attr]
    for _ in range(12):
        await exporter.collect()
        await exporter.flush()
        exporter._next_try = 0.0  # try every round: each attempt fails the same way
    await exporter.stop(flush_timeout=20)
    assert len(exporter.buffer) == 100 and exporter.sent == 0
    assert exporter.dropped > 100
    assert sum("EndpointConnectionError" in line for line in log_lines) == 1
    assert sum("dropping the oldest" in line for line in log_lines) == 1


def _config(tmp_path: Path, moto: MotoServer, targets: list[str]) -> Path:
    lines = ["[watchdog]", f'state_dir = "{tmp_path / "state"}"', f'control_socket = "{tmp_path / "c.sock"}"',
             "[policy]", 'mode = "observe"',
             "[metrics]", 'host = "host-cli"', "[metrics.cloudwatch]", f'endpoint_url = "{moto.url}"',
             'region = "us-east-1"']
    for name in targets:
        lines += ["[[targets]]", f'name = "{name}"', 'kind = "ollama"', 'url = "http://127.0.0.1:11434"']
    path = tmp_path / "w.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_dashboard_is_put_and_read_back(tmp_path: Path, moto_server: MotoServer) -> None:
    config = _config(tmp_path, moto_server, ["ollama", "vllm-big", "llama"])
    printed = ctl(config, "cloudwatch", "dashboard", "--host", "i-1", "--host", "nas")
    assert printed.returncode == 0, printed.stderr
    assert "widgets" in json.loads(printed.stdout)
    assert "DashboardA" not in [d["DashboardName"] for d in moto_server.client().list_dashboards()["DashboardEntries"]]
    result = ctl(config, "cloudwatch", "dashboard", "--host", "i-1", "--host", "nas", "--name", "DashboardA",
                 "--apply")
    assert result.returncode == 0, result.stderr
    body = json.loads(moto_server.client().get_dashboard(DashboardName="DashboardA")["DashboardBody"])
    assert body == json.loads(result.stdout)
    text = json.dumps(body)
    for name in ("ollama", "vllm-big", "llama", "i-1", "nas"):
        assert f'"{name}"' in text, name


def test_alarms_are_created_and_listed(tmp_path: Path, moto_server: MotoServer) -> None:
    client = moto_server.client()
    client.put_metric_data(Namespace=NS, MetricData=[  # the host has reported GPUs 0 and 3
        {"MetricName": "GPUMemoryUsedPercent", "Value": 50.0, "Unit": "Percent",
         "Dimensions": [{"Name": "Host", "Value": "host-cli"}, {"Name": "GPU", "Value": str(i)}]} for i in (0, 3)])
    config = _config(tmp_path, moto_server, ["ollama"])
    topic = "arn:aws:sns:us-east-1:123456789012:ops"
    result = ctl(config, "cloudwatch", "alarms", "--apply", "--sns-topic", topic, "--periods", "4")
    assert result.returncode == 0, result.stderr
    alarms = {a["AlarmName"]: a for a in client.describe_alarms(AlarmNamePrefix="InferenceWatchdog host-cli")
              ["MetricAlarms"]}
    assert set(alarms) == {
        "InferenceWatchdog host-cli ollama unhealthy",
        "InferenceWatchdog host-cli GPU 0 memory above 95%", "InferenceWatchdog host-cli GPU 0 XID error",
        "InferenceWatchdog host-cli GPU 3 memory above 95%", "InferenceWatchdog host-cli GPU 3 XID error",
    }
    unhealthy = alarms["InferenceWatchdog host-cli ollama unhealthy"]
    assert unhealthy["EvaluationPeriods"] == 4 and unhealthy["AlarmActions"] == [topic]
    assert alarms["InferenceWatchdog host-cli GPU 3 memory above 95%"]["Threshold"] == 95.0
