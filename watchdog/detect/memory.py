"""Memory growth: a server's GPU memory keeps growing while its models stay the same.

Two shapes of the same fault:

- **A leak within one stretch** of unchanged loaded models: memory rises from
  its floor by ``growth_min_mib`` and ``growth_fraction`` of it, in several
  steps spread over at least ``growth_window``, no single step making most of
  the rise. One big allocation (CUDA graphs, a cache warming up to its first
  large batch) is one step, and healthy.
- **Growth across load/unload cycles**: each time the same set of models is
  loaded (or none is), the memory floor is higher than the time before, three
  times in a row and by the same threshold in total.

It clears when the memory comes back down, or the server restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from watchdog.detect.base import TargetDetector, Verdict, clear, raise_
from watchdog.detect.view import gib, secs
from watchdog.trace.records import Event, GpuSample, ProcessSample, Record, ServerPoll

_STEP_MIB = 32.0
_MIN_STEPS = 4  # growth in at least this many separate steps "keeps growing"
_CYCLES = 3


@dataclass(slots=True)
class _Stretch:
    key: frozenset[str]
    start: float
    floor: float = float("inf")
    peak: float = float("-inf")
    steps: list[tuple[float, float]] = field(default_factory=list)  # (t, size of the step)


class MemoryGrowthDetector(TargetDetector):
    finding = "memory_growth"
    wants = (Event, ProcessSample, ServerPoll, GpuSample)

    def __init__(self, view) -> None:  # type: ignore[no-untyped-def]
        super().__init__(view)
        self.stretch: _Stretch | None = None
        self.floors: dict[frozenset[str], list[float]] = {}
        self.raised_floor: float | None = None
        self.key: frozenset[str] | None = None

    def observe(self, record: Record) -> Verdict | None:
        view = self.view
        restarted = (isinstance(record, Event) and record.event == "restart_finished") or (
            isinstance(record, ProcessSample) and view.pid_changed_t == record.t
        )
        if restarted:
            self.stretch, self.floors, self.key = None, {}, None
            if self.active:
                self.raised_floor = None
                return clear("the server was restarted")
            return None
        if isinstance(record, ServerPoll) and record.state == "ready":
            key = frozenset(m.name for m in record.models)
            if key != self.key:
                self._close_stretch()
                self.key = key
                self.stretch = None
        if not isinstance(record, GpuSample) or record.error is not None or self.key is None:
            return None
        if record.index not in view.gpus or view.state not in ("ready", None):
            return None
        held = view.held_mib()
        if held <= 0 or self._loading():
            return None
        if self.active:
            return self._maybe_clear(held)
        if self.stretch is None:
            self.stretch = _Stretch(self.key, record.t)
        return self._grow(self.stretch, record.t, held) or self._across_cycles(held)

    def _loading(self) -> bool:
        """Memory still short of what the loaded models need: a load in progress."""
        return self.view.short_of_models()

    def _threshold(self, floor: float) -> float:
        return max(float(self.settings.growth_min_mib), self.settings.growth_fraction * floor)

    def _grow(self, stretch: _Stretch, t: float, held: float) -> Verdict | None:
        if held < stretch.floor:
            stretch.floor = held
            stretch.steps = []  # growth counts from the floor
            stretch.peak = held
            return None
        if held > stretch.peak + max(_STEP_MIB, 0.002 * stretch.floor):
            stretch.steps.append((t, held - max(stretch.peak, stretch.floor)))
            stretch.peak = held
        rise = held - stretch.floor
        if rise < self._threshold(stretch.floor) or len(stretch.steps) < _MIN_STEPS:
            return None
        span = stretch.steps[-1][0] - stretch.steps[0][0]
        biggest = max(size for _, size in stretch.steps)
        if span < self.settings.growth_window or biggest > 0.5 * rise:
            return None
        self.raised_floor = stretch.floor
        models = ", ".join(sorted(stretch.key)) or "no model"
        rate = rise / max(t - stretch.steps[0][0], 1.0) * 60
        return raise_(
            f"GPU memory grew from {gib(stretch.floor)} to {gib(held)} in {secs(t - stretch.steps[0][0])} "
            f"({rate:.0f} MiB/min, {len(stretch.steps)} steps) with the same models loaded ({models}); "
            f"{self.view.gpu_brief()}",
            floor_mib=round(stretch.floor), held_mib=round(held), steps=len(stretch.steps), cause="leak",
        )

    def _close_stretch(self) -> None:
        stretch = self.stretch
        if stretch is None or stretch.floor == float("inf"):
            return
        self.floors.setdefault(stretch.key, []).append(stretch.floor)

    def _across_cycles(self, held: float) -> Verdict | None:
        stretch = self.stretch
        assert stretch is not None
        history = self.floors.get(stretch.key, [])
        if len(history) < _CYCLES - 1:
            return None
        floors = history[-(_CYCLES - 1):] + [stretch.floor]
        step = max(_STEP_MIB, 0.002 * floors[0])
        rising = all(b - a >= step for a, b in zip(floors, floors[1:]))
        if not rising or floors[-1] - floors[0] < self._threshold(floors[0]):
            return None
        self.raised_floor = floors[0]
        models = ", ".join(sorted(stretch.key)) or "no model"
        trail = " → ".join(gib(f) for f in floors)
        return raise_(
            f"each time {models} is loaded the memory floor is higher ({trail} over {len(floors)} cycles); "
            f"{self.view.gpu_brief()}",
            floors_mib=[round(f) for f in floors], cause="cycles",
        )

    def _maybe_clear(self, held: float) -> Verdict | None:
        floor = self.raised_floor
        if floor is None:
            return None
        if held <= floor + self._threshold(floor) / 2:
            self.raised_floor = None
            self.stretch = None
            return clear(f"GPU memory came back down to {gib(held)}")
        return None
