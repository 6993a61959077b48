"""The detection engine: records in, changes of findings out.

The daemon feeds it every observation as it is made; ``watchdogctl replay``
feeds it a trace file. Same code, same results: time comes only from the
records, and nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from watchdog.config.model import DetectSettings
from watchdog.detect.base import TargetDetector, Verdict
from watchdog.detect.degraded import DegradedDetector
from watchdog.detect.down import DownDetector
from watchdog.detect.finding import Finding
from watchdog.detect.gpu_fault import GpuFaultDetector
from watchdog.detect.hang import HangDetector
from watchdog.detect.memory import MemoryGrowthDetector
from watchdog.detect.oom import FragmentationDetector, OomDetector
from watchdog.detect.profile import TargetProfile
from watchdog.detect.truncation import TruncationDetector
from watchdog.detect.unload import UnloadDetector
from watchdog.detect.view import TargetView
from watchdog.trace.records import (
    Canary,
    Event,
    GpuSample,
    LogLine,
    ProcessSample,
    Record,
    ServerPoll,
    Xid,
)

DETECTORS: tuple[type[TargetDetector], ...] = (
    DownDetector,
    HangDetector,
    UnloadDetector,
    MemoryGrowthDetector,
    FragmentationDetector,
    OomDetector,
    DegradedDetector,
    TruncationDetector,
)


class _Target:
    __slots__ = ("view", "detectors", "routes")

    def __init__(self, profile: TargetProfile) -> None:
        self.view = TargetView(profile)
        self.detectors = [cls(self.view) for cls in DETECTORS]
        self.routes: dict[type, list[TargetDetector]] = {}

    def for_record(self, record: Record) -> list[TargetDetector]:
        kind = type(record)
        route = self.routes.get(kind)
        if route is None:
            route = [d for d in self.detectors if any(issubclass(kind, w) for w in d.wants)]
            self.routes[kind] = route
        return route


class DetectionEngine:
    """Runs every detector for every target over a stream of records."""

    def __init__(
        self,
        profiles: Iterable[TargetProfile] = (),
        defaults: DetectSettings | None = None,
        gpu_totals: dict[int, float] | None = None,
    ) -> None:
        self.defaults = defaults or DetectSettings()
        # Shared, not copied: the daemon fills it in as it discovers the GPUs.
        self.gpu_totals = gpu_totals if gpu_totals is not None else {}
        self.targets: dict[str, _Target] = {}
        for profile in profiles:
            self._add(profile)
        self.gpu_faults = GpuFaultDetector(self.defaults)
        self.now = 0.0
        self._active: dict[tuple[str, str], Finding] = {}

    def _add(self, profile: TargetProfile) -> _Target:
        target = _Target(profile)
        target.view.gpu_totals = self.gpu_totals
        self.targets[profile.name] = target
        return target

    def active(self) -> list[Finding]:
        """The findings raised now, oldest first."""
        return sorted(self._active.values(), key=lambda f: f.t)

    def feed(self, record: Record) -> list[Finding]:
        """Take one record; return the findings it raised or cleared (usually none)."""
        t = getattr(record, "t", None)
        if t is None:
            return []
        self.now = max(self.now, t)
        changes: list[Finding] = []
        if isinstance(record, GpuSample):
            total = record.extra.get("mem_total_mib") if record.extra else None
            if isinstance(total, (int, float)) and record.index not in self.gpu_totals:
                self.gpu_totals[record.index] = float(total)
            for target in self.targets.values():
                target.view.now = self.now
                if target.view.update_gpu(record):
                    self._run(target, record, changes)
            self._gpu(record, changes)
            return changes
        if isinstance(record, Xid):
            self._gpu(record, changes)
            return changes
        name = getattr(record, "target", None)
        if not isinstance(name, str):
            return changes
        target = self.targets.get(name) or self._add(TargetProfile(name, settings=self.defaults))
        view = target.view
        view.now = self.now
        if isinstance(record, ServerPoll):
            view.update_poll(record)
        elif isinstance(record, Canary):
            view.update_canary(record)
        elif isinstance(record, ProcessSample):
            view.update_process(record)
        elif isinstance(record, Event):
            view.update_event(record)
        elif not isinstance(record, LogLine):
            return changes
        self._run(target, record, changes)
        return changes

    def _run(self, target: _Target, record: Record, changes: list[Finding]) -> None:
        name = target.view.profile.name
        for detector in target.for_record(record):
            verdict = detector.observe(record)
            if verdict is not None:
                if verdict.raise_ and "model" not in verdict.evidence and target.view.models:
                    # Which model was served, for incidents and `watchdogctl report`.
                    verdict.evidence["model"] = ", ".join(sorted(target.view.models))
                finding = self._apply(name, detector.finding, verdict)
                if finding is not None:
                    detector.active = verdict.raise_
                    changes.append(finding)

    def _gpu(self, record: Record, changes: list[Finding]) -> None:
        for target, verdict in self.gpu_faults.observe(record):
            finding = self._apply(target, "gpu_fault", verdict)
            if finding is not None:
                changes.append(finding)

    def _apply(self, target: str, kind: str, verdict: Verdict) -> Finding | None:
        key = (target, kind)
        if verdict.raise_ == (key in self._active):
            return None
        finding = Finding(
            t=self.now,
            target=target,
            finding=kind,
            state="raised" if verdict.raise_ else "cleared",
            summary=verdict.summary,
            evidence=verdict.evidence,
        )
        if verdict.raise_:
            self._active[key] = finding
        else:
            del self._active[key]
        return finding
