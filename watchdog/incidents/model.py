"""What an incident is, as the store keeps it and the control socket shows it.

An incident belongs to one target (a server name, or ``gpu:N``). It is opened
by the first raised finding on that target, collects every later finding on
it, and closes when all of them have cleared. Its timeline says what happened,
in order, with the detectors' summaries and evidence. These models are frozen:
the manager builds a new one for every change, so a copy handed to another
thread or a listener never changes under its feet.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from watchdog.detect.finding import SEVERITY

Severity = Literal["warning", "critical"]
EntryKind = Literal["raised", "cleared", "note"]
IncidentState = Literal["open", "closed"]
EventKind = Literal["opened", "updated", "closed"]

_RANK = {"warning": 1, "critical": 2}


def severity_of(finding: str) -> Severity:
    """How bad a finding is (unknown findings count as warnings)."""
    return "critical" if SEVERITY.get(finding) == "critical" else "warning"


def worst(severities: Iterable[str]) -> Severity:
    """The worst of some severities; "warning" when there are none."""
    best: Severity = "warning"
    for severity in severities:
        if _RANK.get(severity, 1) > _RANK[best]:
            best = "critical"
    return best


def to_datetime(ts: float) -> datetime:
    """Unix seconds to an aware UTC datetime (what the JSON shows, as ISO 8601)."""
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def to_timestamp(value: datetime) -> float:
    return value.timestamp()


class _Frozen(BaseModel):
    # extra="ignore": a client reading a newer daemon's JSON keeps working.
    model_config = ConfigDict(frozen=True, extra="ignore")


class TimelineEntry(_Frozen):
    """One thing that happened during an incident."""

    at: datetime
    kind: EntryKind
    summary: str
    finding: str | None = None
    severity: Severity | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)


class IncidentFinding(_Frozen):
    """One finding of an incident and where it stands now."""

    finding: str
    state: Literal["raised", "cleared"]
    severity: Severity
    summary: str
    raised_at: datetime
    changed_at: datetime
    #: Raised before the daemon restarted and not raised again by the new run yet.
    carried_over: bool = False


class RecordingInfo(_Frozen):
    """The incident's flight recording: a trace-v1 file in the state dir."""

    file: str
    bytes: int = 0
    #: Records keep being appended until then (set when the incident closes).
    until: datetime | None = None


class ActionEntry(_Frozen):
    """One action taken on the incident's target (watchdog/act/), as ``history --json`` shows it."""

    action: str
    method: str
    #: ok, failed, timeout, skipped, would (dry-run), interrupted (the watchdog died during
    #: it), or running (the intent is written, the result not yet).
    result: str
    started: datetime
    finished: datetime | None = None
    detail: str = ""
    manual: bool = False
    finding: str | None = None
    step: int | None = None


class Incident(_Frozen):
    id: int
    target: str
    state: IncidentState
    severity: Severity
    title: str
    opened_at: datetime
    closed_at: datetime | None = None
    findings: list[IncidentFinding] = Field(default_factory=list)
    #: Empty in listings that leave timelines out.
    timeline: list[TimelineEntry] = Field(default_factory=list)
    recording: RecordingInfo | None = None
    #: How often it was reopened: raised again within ``flap_window`` of closing (a flapping target).
    flaps: int = 0
    #: What the watchdog did about it (from the actions table, oldest first).
    actions: list[ActionEntry] = Field(default_factory=list)
    #: Seconds from the finding being raised to the canary that proved the fix; None until then.
    recovered_after_s: float | None = None

    @property
    def active(self) -> list[IncidentFinding]:
        return [f for f in self.findings if f.state == "raised"]

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class IncidentEvent(_Frozen):
    """What listeners (actions, alerts, metrics) receive: the incident after a change, and the change."""

    kind: EventKind
    incident: Incident
    change: TimelineEntry
