"""Metrics from status snapshots, action counts from the bus, EMF lines, batches, dashboards (pure parts)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tests.metrics_support import AT, note, records, snapshot
from watchdog.incidents.events import EventBus
from watchdog.metrics.actions import ActionCounter
from watchdog.metrics.catalogue import BY_NAME, METRICS
from watchdog.metrics.cloudwatch import MAX_BYTES_PER_CALL, batches, to_datum
from watchdog.metrics.dashboard import AlarmSpec, DashboardSpec, alarm_definitions, dashboard_body
from watchdog.metrics.emf import emf_lines
from watchdog.metrics.snapshot import Deltas, build_metrics

M = BY_NAME


def test_snapshot_turns_targets_and_gpus_into_metrics() -> None:
    actions = ActionCounter()
    actions(note("vllm", {"action": "restart", "result": "ok"}))
    metrics = build_metrics(snapshot(), actions.snapshot())
    assert metrics.host == "box-1"
    v = metrics.value
    assert v(M["TargetHealthy"], target="ollama") == 1.0
    assert v(M["TargetHealthy"], target="vllm") == 0.0  # hang raised
    assert v(M["CanaryTTFT"], target="ollama") == 0.25
    assert v(M["CanaryTokensPerSecond"], target="ollama") == 80.0
    assert v(M["CanaryTTFT"], target="vllm") is None  # its last canary failed: no latency to report
    assert v(M["CanaryFailures"], target="ollama") == 1.0
    assert v(M["CanaryFailures"], target="vllm") == 1.0
    assert v(M["OpenIncidents"], target="vllm") == 1.0 and v(M["OpenIncidents"], target="ollama") == 0.0
    assert v(M["Restarts"], target="vllm") == 1.0 and v(M["Restarts"], target="ollama") == 0.0
    assert v(M["Unloads"], target="vllm") == 0.0
    assert v(M["GPUUtilization"], gpu=0) == 42.0
    assert v(M["GPUMemoryUsed"], gpu=0) == 40780.0
    assert v(M["GPUMemoryUsedPercent"], gpu=0) == pytest.approx(50.0, abs=0.01)
    assert v(M["GPUMemoryUsedPercent"], gpu=1) == pytest.approx(96.86, abs=0.01)
    assert v(M["GPUTemperature"], gpu=0) == 61.0 and v(M["GPUPower"], gpu=0) == 310.5
    assert v(M["XidErrors"], gpu=1) == 2.0 and v(M["XidErrors"], gpu=0) == 0.0
    assert v(M["AlertOutboxDepth"]) is None  # no alerts: no stream
    assert build_metrics(snapshot(), host="i-0abc", outbox_depth=3).value(M["AlertOutboxDepth"]) == 3.0


def test_outbox_depth_is_summed_from_the_alert_sinks_in_status() -> None:
    from types import SimpleNamespace

    status = snapshot().model_copy(update={"alerts": [SimpleNamespace(name="slack", pending=2),
                                                      SimpleNamespace(name="mail", pending=1)]})
    assert build_metrics(status).value(M["AlertOutboxDepth"]) == 3.0
    assert build_metrics(snapshot().model_copy(update={"alerts": []})).value(M["AlertOutboxDepth"]) is None


def test_unobserved_values_are_left_out_not_zero() -> None:
    latest = records()
    latest.gpus.clear()
    metrics = build_metrics(snapshot(latest))
    assert metrics.value(M["GPUUtilization"], gpu=0) is None
    assert metrics.value(M["GPUMemoryUsedPercent"], gpu=0) is None


def test_xid_count_is_all_of_them_not_the_last_twenty() -> None:
    from watchdog.trace.records import Xid

    latest = records()
    latest.add_all([Xid(t=60.0 + i, index=0, xid=48) for i in range(250)])  # more than status keeps
    assert build_metrics(snapshot(latest)).value(M["XidErrors"], gpu=0) == 250.0


def test_action_counter_counts_only_actions_carried_out() -> None:
    counter = ActionCounter()
    bus = EventBus()
    bus.subscribe(counter)
    bus.publish([
        note("ollama", {"action": "restart", "result": "ok"}),
        note("ollama", {"action": "restart", "result": "failed"}),
        note("ollama", {"action": "restart", "result": "would"}),  # dry-run
        note("ollama", {"action": "unload", "result": "skipped"}),
        note("ollama", {"action": "unload"}),  # a "started" line without a result
        note("ollama", {"action": "unload", "result": "timeout"}),
        note("ollama", {"action": "restart", "result": "interrupted"}),  # the previous run's, noted at start
        note("ollama", {"action": "kill_orphans", "result": "ok"}),
        note("ollama", {"alert": "slack", "result": "ok"}),  # an alert's note, not an action
        note("ollama", {"action": "restart", "result": "ok"}, kind="raised"),
    ])
    assert counter.count("ollama", "restart") == 2
    assert counter.count("ollama", "unload") == 1
    assert counter.snapshot() == {"ollama": {"restart": 2, "unload": 1, "kill_orphans": 1}}


def test_counters_become_per_interval_deltas() -> None:
    deltas = Deltas()
    first = {s.key: s.value for s in deltas.apply(build_metrics(snapshot()))}
    latest = records()
    from watchdog.trace.records import Canary, Xid

    latest.add_all([Canary(t=99.9, target="vllm", ok=False, error="timeout"), Xid(t=99.9, index=1, xid=79)])
    second = {s.key: s.value for s in deltas.apply(build_metrics(snapshot(latest)))}
    assert first[("XidErrors", None, 1)] == 2.0 and second[("XidErrors", None, 1)] == 1.0
    assert first[("CanaryFailures", "vllm", None)] == 1.0 and second[("CanaryFailures", "vllm", None)] == 1.0
    assert second[("CanaryFailures", "ollama", None)] == 0.0
    assert second[("GPUUtilization", None, 0)] == 42.0  # gauges pass as they are


def test_datums_carry_host_and_target_or_gpu_dimensions() -> None:
    metrics = build_metrics(snapshot(), host="i-0abc")
    datums = [to_datum(s, metrics.host, metrics.at, high_resolution=True) for s in metrics]
    by = {(d["MetricName"], tuple((x["Name"], x["Value"]) for x in d["Dimensions"])): d for d in datums}
    healthy = by[("TargetHealthy", (("Host", "i-0abc"), ("Target", "ollama")))]
    assert healthy["Value"] == 1.0 and healthy["StorageResolution"] == 1 and healthy["Unit"] == "None"
    assert by[("GPUMemoryUsed", (("Host", "i-0abc"), ("GPU", "0")))]["Unit"] == "Megabytes"
    assert all(d["Dimensions"][0] == {"Name": "Host", "Value": "i-0abc"} for d in datums)
    assert {len(d["Dimensions"]) for d in datums} == {2}


def test_batches_stay_within_the_call_limits() -> None:
    datum = to_datum(next(iter(build_metrics(snapshot()))), "h", AT, False)
    small = batches([dict(datum) for _ in range(2500)])
    assert [len(b) for b in small] == [1000, 1000, 500]
    big = dict(datum, Dimensions=[{"Name": "Host", "Value": "h" * 250}, {"Name": "Target", "Value": "t" * 250}])
    split = batches([dict(big) for _ in range(1000)])
    assert len(split) > 1 and sum(len(b) for b in split) == 1000
    assert all(_wire_bytes(b, protocol) <= MAX_BYTES_PER_CALL
               for b in split for protocol in ("query", "json", "smithy-rpc-v2-cbor"))
    assert _wire_bytes(split[0], "query") > MAX_BYTES_PER_CALL / 3  # not needlessly small either


def _wire_bytes(batch: list[dict], protocol: str) -> int:  # type: ignore[type-arg]
    """The request body botocore would send for the batch, in each protocol CloudWatch speaks."""
    from urllib.parse import urlencode

    import botocore.serialize
    import botocore.session

    operation = botocore.session.get_session().get_service_model("cloudwatch").operation_model("PutMetricData")
    body = botocore.serialize.create_serializer(protocol).serialize_to_request(
        {"Namespace": "InferenceWatchdog", "MetricData": batch}, operation)["body"]
    return len(urlencode(body).encode()) if isinstance(body, dict) else len(body)


def test_emf_lines_follow_the_embedded_metric_format() -> None:
    metrics = build_metrics(snapshot(), host="i-0abc")
    docs = emf_lines(list(metrics), metrics.host, 1_700_000_000_000, "InferenceWatchdog")
    assert len(docs) == 4  # ollama, vllm, GPU 0, GPU 1
    for doc in docs:
        directive = doc["_aws"]["CloudWatchMetrics"][0]
        assert doc["_aws"]["Timestamp"] == 1_700_000_000_000
        assert directive["Namespace"] == "InferenceWatchdog"
        for key in directive["Dimensions"][0]:
            assert isinstance(doc[key], str)  # every dimension is a member of the document
        for definition in directive["Metrics"]:
            assert isinstance(doc[definition["Name"]], float)
            assert definition["Unit"] == BY_NAME[definition["Name"]].unit
    ollama = next(d for d in docs if d.get("Target") == "ollama")
    assert ollama["Host"] == "i-0abc" and ollama["TargetHealthy"] == 1.0 and ollama["CanaryTTFT"] == 0.25


def test_dashboard_draws_every_host_and_target() -> None:
    body = dashboard_body(DashboardSpec("InferenceWatchdog", "eu-west-1", ["i-1", "nas"], ["ollama", "vllm"]))
    text = json.dumps(body)
    titles = [w["properties"]["title"] for w in body["widgets"]]
    assert any("healthy" in t.lower() for t in titles) and any("tokens/s" in t for t in titles)
    health = body["widgets"][0]["properties"]["metrics"]
    assert {(line[3], line[5]) for line in health} == {(h, t) for h in ("i-1", "nas") for t in ("ollama", "vllm")}
    assert 'Host=\\"nas\\"' in text and "GPUUtilization" in text and "Restarts" in text
    names = {line[1] for w in body["widgets"] for line in w["properties"]["metrics"] if isinstance(line[0], str)}
    assert names <= set(BY_NAME)


def test_alarms_cover_health_gpu_memory_and_xids() -> None:
    alarms = alarm_definitions(AlarmSpec("InferenceWatchdog", ["i-1"], ["ollama"], {"i-1": [0, 1]},
                                         unhealthy_periods=5, sns_topic="arn:aws:sns:eu-west-1:1:ops"))
    by_metric: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for alarm in alarms:
        by_metric.setdefault(alarm["MetricName"], []).append(alarm)
        assert alarm["AlarmActions"] == ["arn:aws:sns:eu-west-1:1:ops"]
    assert by_metric["TargetHealthy"][0]["EvaluationPeriods"] == 5
    assert by_metric["TargetHealthy"][0]["ComparisonOperator"] == "LessThanThreshold"
    assert [a["Threshold"] for a in by_metric["GPUMemoryUsedPercent"]] == [95.0, 95.0]
    assert len(by_metric["XidErrors"]) == 2 and by_metric["XidErrors"][0]["Statistic"] == "Sum"
    assert len({a["AlarmName"] for a in alarms}) == len(alarms)


def test_catalogue_names_are_unique_and_prometheus_style() -> None:
    assert len({m.name for m in METRICS}) == len(METRICS)
    assert len({m.prom_name for m in METRICS}) == len(METRICS)
    for metric in METRICS:
        assert metric.prom_name.startswith("inference_watchdog_")
        assert metric.prom_name.endswith("_total") == (metric.kind == "counter")


def test_imdsv2_gives_the_instance_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """A local IMDSv2 stand-in (token PUT, then GETs with the token) names the host."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from watchdog.metrics.host import resolve_host

    class Imds(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            self._answer(200 if ok else 400, "tok")

        def do_GET(self) -> None:
            if self.headers.get("X-aws-ec2-metadata-token") != "tok":
                self._answer(401, "")
            else:
                self._answer(200, {"/latest/meta-data/instance-id": "i-0123456789abcdef0",
                                   "/latest/meta-data/placement/region": "eu-central-1"}.get(self.path, ""))

        def _answer(self, code: int, body: str) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Imds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        identity = resolve_host("")
        assert (identity.host, identity.region, identity.on_ec2) == ("i-0123456789abcdef0", "eu-central-1", True)
        assert resolve_host("nas-1").host == "nas-1"  # configured wins
        server.shutdown()
        server.server_close()
        off = resolve_host("", timeout=0.5)  # nothing answers: the host name
        assert off.on_ec2 is False and off.host and off.region is None
    finally:
        server.server_close()


def test_generated_at_is_the_timestamp() -> None:
    metrics = build_metrics(snapshot())
    assert metrics.at == datetime.fromtimestamp(1_800_000_100.0, tz=UTC)


def test_the_readme_lists_every_metric() -> None:
    from tests.paths import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Metrics"):readme.index("## What the watchdog observes")]
    for metric in METRICS:
        row = next((line for line in section.splitlines() if line.startswith(f"| `{metric.name}` |")), None)
        assert row is not None, metric.name
        assert metric.unit in row and f"`{metric.prom_name}" in row, row


async def test_emf_writer_appends_lines_and_logs_an_unwritable_file_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from loguru import logger

    from watchdog.config.model import EmfSettings
    from watchdog.metrics.emf import EmfWriter

    async def snap():  # type: ignore[no-untyped-def]
        return build_metrics(snapshot(), host="nas-1")

    path = tmp_path / "emf" / "m.jsonl"
    writer = EmfWriter(EmfSettings(enabled=True, path=str(path)), "nas-1", snap)
    await writer.write_once()
    await writer.write_once()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 8  # two rounds of 2 targets + 2 GPUs
    gpu1 = [d for d in lines if d.get("GPU") == "1"]
    assert [d["XidErrors"] for d in gpu1] == [2.0, 0.0]  # a delta per line, not the running count

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="INFO")
    try:
        blocked = tmp_path / "file"
        blocked.write_text("")
        broken = EmfWriter(EmfSettings(enabled=True, path=str(blocked / "m.jsonl")), "nas-1", snap)
        for _ in range(3):
            await broken.write_once()
    finally:
        logger.remove(sink)
    assert sum("emf: cannot write" in m for m in messages) == 1
