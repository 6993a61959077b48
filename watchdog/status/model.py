"""The status snapshot: what ``GET /status`` serves and ``watchdogctl status --json`` prints.

Schema version 1. Fields are only ever added (a client ignores fields it does
not know); a change in meaning bumps ``schema_version``. Times are ISO 8601 in
UTC, ages in seconds (how long ago the daemon observed it), memory in MiB,
utilisation in percent. A value the daemon could not observe is ``null``.

The snapshot holds only what is safe to show: names, numbers, states and
redacted summaries; never URLs, headers, API keys or config values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
Health = Literal["ok", "degraded", "critical", "unknown"]
HEALTH_ORDER: dict[str, int] = {"ok": 0, "unknown": 1, "degraded": 2, "critical": 3}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ActiveFinding(_Model):
    """A finding the detectors hold raised now."""

    finding: str = Field(description="hang, down, failed_unload, memory_growth, fragmentation, oom, degraded, gpu_fault, truncation")
    severity: Literal["warning", "critical"]
    summary: str = Field(description="one line with the evidence, as the detector wrote it (secrets masked)")
    since: datetime = Field(description="when it was raised")
    target: str = Field(description="the server name, or gpu:N")


class IncidentRef(_Model):
    """The open incident of a target or GPU (``watchdogctl history ID`` shows it whole)."""

    id: int
    since: datetime
    severity: Literal["warning", "critical"]
    findings: list[str] = Field(description="its findings that are still raised")


class ServerStatus(_Model):
    """The last poll of the server's own status endpoints."""

    state: str = Field(description="ready, loading, down or error")
    error: str | None = None
    running: int | None = Field(default=None, description="requests being generated")
    waiting: int | None = Field(default=None, description="requests queued")
    kv_cache_usage: float | None = Field(default=None, description="0-1")
    age_s: float


class ModelStatus(_Model):
    name: str
    vram_mib: int | None = None
    expires_in_s: float | None = None


class CanaryStatus(_Model):
    """The last canary prompt and how it went."""

    model: str | None = None
    ok: bool
    error: str | None = Field(default=None, description="timeout, stalled, refused, http_5xx, bad_response or a short text")
    ttft_s: float | None = Field(default=None, description="time to first token")
    tokens: int | None = None
    tokens_per_s: float | None = None
    age_s: float


class TargetGpu(_Model):
    """One GPU a target uses, and how much of it the target holds (memory in whole MiB)."""

    index: int
    util: float | None = None
    mem_used_mib: int | None = None
    mem_total_mib: int | None = None
    target_mem_mib: int | None = Field(default=None, description="memory held by this target's processes")


class ActionStatus(_Model):
    """What the actor (watchdog/act/) may still do to the target."""

    state: str = Field(description="watching, waiting, acting, verifying, recovered, backoff or gave_up")
    mode: str | None = Field(default=None, description="act, dry-run or observe (after per-target overrides)")
    paused: bool = False
    paused_until: datetime | None = Field(default=None, description="null with paused: until `watchdogctl resume`")
    paused_reason: str | None = None
    restarts_left: int | None = Field(default=None, description="restarts left in the budget's window")
    max_restarts: int | None = None


class TargetStatus(_Model):
    name: str
    kind: str = Field(description="ollama, vllm, llamacpp or openai")
    state: Health = Field(
        description="critical/degraded: a critical/warning finding is raised on it (or a gpu_fault on one of its "
        "GPUs); unknown: no recent observation; ok otherwise"
    )
    server: ServerStatus | None = None
    models: list[ModelStatus] = Field(default_factory=list)
    last_canary: CanaryStatus | None = None
    gpus: list[TargetGpu] = Field(default_factory=list)
    findings: list[ActiveFinding] = Field(default_factory=list)
    incident: IncidentRef | None = None
    canary_failures: int = Field(default=0, description="failed canaries since the daemon started")
    action: ActionStatus | None = Field(default=None, description="the actor's state, pause and restart budget")


class XidStatus(_Model):
    xid: int
    pid: int | None = None
    age_s: float


class GpuStatus(_Model):
    index: int
    name: str = ""
    state: Health = Field(description="critical: a gpu_fault is raised; unknown: no recent sample or NVML error")
    util: float | None = None
    mem_used_mib: int | None = None
    mem_total_mib: int | None = None
    temp_c: float | None = None
    power_w: float | None = None
    error: str | None = Field(default=None, description='the device did not answer NVML (e.g. "gpu_lost")')
    age_s: float | None = None
    targets: list[str] = Field(default_factory=list, description="targets that use this GPU")
    xids: list[XidStatus] = Field(default_factory=list, description="XID errors seen since the daemon started (last 20)")
    findings: list[ActiveFinding] = Field(default_factory=list)
    incident: IncidentRef | None = None
    xid_errors: int = Field(default=0, description="XID errors seen since the daemon started (all of them)")


class ReloadStatus(_Model):
    at: datetime
    ok: bool
    message: str = Field(description='"reloaded" or why the new config was refused (the old one stays)')


class DaemonStatus(_Model):
    version: str
    pid: int | None = None
    host: str = ""
    started_at: datetime | None = None
    uptime_s: float | None = None
    config_path: str | None = None
    mode: str | None = Field(default=None, description="policy mode: act or observe")
    ready: bool = Field(default=False, description="the first full round of observations is done")
    last_reload: ReloadStatus | None = None
    problems: list[str] = Field(default_factory=list, description="what is wrong with the daemon itself")


class AlertSinkStatus(_Model):
    """One ``[[alerts]]`` sink: named, never shown by its URL."""

    name: str
    kind: str = Field(description="slack, webhook, email or apprise")
    state: Literal["ok", "failing", "idle"] = Field(
        description="ok: the last attempt delivered; failing: the last attempt failed (retried); idle: none yet"
    )
    pending: int = Field(default=0, description="messages in the outbox waiting to be delivered (outbox depth)")
    delivered: int = Field(default=0, description="messages delivered (last 7 days)")
    dropped: int = Field(default=0, description="messages expired or refused (last 7 days)")
    last_delivered_at: datetime | None = None
    last_error: str | None = Field(default=None, description="why the last attempt failed (never a URL or secret)")
    last_error_at: datetime | None = None


class StatusSnapshot(_Model):
    schema_version: int = SCHEMA_VERSION
    generated_at: datetime
    state: Health = Field(description="the worst state of any target or GPU; unknown when there are none")
    daemon: DaemonStatus
    targets: list[TargetStatus] = Field(default_factory=list)
    gpus: list[GpuStatus] = Field(default_factory=list)
    alerts: list[AlertSinkStatus] = Field(default_factory=list, description="alert sinks: health and outbox depth")

    def target(self, name: str) -> TargetStatus | None:
        return next((t for t in self.targets if t.name == name), None)

    def gpu(self, index: int) -> GpuStatus | None:
        return next((g for g in self.gpus if g.index == index), None)
