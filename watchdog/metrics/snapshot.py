"""One snapshot of the daemon's state as metrics (pure): what every exporter writes.

Built from the status snapshot (targets, GPUs, open incidents, counts since start) plus
the action counts from the incident bus and the alert outbox depth when alerts exist.
A value the daemon could not observe is left out (CloudWatch takes no NaN), never zero.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from watchdog.metrics.catalogue import (
    CANARY_FAILURES,
    CANARY_TPS,
    CANARY_TTFT,
    GPU_MEM,
    GPU_MEM_PCT,
    GPU_POWER,
    GPU_TEMP,
    GPU_UTIL,
    OPEN_INCIDENTS,
    OUTBOX,
    RESTARTS,
    TARGET_HEALTHY,
    UNLOADS,
    XID_ERRORS,
    Metric,
)
from watchdog.status.model import StatusSnapshot


@dataclass(frozen=True)
class Sample:
    metric: Metric
    value: float
    target: str | None = None
    gpu: int | None = None

    def dimensions(self, host: str) -> dict[str, str]:
        """CloudWatch dimensions: Host always, Target or GPU where the metric has one."""
        dims = {"Host": host}
        if self.target is not None:
            dims["Target"] = self.target
        if self.gpu is not None:
            dims["GPU"] = str(self.gpu)
        return dims

    def labels(self) -> dict[str, str]:
        """Prometheus labels (the host is Prometheus's own ``instance``)."""
        if self.target is not None:
            return {"target": self.target}
        if self.gpu is not None:
            return {"gpu": str(self.gpu)}
        return {}

    @property
    def key(self) -> tuple[str, str | None, int | None]:
        return (self.metric.name, self.target, self.gpu)


@dataclass(frozen=True)
class MetricsSnapshot:
    host: str
    at: datetime
    samples: tuple[Sample, ...] = field(default_factory=tuple)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def value(self, metric: Metric, *, target: str | None = None, gpu: int | None = None) -> float | None:
        return next((s.value for s in self.samples if s.key == (metric.name, target, gpu)), None)


def build_metrics(
    status: StatusSnapshot,
    actions: Mapping[str, Mapping[str, int]] | None = None,
    *,
    host: str | None = None,
    outbox_depth: int | None = None,
) -> MetricsSnapshot:
    """The metrics of one status snapshot; ``actions``: counts by target and action (restart, unload);
    ``outbox_depth``: alerts not yet delivered (default: summed from the snapshot's alert sinks)."""
    actions = actions or {}
    samples: list[Sample] = []

    def add(metric: Metric, value: float | bool | None, *, target: str | None = None,
            gpu: int | None = None) -> None:
        if value is not None:
            samples.append(Sample(metric, float(value), target, gpu))

    for t in status.targets:
        canary = t.last_canary
        ok = canary is not None and canary.ok
        counts = actions.get(t.name, {})
        add(TARGET_HEALTHY, 1 if t.state == "ok" else 0, target=t.name)
        add(CANARY_TTFT, canary.ttft_s if ok and canary else None, target=t.name)
        add(CANARY_TPS, canary.tokens_per_s if ok and canary else None, target=t.name)
        add(CANARY_FAILURES, t.canary_failures, target=t.name)
        add(OPEN_INCIDENTS, 1 if t.incident is not None else 0, target=t.name)
        add(RESTARTS, counts.get("restart", 0), target=t.name)
        add(UNLOADS, counts.get("unload", 0), target=t.name)
    for g in status.gpus:
        percent = None
        if g.mem_used_mib is not None and g.mem_total_mib:
            percent = round(100.0 * g.mem_used_mib / g.mem_total_mib, 2)
        add(GPU_UTIL, g.util, gpu=g.index)
        add(GPU_MEM, g.mem_used_mib, gpu=g.index)
        add(GPU_MEM_PCT, percent, gpu=g.index)
        add(GPU_TEMP, g.temp_c, gpu=g.index)
        add(GPU_POWER, g.power_w, gpu=g.index)
        add(XID_ERRORS, g.xid_errors, gpu=g.index)
    if outbox_depth is None:
        # Alert sinks with their outbox depth (``status.alerts``, from the notify package) when configured.
        sinks = getattr(status, "alerts", None)
        if sinks:
            outbox_depth = sum(int(getattr(sink, "pending", 0) or 0) for sink in sinks)
    add(OUTBOX, outbox_depth)
    return MetricsSnapshot(host=host or status.daemon.host, at=status.generated_at, samples=tuple(samples))


class Deltas:
    """Counters as per-interval deltas (CloudWatch and EMF sum them; they cannot rate a cumulative count).

    The first sight of a counter reports its whole value (counts start at zero with the daemon).
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str | None, int | None], float] = {}

    def apply(self, snapshot: MetricsSnapshot) -> list[Sample]:
        out: list[Sample] = []
        for sample in snapshot:
            if sample.metric.kind != "counter":
                out.append(sample)
                continue
            before = self._last.get(sample.key, 0.0)
            self._last[sample.key] = sample.value
            delta = sample.value - before if sample.value >= before else sample.value  # a reset
            out.append(Sample(sample.metric, delta, sample.target, sample.gpu))
        return out
