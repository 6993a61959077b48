"""The policy: what to do about a finding, how often, and when not to act at all. Pure.

Everything here is a function of the config, of what the detectors see
(:class:`TargetSnapshot`) and of times passed in, so the rules are unit-tested
with a fake clock and the actor only carries them out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from watchdog.config.model import Config, TargetSettings

#: Findings acted on at once; the others wait for a drain (and a maintenance window).
URGENT = frozenset({"hang", "down", "failed_unload"})
#: When an incident holds several findings, the first of these drives the ladder.
PRIORITY = ("down", "hang", "failed_unload", "oom", "memory_growth", "fragmentation", "degraded", "gpu_fault")
#: Ladder steps that restart the server (and count against the restart budget).
RESTARTS = frozenset({"restart"})


@dataclass(frozen=True, slots=True)
class TargetSnapshot:
    """What the detectors' view says about a target now (from watchdog/detect/view.py)."""

    state: str | None = None  # the last poll: ready, loading, down, error
    loading: bool = False  # a model is loading (the server says so, or its memory rises)
    running: int | None = None  # requests running + waiting, if the server says
    busy: bool | None = None  # GPU (or CPU) busy in the last minute
    models: tuple[str, ...] = ()
    held_mib: float = 0.0
    held_by_pid: dict[int, float] = field(default_factory=dict)
    main_pid: int | None = None
    #: The main process answered the API since it started (poll ready or a canary accepted).
    pid_served: bool = False
    findings: frozenset[str] = frozenset()
    model_vram: dict[str, float] = field(default_factory=dict)
    #: Daemon-clock time of the poll ``state`` comes from (None: unknown, taken as fresh).
    poll_t: float | None = None
    #: Daemon-clock time of the last canary that got through (None: none yet).
    canary_ok_t: float | None = None


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """[policy] with the target's [targets.restart] overrides applied."""

    mode: str
    max_restarts: int
    restart_window: float
    cooldown: float
    grace: float
    drain_timeout: float
    maintenance_window: str
    kill_grace: float
    unload_timeout: float
    ladders: dict[str, list[str]]
    method: str  # docker, systemd, command or none (auto resolved)
    restart_timeout: float
    stop_timeout: float

    @classmethod
    def of(cls, config: Config, target: TargetSettings) -> EffectivePolicy:
        p, r = config.policy, target.restart
        ladders = {finding: p.ladder(finding) for finding in PRIORITY}
        ladders.update({k: list(v) for k, v in r.ladders.items()})
        return cls(
            mode=r.mode or p.mode,
            max_restarts=p.max_restarts if r.max_restarts is None else r.max_restarts,
            restart_window=r.restart_window or p.restart_window,
            cooldown=p.cooldown,
            grace=r.grace or p.grace,
            drain_timeout=p.drain_timeout,
            maintenance_window=p.maintenance_window,
            kill_grace=p.kill_grace,
            unload_timeout=p.unload_timeout,
            ladders=ladders,
            method=target.restart_method(),
            restart_timeout=r.timeout,
            stop_timeout=r.stop_timeout,
        )

    def ladder(self, finding: str) -> list[str]:
        return list(self.ladders.get(finding, []))


def driving_finding(findings: Iterable[str]) -> str | None:
    """The finding whose ladder applies when an incident holds several."""
    present = set(findings)
    return next((f for f in PRIORITY if f in present), None)


def describe_ladder(steps: Sequence[str]) -> str:
    return " → ".join(steps) if steps else "no action"


@dataclass(frozen=True, slots=True)
class Budget:
    """Restarts left in the window (like systemd's StartLimitBurst / StartLimitIntervalSec)."""

    used: int
    limit: int
    window: float
    #: Unix time at which the oldest counted restart leaves the window (None if none counted).
    frees_at: float | None

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def spent(self) -> bool:
        return self.used >= self.limit


def budget(restart_starts: Iterable[float], now: float, limit: int, window: float,
           reset_at: float | None = None) -> Budget:
    """Count the restarts started within ``window`` before ``now`` (and after a ``resume``)."""
    since = now - window
    if reset_at is not None:
        since = max(since, reset_at)
    counted = sorted(t for t in restart_starts if t >= since)
    frees_at = counted[0] + window if counted else None
    return Budget(len(counted), limit, window, frees_at)


def in_window(window: str, wall: float) -> bool:
    """Is Unix time ``wall`` inside a daily UTC window "HH:MM-HH:MM" ("" = always)?"""
    if not window:
        return True
    start_text, end_text = window.split("-")
    start = int(start_text[:2]) * 60 + int(start_text[3:])
    end = int(end_text[:2]) * 60 + int(end_text[3:])
    now = datetime.fromtimestamp(wall, tz=UTC)
    minute = now.hour * 60 + now.minute
    if start <= end:
        return start <= minute < end
    return minute >= start or minute < end  # across midnight, e.g. 23:00-01:00


def restart_blocked(snapshot: TargetSnapshot | None, *, manual: bool = False) -> str | None:
    """Why restarting this server now would make things worse, or None.

    Never while a model loads (it would start over, and a load can take minutes),
    never while a prefill runs (work in flight and the GPU busy: progress we cannot
    see yet), and, unless an operator asked, never a healthy idle server holding a
    model (nothing to fix, and the model would have to load again).
    """
    if snapshot is None:
        return None
    if snapshot.loading:
        return "a model is loading"
    if snapshot.running and snapshot.busy and "hang" not in snapshot.findings:
        return f"{snapshot.running} request(s) in flight with the GPU busy (a prefill, not a hang)"
    if not manual and not (snapshot.findings & (URGENT | {"memory_growth", "fragmentation", "degraded", "oom"})):
        if snapshot.models:
            return "the server is idle with a model held and no finding calls for a restart"
        return "no finding calls for a restart any more"
    return None


def drained(snapshot: TargetSnapshot | None) -> bool:
    """No request running or waiting (unknown counts as drained: the server does not say)."""
    return snapshot is None or not snapshot.running


def memory_back(before_mib: float, after_mib: float, expected_mib: float | None) -> bool:
    """Did an unload or a kill give the memory back? At least half of what was expected to go
    (the model's size, else what was held), and always at least 64 MiB unless nothing was held."""
    if before_mib <= 0:
        return True
    expected = expected_mib if expected_mib and expected_mib > 0 else before_mib
    return before_mib - after_mib >= max(min(64.0, before_mib), 0.5 * min(expected, before_mib))
