"""The alert: one message about one incident transition, as every sink gets it.

This model *is* the webhook's JSON payload (``format = "json"``), schema
version 1, documented in docs/alert.schema.json (``python -m
watchdog.notify.schema``). Fields are only ever added; a change of meaning
bumps ``schema_version``. ``id`` is the idempotency key: the same on every
retry of the same message to the same sink, so a receiver can drop a repeat.

Everything here comes from the incident (already redacted by the manager) and
from the status snapshot (redacted by its builder): never a URL, header or key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
AlertEvent = Literal["opened", "action", "escalated", "gave_up", "resolved", "reminder", "test", "sink_failing"]
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class AlertAction(_Model):
    """What the watchdog did about the incident (written by the actions into the timeline)."""

    action: str = Field(description="restart, unload, kill, ...")
    method: str | None = Field(default=None, description="docker, systemd, command, api, ...")
    result: str | None = Field(default=None, description="ok, failed, timeout, skipped, would (dry-run), gave_up")
    started: str | None = None
    finished: str | None = None
    detail: str | None = None
    at: datetime | None = Field(default=None, description="when the timeline took it")


class AlertGpu(_Model):
    index: int
    util: float | None = Field(default=None, description="percent")
    mem_used_mib: int | None = None
    mem_total_mib: int | None = None
    target_mem_mib: int | None = Field(default=None, description="memory held by the target's processes")


class AlertCanary(_Model):
    ok: bool
    model: str | None = None
    error: str | None = None
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    age_s: float | None = Field(default=None, description="how long before the alert it ran")


class Alert(_Model):
    schema_version: int = SCHEMA_VERSION
    id: str = Field(description="idempotency key: the same on every retry of this message")
    event: AlertEvent = Field(
        description="opened; action (one was taken, with its result); escalated (warning became critical); "
        "gave_up (the watchdog stopped acting: a human is needed); resolved; reminder (still open); test; "
        "sink_failing (another alert sink has not delivered for a while: told through the others)"
    )
    at: datetime = Field(description="when the transition happened")
    host: str
    target: str = Field(description="the server name, gpu:N, or for sink_failing alert-sink:NAME")
    severity: Literal["info", "warning", "critical"]
    headline: str = Field(description="one line: what this message says")
    incident_id: int | None = None
    incident_state: Literal["open", "closed"] | None = None
    title: str = ""
    finding: str | None = Field(default=None, description="the finding this message is about")
    evidence: str = Field(default="", description="one line of evidence, as the detector wrote it")
    findings: list[str] = Field(default_factory=list, description="findings still raised")
    opened_at: datetime | None = None
    closed_at: datetime | None = None
    open_for_s: float | None = Field(default=None, description="opened until now, or until it closed")
    flaps: int = Field(default=0, description="times it was reopened within the flap window")
    action: AlertAction | None = Field(default=None, description="for event action / gave_up: the one it is about")
    actions: list[AlertAction] = Field(default_factory=list, description="every action of the incident so far")
    recovered_after_s: float | None = Field(default=None, description="finding raised -> canary passing again")
    gpus: list[AlertGpu] = Field(default_factory=list, description="the target's GPUs when the alert was made")
    last_canary: AlertCanary | None = None
    sink: str | None = Field(default=None, description="for sink_failing: the failing sink's name (never its URL)")

    def payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
