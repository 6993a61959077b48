"""The status snapshot builder (pure), its rendering, exit codes and summary line."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import pytest
from rich.console import Console

from watchdog.detect.finding import Finding
from watchdog.incidents.model import Incident, IncidentFinding
from watchdog.redact import Redactor
from watchdog.status import (
    DaemonInfo,
    LatestRecords,
    ReloadStatus,
    StatusSnapshot,
    build_status,
    exit_code_for,
    render_status,
    summary_line,
)
from watchdog.trace.records import (
    Canary,
    GpuDevice,
    GpuProc,
    GpuSample,
    Header,
    LoadedModel,
    ServerPoll,
    TraceTarget,
    Xid,
)

WALL = 1_700_000_000.0
HEADER = Header(
    host="nas-01",
    gpus=[GpuDevice(0, "NVIDIA RTX A2000 12GB", 12282), GpuDevice(1, "NVIDIA RTX A2000 12GB", 12282)],
    targets=[
        TraceTarget("ollama", "ollama", [0]),
        TraceTarget("vllm", "vllm", [1]),
        TraceTarget("llama", "llamacpp", []),
    ],
)


def latest() -> LatestRecords:
    records = LatestRecords()
    records.add_all(
        [
            ServerPoll(t=95.0, target="ollama", state="ready",
                       models=[LoadedModel("llama3.1:8b", 6144, 240.0)]),
            ServerPoll(t=98.0, target="vllm", state="ready", models=[LoadedModel("qwen2.5-7b", 10240)],
                       running=2, waiting=0, gen_tokens_total=1234.0, kv_cache_usage=0.12),
            ServerPoll(t=99.0, target="llama", state="ready"),
            Canary(t=90.0, target="ollama", ok=True, model="llama3.1:8b", ttft_s=0.21, tokens=4, tokens_per_s=48.5),
            Canary(t=97.0, target="vllm", ok=False, model="qwen2.5-7b", error="timeout"),
            GpuSample(t=99.0, index=0, util=0.0, mem_used_mib=6500, temp_c=41.0, power_w=22.0,
                      procs=[GpuProc(4242, 6300, "ollama")]),
            GpuSample(t=99.5, index=1, util=97.0, mem_used_mib=11000, temp_c=70.0, power_w=68.0,
                      procs=[GpuProc(777, 10800, "vllm"), GpuProc(888, 150, "llama")]),
            Xid(t=60.0, index=1, xid=13, pid=777),
            Xid(t=80.0, index=1, xid=31, pid=777),
        ]
    )
    return records


def build(findings=(), incidents=(), records=None, now=100.0, **kwargs) -> StatusSnapshot:
    records = records or latest()
    return build_status(
        header=HEADER,
        polls=records.polls,
        canaries=records.canaries,
        gpu_samples=records.gpus,
        xids=records.xids,
        findings=findings,
        incidents=incidents,
        daemon=kwargs.pop("daemon", DaemonInfo(config_path="/etc/inference-watchdog/watchdog.toml", mode="act",
                                                ready=True, pid=4321)),
        now=now,
        wall_start=WALL,
        **kwargs,
    )


def hang(t: float = 70.0) -> Finding:
    return Finding(t, "vllm", "hang", "raised", "no tokens for 30 s with 2 requests running")


def test_every_field_of_a_healthy_picture():
    snap = build()
    assert snap.state == "ok" and snap.schema_version == 1
    assert snap.generated_at == datetime.fromtimestamp(WALL + 100, tz=timezone.utc)
    assert snap.daemon.uptime_s == 100.0 and snap.daemon.host == "nas-01" and snap.daemon.pid == 4321

    ollama = snap.target("ollama")
    assert ollama.state == "ok" and ollama.kind == "ollama"
    assert [(m.name, m.vram_mib, m.expires_in_s) for m in ollama.models] == [("llama3.1:8b", 6144, 240.0)]
    assert (ollama.last_canary.ok, ollama.last_canary.ttft_s, ollama.last_canary.tokens_per_s,
            ollama.last_canary.age_s) == (True, 0.21, 48.5, 10.0)
    [gpu] = ollama.gpus
    assert (gpu.index, gpu.util, gpu.mem_used_mib, gpu.mem_total_mib, gpu.target_mem_mib) == (0, 0.0, 6500, 12282, 6300)
    assert ollama.incident is None and ollama.findings == []

    vllm = snap.target("vllm")
    assert (vllm.server.running, vllm.server.waiting, vllm.server.kv_cache_usage) == (2, 0, 0.12)
    assert vllm.last_canary.error == "timeout" and vllm.state == "ok"  # one failed canary is the detector's call

    # A target with no GPUs in the config gets them from attribution.
    assert [g.index for g in snap.target("llama").gpus] == [1]
    assert snap.target("llama").gpus[0].target_mem_mib == 150

    gpu1 = snap.gpu(1)
    assert (gpu1.util, gpu1.mem_used_mib, gpu1.mem_total_mib, gpu1.temp_c, gpu1.power_w) == (97.0, 11000, 12282, 70.0, 68.0)
    assert gpu1.targets == ["vllm", "llama"] and gpu1.name == "NVIDIA RTX A2000 12GB"
    assert [(x.xid, x.pid, x.age_s) for x in gpu1.xids] == [(13, 777, 40.0), (31, 777, 20.0)]
    assert exit_code_for(snap) == 0
    assert summary_line(snap) == "3 targets: 3 ok"


def test_findings_and_incidents_set_the_states_and_exit_codes():
    incident = Incident(
        id=12, target="vllm", state="open", severity="critical", title="hang: ...",
        opened_at=datetime.fromtimestamp(WALL + 70, tz=timezone.utc),
        findings=[IncidentFinding(finding="hang", state="raised", severity="critical", summary="s",
                                  raised_at=datetime.fromtimestamp(WALL + 70, tz=timezone.utc),
                                  changed_at=datetime.fromtimestamp(WALL + 70, tz=timezone.utc))],
    )
    snap = build(findings=[hang()], incidents=[incident])
    vllm = snap.target("vllm")
    assert vllm.state == "critical" and snap.state == "critical" and exit_code_for(snap) == 2
    assert [(f.finding, f.severity, f.since.timestamp()) for f in vllm.findings] == [("hang", "critical", WALL + 70)]
    assert (vllm.incident.id, vllm.incident.findings, vllm.incident.severity) == (12, ["hang"], "critical")
    assert summary_line(snap) == "3 targets: 2 ok, 1 hang"

    slow = Finding(80.0, "ollama", "degraded", "raised", "TTFT 2.1 s, 10x its baseline")
    snap = build(findings=[slow])
    assert snap.target("ollama").state == "degraded" and snap.state == "degraded" and exit_code_for(snap) == 1

    cleared = Finding(80.0, "ollama", "degraded", "cleared", "back")
    assert build(findings=[cleared]).state == "ok"


def test_a_gpu_fault_makes_its_gpu_and_its_servers_critical():
    fault = Finding(85.0, "gpu:0", "gpu_fault", "raised", "XID 79: GPU has fallen off the bus")
    snap = build(findings=[fault])
    assert snap.gpu(0).state == "critical" and snap.gpu(0).findings[0].finding == "gpu_fault"
    assert snap.target("ollama").state == "critical" and snap.target("vllm").state == "ok"
    assert exit_code_for(snap) == 2
    assert summary_line(snap) == "3 targets: 2 ok, 1 gpu_fault; 1 GPU fault"


def test_targets_not_observed_lately_are_unknown():
    snap = build(now=400.0, stale_after=120.0)
    assert {t.state for t in snap.targets} == {"unknown"} and snap.state == "unknown"
    assert exit_code_for(snap) == 1
    empty = build(records=LatestRecords(), now=1.0)
    assert empty.target("ollama").server is None and empty.target("ollama").state == "unknown"
    assert empty.gpu(0).state == "unknown" and empty.gpu(0).util is None


def test_a_lost_gpu_shows_its_error():
    records = latest()
    records.add(GpuSample(t=99.9, index=1, util=None, mem_used_mib=None, error="gpu_lost"))
    gpu = build(records=records).gpu(1)
    assert gpu.error == "gpu_lost" and gpu.state == "unknown" and gpu.util is None


def test_secrets_never_reach_the_snapshot():
    secret = "sk-test-4f9a8b7c6d5e"
    records = latest()
    records.add(ServerPoll(t=99.0, target="vllm", state="error", error=f"401: invalid api key {secret}"))
    records.add(Canary(t=99.0, target="ollama", ok=False, error=f"refused by http://admin:{secret}@proxy"))
    finding = Finding(99.0, "vllm", "down", "raised", f"401 Unauthorized (Authorization: Bearer {secret})")
    snap = build(findings=[finding], redactor=Redactor([secret]),
                 daemon=DaemonInfo(problems=[f"alert sink failed with token={secret}"]))
    text = snap.model_dump_json()
    assert secret not in text and "***" in text
    out = io.StringIO()
    render_status(snap, Console(file=out, width=200))
    assert secret not in out.getvalue()


def test_the_table_shows_every_field():
    fault = Finding(85.0, "gpu:1", "gpu_fault", "raised", "XID 79 on GPU 1")
    reload = ReloadStatus(at=datetime.fromtimestamp(WALL + 50, tz=timezone.utc), ok=False,
                          message="targets[0].url: expected an http(s) URL")
    daemon = DaemonInfo(config_path="/etc/iw.toml", mode="observe", ready=True, last_reload=reload)
    snap = build(findings=[hang(), fault], daemon=daemon)
    out = io.StringIO()
    render_status(snap, Console(file=out, width=250, color_system=None))
    text = out.getvalue()
    for expected in (
        "CRITICAL", "inference-watchdog", "nas-01", "up 1m40s", "mode observe", "/etc/iw.toml",
        "REFUSED (targets[0].url", "Targets", "ollama", "llama3.1:8b (6.0 GiB)", "TTFT 0.21 s", "48.5 tok/s",
        "10s ago", "timeout", "2 running, 0 waiting", "0: 0% 6.3 GiB/12.0 GiB (holds 6.2 GiB)", "GPUs",
        "97%", "70 °C", "68 W", "2 (last 31, 20s ago)", "vllm, llama", "critical",
        "vllm hang", "no tokens for 30 s with 2 requests running", "gpu:1 gpu_fault", "XID 79 on GPU 1",
    ):
        assert expected in text, expected


def test_the_json_round_trips_and_ignores_fields_it_does_not_know():
    snap = build(findings=[hang()])
    data = json.loads(snap.model_dump_json())
    data["a_field_from_a_newer_daemon"] = {"x": 1}
    data["targets"][0]["another"] = 2
    again = StatusSnapshot.model_validate(data)
    assert again == snap


def test_the_documented_json_schema_is_current():
    from tests.paths import ROOT

    documented = json.loads((ROOT / "docs" / "status.schema.json").read_text())
    assert documented == StatusSnapshot.model_json_schema(mode="serialization"), (
        "regenerate with: python -m watchdog.status.schema > docs/status.schema.json"
    )


@pytest.mark.parametrize(
    ("findings", "code"),
    [((), 0), ((Finding(1, "ollama", "memory_growth", "raised", "+2 GiB"),), 1), ((hang(),), 2)],
)
def test_exit_codes(findings, code):
    assert exit_code_for(build(findings=findings)) == code


def test_alert_sinks_show_their_health_and_outbox_depth_never_a_secret():
    from watchdog.status.model import AlertSinkStatus

    secret = "https://hooks.slack.com/services/T0/B0/abcdefSECRET"
    sinks = [
        AlertSinkStatus(name="ops-slack", kind="slack", state="failing", pending=3, delivered=12, dropped=1,
                        last_error=f"HTTP 404 from {secret}"),
        AlertSinkStatus(name="ops-mail", kind="email", state="ok", pending=0, delivered=4,
                        last_delivered_at=datetime.fromtimestamp(WALL + 90, tz=timezone.utc)),
    ]
    snap = build_status(header=HEADER, polls={}, canaries={}, gpu_samples={}, now=100.0, wall_start=WALL,
                        alerts=sinks, redactor=Redactor([secret]))
    assert [a.pending for a in snap.alerts] == [3, 0]
    assert secret not in snap.model_dump_json()
    out = io.StringIO()
    render_status(snap, Console(file=out, width=250, color_system=None))
    text = out.getvalue()
    assert secret not in text
    for expected in ("Alerts", "ops-slack", "slack", "failing", "3", "12", "HTTP 404 from ***", "ops-mail", "ok"):
        assert expected in text, expected
