"""Degraded: the server answers, but far slower than its own baseline.

Two ways to know, because a busy server and an idle one show it differently:

1. **Canaries** (every kind): the median time to first token and tokens per
   second of this model's recent healthy canaries are the baseline;
   ``degraded_canaries`` slow canaries in a row raise it. A canary sent while
   the server was busy with other work is neither slow nor fast (waiting in a
   queue is not degradation), so on an always-busy server this way sees nothing.
2. **The server's own token counter, under load** (vLLM, llama.cpp): tokens per
   second generated between two polls that both saw requests running, against
   what this target generated before at the same or a lower load (batching
   makes the total rate grow with load, never shrink, so a lower load's rate
   is a floor). The median over ``degraded_window`` below 1/``degraded_factor``
   of it raises; below 1/``degraded_cause_factor`` is enough while the GPU
   reports a slowdown (thermal, power brake, hardware slowdown, power cap).

The GPU's clock event reasons and SM clock go into the evidence, and an active
reason is named as the cause. A short canary (a few tokens, its time mostly the
time to first token) says little about decode speed: it never clears a
slowdown that the counter found, and two normal canaries clear only one that
canaries found.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

from watchdog.detect.base import TargetDetector, Verdict, clear, raise_
from watchdog.trace.records import Canary, Record, ServerPoll

_BASELINE_SIZE = 20
_MIN_BASELINE = 5
_TTFT_SLACK_S = 0.5
_BUSY_UTIL = 50.0
#: Fewer tokens than this and a canary's speed is mostly its time to first token.
DECODE_TOKENS = 16
#: Counter samples per load level kept as the baseline, and needed before judging.
_RATE_BASELINE = 120
_MIN_RATE_BASELINE = 8
_MIN_WINDOW_SAMPLES = 4
#: Judge only a server that generated in this fraction of its busy polls (not one mostly prefilling).
_GENERATING = 0.8
#: Back to this fraction of the baseline clears a counter-found slowdown.
_RECOVERED = 0.75


def load_level(running: float) -> int:
    """1 request: 0; 2-3: 1; 4-7: 2; 8-15: 3... (per-request speed changes with the batch size)."""
    return max(0, math.floor(math.log2(max(running, 1.0))))


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
    wants = (Canary, ServerPoll)

    def __init__(self, view) -> None:  # type: ignore[no-untyped-def]
        super().__init__(view)
        self.baselines: dict[str, _Baseline] = {}
        self.slow: list[str] = []
        self.normal_in_a_row = 0
        self.raised_by: str | None = None
        self.rates: dict[int, deque[float]] = {}
        self.ratios: deque[tuple[float, float, float, float, float]] = deque()  # t, ratio, rate, running, baseline
        self.busy_polls: deque[tuple[float, bool]] = deque()
        self.counted_models: tuple[str, ...] = ()

    def observe(self, record: Record) -> Verdict | None:
        if isinstance(record, ServerPoll):
            return self._counter(record)
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
            if self.active and self.raised_by == "canaries":
                self.normal_in_a_row += 1
                if self.normal_in_a_row >= 2:
                    return self._clear(f"canaries are back to normal ({_speed(record)})")
            elif self.active and self.raised_by == "counters" and (record.tokens or 0) >= DECODE_TOKENS:
                return self._clear(f"a {record.tokens}-token canary decodes at its usual speed ({_speed(record)})")
            return None
        self.normal_in_a_row = 0
        self.slow.append(why)
        if not self.active and len(self.slow) >= self.settings.degraded_canaries:
            reasons, gpus = self.view.slowdown()
            cause = f"; the GPU reports {', '.join(reasons)}" if reasons else ""
            self.raised_by = "canaries"
            return raise_(
                f"{len(self.slow)} canaries in a row far slower than usual: {'; '.join(self.slow[-3:])}{cause}",
                rule="canaries", canaries=len(self.slow), model=record.model,
                cause=", ".join(reasons) or None, **gpus,
            )
        return None

    def _clear(self, summary: str) -> Verdict:
        self.raised_by = None
        self.normal_in_a_row = 0
        self.ratios.clear()
        return clear(summary)

    # --- the token counter under load -------------------------------------------------------

    def _counter(self, poll: ServerPoll) -> Verdict | None:
        view = self.view
        if not view.rate_samples or view.rate_samples[-1][0] != poll.t:
            return None  # this poll gave no speed sample (idle, restarted, a gap)
        models = tuple(sorted(view.models))
        if models != self.counted_models:  # another model, another speed: learn it afresh
            self.counted_models = models
            self.rates.clear()
            self.ratios.clear()
            self.busy_polls.clear()
        t, running, rate = view.rate_samples[-1]
        level = load_level(running)
        reference = self._reference(level)
        own = self.rates.setdefault(level, deque(maxlen=_RATE_BASELINE))
        if reference is None:
            own.append(rate)
            return None
        window = self.settings.degraded_window
        self.busy_polls.append((t, rate > 0))
        while self.busy_polls and self.busy_polls[0][0] < t - window:
            self.busy_polls.popleft()
        if rate <= 0 or reference <= 0:
            return None  # no tokens at all is the hang detector's business (or a prefill), not a slowdown
        ratio = rate / reference
        if ratio >= _RECOVERED and not (self.active and self.raised_by == "counters"):
            own.append(rate)  # only healthy-looking samples teach the baseline
        self.ratios.append((t, ratio, rate, running, reference))
        while self.ratios and self.ratios[0][0] < t - window:
            self.ratios.popleft()
        if len(self.ratios) < _MIN_WINDOW_SAMPLES or t - self.ratios[0][0] < window / 2:
            return None
        generating = sum(1 for _, positive in self.busy_polls if positive) / len(self.busy_polls)
        if generating < _GENERATING and not self.active:
            return None  # requests running without tokens in many polls: prefills, not a steady slowdown
        median = statistics.median(r[1] for r in self.ratios)
        reasons, gpus = view.slowdown()
        if self.active:
            if self.raised_by == "counters" and median >= _RECOVERED:
                return self._clear(f"generation is back to {median:.0%} of its usual speed at this load")
            return None
        limit = 1.0 / (self.settings.degraded_cause_factor if reasons else self.settings.degraded_factor)
        if median >= limit:
            return None
        total = statistics.median(r[2] for r in self.ratios)
        usual = statistics.median(r[4] for r in self.ratios)
        load = statistics.median(r[3] for r in self.ratios)
        cause = f"; cause: the GPU reports {', '.join(reasons)}" if reasons else ""
        model = next(iter(view.models), None) if len(view.models) == 1 else None
        self.raised_by = "counters"
        return raise_(
            f"generating {total:.1f} tokens/s with about {load:.0f} request(s) running "
            f"({total / max(load, 1.0):.1f} per request) over {secs_text(window)}: {median:.0%} of the "
            f"{usual:.1f} tokens/s it generated before at this load{cause}",
            rule="counters_busy", ratio=round(median, 3), tokens_per_s=round(total, 2),
            usual_tokens_per_s=round(usual, 2), tokens_per_s_per_request=round(total / max(load, 1.0), 2),
            running=round(load, 1), cause=", ".join(reasons) or None, model=model, **gpus,
        )

    def _reference(self, level: int) -> float | None:
        """The baseline total rate at this load, or at the highest lower load that has one."""
        for candidate in range(level, -1, -1):
            rates = self.rates.get(candidate)
            if rates is not None and len(rates) >= _MIN_RATE_BASELINE:
                return statistics.median(rates)
        return None

    # --- canaries ----------------------------------------------------------------------------

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


def secs_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _speed(canary: Canary) -> str:
    parts = []
    if canary.ttft_s is not None:
        parts.append(f"first token after {canary.ttft_s:.2f} s")
    if canary.tokens_per_s is not None:
        parts.append(f"{canary.tokens_per_s:.1f} tokens/s")
    return ", ".join(parts) or "answered"
