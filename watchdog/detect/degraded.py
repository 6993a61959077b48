"""Degraded: the server answers, but far slower than its own baseline.

The baseline is the median time to first token and tokens per second of this
model's recent healthy canaries. A canary sent while the server was busy with
other work is neither slow nor fast: waiting in a queue is not degradation.
``degraded_canaries`` slow canaries in a row raise it; two normal ones clear it.
"""

from __future__ import annotations

import statistics
from collections import deque

from watchdog.detect.base import TargetDetector, Verdict, clear, raise_
from watchdog.trace.records import Canary, Record

_BASELINE_SIZE = 20
_MIN_BASELINE = 5
_TTFT_SLACK_S = 0.5
_BUSY_UTIL = 50.0


class _Baseline:
    __slots__ = ("ttft", "tps")

    def __init__(self) -> None:
        self.ttft: deque[float] = deque(maxlen=_BASELINE_SIZE)
        self.tps: deque[float] = deque(maxlen=_BASELINE_SIZE)

    def add(self, canary: Canary) -> None:
        if canary.ttft_s is not None:
            self.ttft.append(canary.ttft_s)
        if canary.tokens_per_s is not None and (canary.tokens or 0) >= 2:
            self.tps.append(canary.tokens_per_s)

    def ready(self) -> bool:
        return len(self.ttft) >= _MIN_BASELINE or len(self.tps) >= _MIN_BASELINE


class DegradedDetector(TargetDetector):
    finding = "degraded"
    wants = (Canary,)

    def __init__(self, view) -> None:  # type: ignore[no-untyped-def]
        super().__init__(view)
        self.baselines: dict[str, _Baseline] = {}
        self.slow: list[str] = []
        self.normal_in_a_row = 0

    def observe(self, record: Record) -> Verdict | None:
        if not isinstance(record, Canary) or not record.ok:
            return None
        if self._busy_with_others(record):
            return None
        baseline = self.baselines.setdefault(record.model or "", _Baseline())
        if not baseline.ready():
            baseline.add(record)
            return None
        why = self._slower(record, baseline)
        if why is None:
            self.slow.clear()
            baseline.add(record)
            if self.active:
                self.normal_in_a_row += 1
                if self.normal_in_a_row >= 2:
                    return clear(f"canaries are back to normal ({_speed(record)})")
            return None
        self.normal_in_a_row = 0
        self.slow.append(why)
        if not self.active and len(self.slow) >= self.settings.degraded_canaries:
            return raise_(
                f"{len(self.slow)} canaries in a row far slower than usual: {'; '.join(self.slow[-3:])}",
                canaries=len(self.slow), model=record.model,
            )
        return None

    def _busy_with_others(self, canary: Canary) -> bool:
        view = self.view
        requests = view.requests_before(canary.start)
        if requests is not None:
            return requests > 0
        before = view.util.at_or_before(canary.start)
        return before is not None and before >= _BUSY_UTIL

    def _slower(self, canary: Canary, baseline: _Baseline) -> str | None:
        factor = self.settings.degraded_factor
        if canary.ttft_s is not None and len(baseline.ttft) >= _MIN_BASELINE:
            usual = statistics.median(baseline.ttft)
            if canary.ttft_s > usual * factor + _TTFT_SLACK_S:
                return f"first token after {canary.ttft_s:.2f} s (usually {usual:.2f} s)"
        if canary.tokens_per_s is not None and (canary.tokens or 0) >= 2 and len(baseline.tps) >= _MIN_BASELINE:
            usual = statistics.median(baseline.tps)
            if canary.tokens_per_s * factor < usual:
                return f"{canary.tokens_per_s:.1f} tokens/s (usually {usual:.1f})"
        return None


def _speed(canary: Canary) -> str:
    parts = []
    if canary.ttft_s is not None:
        parts.append(f"first token after {canary.ttft_s:.2f} s")
    if canary.tokens_per_s is not None:
        parts.append(f"{canary.tokens_per_s:.1f} tokens/s")
    return ", ".join(parts) or "answered"
