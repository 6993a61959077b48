"""Status snapshots for metrics tests, built by the real status builder from plain records."""

from __future__ import annotations

from datetime import UTC, datetime

from watchdog.detect.finding import Finding
from watchdog.incidents.model import Incident, IncidentEvent, TimelineEntry
from watchdog.status import LatestRecords, build_status
from watchdog.status.model import StatusSnapshot
from watchdog.trace.records import (
    Canary,
    GpuDevice,
    GpuProc,
    GpuSample,
    Header,
    ServerPoll,
    TraceTarget,
    Xid,
)

WALL_START = 1_800_000_000.0
HEADER = Header(
    host="box-1",
    gpus=[GpuDevice(0, "NVIDIA H100", 81559), GpuDevice(1, "NVIDIA H100", 81559)],
    targets=[TraceTarget("ollama", "ollama", [0]), TraceTarget("vllm", "vllm", [1])],
)


def records() -> LatestRecords:
    """ollama healthy (2 canaries, 1 failed then 1 ok); vllm hung (its canary failed); GPU 1 had 2 XIDs."""
    latest = LatestRecords()
    latest.add_all([
        ServerPoll(t=98.0, target="ollama", state="ready"),
        Canary(t=90.0, target="ollama", ok=False, error="timeout"),
        Canary(t=99.0, target="ollama", ok=True, model="llama3", ttft_s=0.25, tokens=32, tokens_per_s=80.0),
        ServerPoll(t=98.0, target="vllm", state="ready"),
        Canary(t=97.0, target="vllm", ok=False, error="stalled", ttft_s=0.5),
        GpuSample(t=99.5, index=0, util=42.0, mem_used_mib=40780, procs=[GpuProc(11, 40000, "ollama")],
                  temp_c=61.0, power_w=310.5),
        GpuSample(t=99.5, index=1, util=0.0, mem_used_mib=79000, temp_c=55.0, power_w=120.0),
        Xid(t=50.0, index=1, xid=79), Xid(t=51.0, index=1, xid=79),
    ])
    return latest


def snapshot(latest: LatestRecords | None = None, findings: list[Finding] | None = None) -> StatusSnapshot:
    latest = latest or records()
    return build_status(
        header=HEADER, polls=latest.polls, canaries=latest.canaries, gpu_samples=latest.gpus, xids=latest.xids,
        findings=findings if findings is not None else [Finding(t=97.0, target="vllm", finding="hang",
                                                                state="raised", summary="no token for 30 s")],
        incidents=[INCIDENT], now=100.0, wall_start=WALL_START, canary_failures=latest.canary_failures, xid_counts=latest.xid_counts,
    )


AT = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
INCIDENT = Incident(id=7, target="vllm", state="open", severity="critical", title="vllm: hang", opened_at=AT)


def note(target: str, evidence: dict, kind: str = "note") -> IncidentEvent:  # type: ignore[type-arg]
    """The event Incidents.note() publishes for a line in the target's timeline."""
    entry = TimelineEntry(at=AT, kind=kind, summary="an action", evidence=evidence)  # type: ignore[arg-type]
    incident = INCIDENT.model_copy(update={"target": target, "timeline": [entry]})
    return IncidentEvent(kind="updated", incident=incident, change=entry)
