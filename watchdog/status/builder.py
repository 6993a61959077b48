"""Building the status snapshot from the latest records and the active findings (pure).

The daemon keeps the latest records in a :class:`LatestRecords` (fed with every
record) and calls :func:`build_status` for each ``GET /status``; ``watchdogctl
check`` does the same after its one round. No I/O, no clock: ``now`` and
``wall_start`` come from the caller, so tests build snapshots from plain records.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from watchdog import __version__
from watchdog.detect.finding import Finding
from watchdog.incidents.model import Incident, severity_of, to_datetime
from watchdog.redact import NO_SECRETS, Redactor
from watchdog.status.model import (
    HEALTH_ORDER,
    ActionStatus,
    ActiveFinding,
    AlertSinkStatus,
    CanaryStatus,
    DaemonStatus,
    GpuStatus,
    Health,
    IncidentRef,
    ModelStatus,
    ReloadStatus,
    ServerStatus,
    StatusSnapshot,
    TargetGpu,
    TargetStatus,
    XidStatus,
)
from watchdog.trace.records import Canary, GpuSample, Header, Record, ServerPoll, Xid

XIDS_KEPT = 200
XIDS_SHOWN = 20


@dataclass
class LatestRecords:
    """The newest record of each kind per target and GPU (what status shows). Feed it every record."""

    polls: dict[str, ServerPoll] = field(default_factory=dict)
    canaries: dict[str, Canary] = field(default_factory=dict)
    gpus: dict[int, GpuSample] = field(default_factory=dict)
    xids: deque[Xid] = field(default_factory=lambda: deque(maxlen=XIDS_KEPT))
    #: Failed canaries per target and XID errors per GPU since the daemon started (metrics count them).
    canary_failures: dict[str, int] = field(default_factory=dict)
    xid_counts: dict[int, int] = field(default_factory=dict)

    def add(self, record: Record) -> None:
        if isinstance(record, ServerPoll):
            self.polls[record.target] = record
        elif isinstance(record, Canary):
            self.canaries[record.target] = record
            if not record.ok:
                self.canary_failures[record.target] = self.canary_failures.get(record.target, 0) + 1
        elif isinstance(record, GpuSample):
            self.gpus[record.index] = record
        elif isinstance(record, Xid):
            self.xids.append(record)
            self.xid_counts[record.index] = self.xid_counts.get(record.index, 0) + 1

    def add_all(self, records: Iterable[Record]) -> None:
        for record in records:
            self.add(record)


@dataclass(frozen=True)
class DaemonInfo:
    """What the daemon knows about itself (the builder adds start time and uptime from the clock)."""

    config_path: str | None = None
    host: str = ""
    mode: str | None = None
    ready: bool = False
    last_reload: ReloadStatus | None = None
    problems: Sequence[str] = ()
    pid: int | None = field(default_factory=os.getpid)
    version: str = __version__


def build_status(
    *,
    header: Header,
    polls: Mapping[str, ServerPoll],
    canaries: Mapping[str, Canary],
    gpu_samples: Mapping[int, GpuSample],
    xids: Iterable[Xid] = (),
    findings: Iterable[Finding] = (),
    incidents: Iterable[Incident] = (),
    daemon: DaemonInfo | None = None,
    now: float,
    wall_start: float,
    stale_after: float = 120.0,
    redactor: Redactor = NO_SECRETS,
    canary_failures: Mapping[str, int] | None = None,
    xid_counts: Mapping[int, int] | None = None,
    alerts: Iterable[AlertSinkStatus] = (),
    actions: Mapping[str, ActionStatus] | None = None,
) -> StatusSnapshot:
    """The snapshot.

    - ``header``: the configured targets (name, kind, GPUs) and the GPUs (index, name, total memory);
    - ``polls`` / ``canaries`` by target, ``gpu_samples`` by GPU index: the latest of each;
    - ``xids``: XID events seen (any order); ``findings``: the engine's raised findings;
    - ``alerts``: the alert sinks' health and outbox depth (from the notifier);
    - ``incidents``: the open incidents; ``now``: the daemon clock (seconds since
      ``wall_start``, the Unix time of its zero); a target with no observation
      for ``stale_after`` seconds is ``unknown``;
    - ``canary_failures`` by target, ``xid_counts`` by GPU: counts since the daemon started
      (``LatestRecords`` keeps them); without them the counts are those of ``xids`` / zero.
    """
    daemon = daemon or DaemonInfo()
    active = [f for f in findings if f.state == "raised"]
    by_target: dict[str, list[ActiveFinding]] = {}
    for finding in active:
        by_target.setdefault(finding.target, []).append(
            ActiveFinding(
                finding=finding.finding,
                severity=severity_of(finding.finding),
                summary=redactor.text(finding.summary),
                since=to_datetime(wall_start + finding.t),
                target=finding.target,
            )
        )
    open_by_target = {i.target: _incident_ref(i) for i in incidents if i.state == "open"}
    xids_by_gpu: dict[int, list[Xid]] = {}
    for xid in xids:
        xids_by_gpu.setdefault(xid.index, []).append(xid)

    names = [t.name for t in header.targets]
    targets = [
        _target(header, name, polls, canaries, gpu_samples, by_target, open_by_target, now, stale_after, redactor)
        .model_copy(update={"canary_failures": (canary_failures or {}).get(name, 0)})
        for name in names
    ]
    if actions:
        targets = [t.model_copy(update={"action": actions.get(t.name)}) for t in targets]
    indexes = sorted({g.index for g in header.gpus} | set(gpu_samples))
    gpus = [
        _gpu(header, index, gpu_samples.get(index), xids_by_gpu.get(index, []), by_target, open_by_target, now,
             stale_after, redactor)
        .model_copy(update={"xid_errors": len(xids_by_gpu.get(index, [])) if xid_counts is None
                            else xid_counts.get(index, 0)})
        for index in indexes
    ]
    states = [t.state for t in targets] + [g.state for g in gpus]
    overall: Health = max(states, key=HEALTH_ORDER.__getitem__) if targets else "unknown"
    return StatusSnapshot(
        generated_at=to_datetime(wall_start + now),
        state=overall,
        daemon=DaemonStatus(
            version=daemon.version,
            pid=daemon.pid,
            host=daemon.host or header.host,
            started_at=to_datetime(wall_start),
            uptime_s=round(max(0.0, now), 1),
            config_path=daemon.config_path,
            mode=daemon.mode,
            ready=daemon.ready,
            last_reload=daemon.last_reload,
            problems=[redactor.text(p) for p in daemon.problems],
        ),
        targets=targets,
        gpus=gpus,
        alerts=[a.model_copy(update={"last_error": redactor.optional(a.last_error)}) for a in alerts],
    )


def _target(
    header: Header,
    name: str,
    polls: Mapping[str, ServerPoll],
    canaries: Mapping[str, Canary],
    gpu_samples: Mapping[int, GpuSample],
    by_target: Mapping[str, list[ActiveFinding]],
    incidents: Mapping[str, IncidentRef],
    now: float,
    stale_after: float,
    redactor: Redactor,
) -> TargetStatus:
    spec = header.target(name)
    poll, canary = polls.get(name), canaries.get(name)
    gpu_indexes = list(spec.gpus) if spec and spec.gpus else _gpus_used_by(name, gpu_samples)
    findings = list(by_target.get(name, []))
    for index in gpu_indexes:  # a faulty GPU takes its servers down with it
        findings.extend(by_target.get(f"gpu:{index}", []))
    last_seen = max((r.t for r in (poll, canary) if r is not None), default=None)
    if findings:
        state: Health = "critical" if any(f.severity == "critical" for f in findings) else "degraded"
    elif last_seen is None or now - last_seen > stale_after:
        state = "unknown"
    elif poll is not None and poll.state in ("error", "down"):
        # A status endpoint that fails (times out, trickles, answers garbage or an HTML page)
        # proves nothing about health: never "ok" until it answers again or a finding says more.
        state = "unknown"
    else:
        state = "ok"
    return TargetStatus(
        name=name,
        kind=spec.kind if spec else "openai",
        state=state,
        server=None
        if poll is None
        else ServerStatus(
            state=poll.state,
            error=redactor.optional(poll.error),
            running=poll.running,
            waiting=poll.waiting,
            kv_cache_usage=poll.kv_cache_usage,
            age_s=_age(now, poll.t),
        ),
        models=[] if poll is None else [
            ModelStatus(name=m.name, vram_mib=_whole(m.vram_mib), expires_in_s=m.expires_in_s) for m in poll.models
        ],
        last_canary=None
        if canary is None
        else CanaryStatus(
            model=canary.model,
            ok=canary.ok,
            error=redactor.optional(canary.error),
            ttft_s=canary.ttft_s,
            tokens=canary.tokens,
            tokens_per_s=canary.tokens_per_s,
            age_s=_age(now, canary.t),
        ),
        gpus=[_target_gpu(header, name, index, gpu_samples.get(index)) for index in gpu_indexes],
        findings=findings,
        incident=incidents.get(name),
    )


def _target_gpu(header: Header, name: str, index: int, sample: GpuSample | None) -> TargetGpu:
    device = header.gpu(index)
    held = None
    if sample is not None:
        mine = [p.mem_mib for p in sample.procs if p.target == name and p.mem_mib is not None]
        held = sum(mine) if mine else None
    return TargetGpu(
        index=index,
        util=None if sample is None else sample.util,
        mem_used_mib=None if sample is None else _whole(sample.mem_used_mib),
        mem_total_mib=_whole(device.mem_total_mib) if device else None,
        target_mem_mib=_whole(held),
    )


def _gpu(
    header: Header,
    index: int,
    sample: GpuSample | None,
    xids: list[Xid],
    by_target: Mapping[str, list[ActiveFinding]],
    incidents: Mapping[str, IncidentRef],
    now: float,
    stale_after: float,
    redactor: Redactor,
) -> GpuStatus:
    device = header.gpu(index)
    key = f"gpu:{index}"
    findings = list(by_target.get(key, []))
    users = [t.name for t in header.targets if index in t.gpus]
    if sample is not None:
        users += sorted({p.target for p in sample.procs if p.target and p.target not in users})
    if findings:
        state: Health = "critical" if any(f.severity == "critical" for f in findings) else "degraded"
    elif sample is None or sample.error or now - sample.t > stale_after:
        state = "unknown"
    else:
        state = "ok"
    recent = sorted(xids, key=lambda x: x.t)[-XIDS_SHOWN:]
    return GpuStatus(
        index=index,
        name=device.name if device else "",
        state=state,
        util=None if sample is None else sample.util,
        mem_used_mib=None if sample is None else _whole(sample.mem_used_mib),
        mem_total_mib=_whole(device.mem_total_mib) if device else None,
        temp_c=None if sample is None else sample.temp_c,
        power_w=None if sample is None else sample.power_w,
        error=None if sample is None else redactor.optional(sample.error),
        age_s=None if sample is None else _age(now, sample.t),
        targets=users,
        xids=[XidStatus(xid=x.xid, pid=x.pid, age_s=_age(now, x.t)) for x in recent],
        findings=findings,
        incident=incidents.get(key),
    )


def _gpus_used_by(name: str, gpu_samples: Mapping[int, GpuSample]) -> list[int]:
    return sorted(i for i, s in gpu_samples.items() if any(p.target == name for p in s.procs))


def _incident_ref(incident: Incident) -> IncidentRef:
    return IncidentRef(
        id=incident.id,
        since=incident.opened_at,
        severity=incident.severity,
        findings=[f.finding for f in incident.active],
    )


def _whole(mib: object) -> int | None:
    """Whole MiB; None for anything that is not a finite number (headers are not validated)."""
    if isinstance(mib, bool) or not isinstance(mib, (int, float)) or not math.isfinite(mib):
        return None
    return round(mib)


def _age(now: float, t: float) -> float:
    return round(max(0.0, now - t), 1)
