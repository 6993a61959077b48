"""The actor as a daemon listener (watchdog/listener.py): built from the daemon's Hub by the builder.

:class:`HubHost` is the seam the actor needs (watchdog/act/host.py) on top of
the Hub: records go into the pipeline, the detectors' view of a target becomes
a :class:`~watchdog.act.policy.TargetSnapshot`, canaries are the probes' own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from watchdog.act.actor import Actor
from watchdog.act.policy import TargetSnapshot
from watchdog.config.model import Config
from watchdog.trace.records import Canary, Record

if TYPE_CHECKING:
    from watchdog.listener import Hub
    from watchdog.status.model import ActionStatus

#: Memory that rose within this many seconds counts as a load in progress (as the hang detector judges).
LOADING_WINDOW_S = 5.0
BUSY_WINDOW_S = 60.0


class _Clock:
    """The hub's clock with the Unix time of its zero (the actor records wall times)."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self.wall_start = getattr(clock, "wall_start", time.time() - clock())

    def __call__(self) -> float:
        return float(self._clock())


class HubHost:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.clock = _Clock(hub.clock)

    def config(self) -> Config:
        return self.hub.config

    def emit(self, record: Record) -> None:
        self.hub.emit(record)

    def snapshot(self, target: str) -> TargetSnapshot | None:
        view = self.hub.target_view(target)
        if view is None:
            return None
        now = view.now
        running = None
        if view.running is not None or view.waiting is not None:
            running = (view.running or 0) + (view.waiting or 0)
        return TargetSnapshot(
            state=view.state,
            loading=view.loading(now - LOADING_WINDOW_S, now),
            running=running,
            busy=view.busy(now - BUSY_WINDOW_S, now),
            models=tuple(view.models),
            held_mib=view.held_mib(),
            held_by_pid=view.held_by_pid(),
            main_pid=view.pid,
            pid_served=view.pid_served,
            findings=frozenset(f.finding for f in self.hub.active_findings() if f.target == target),
            model_vram=dict(view.model_vram),
            poll_t=view.poll.t if view.poll is not None else None,
            canary_ok_t=view.last_canary.t if view.last_canary is not None and view.last_canary.ok else None,
        )

    def owner_of(self, pid: int) -> str | None:
        """The target the probes' attribution gives the pid (blocking: psutil, /proc)."""
        attributor = self.hub.attributor()
        return attributor.owner(pid) if attributor is not None else None

    async def canary(self, target: str) -> Canary | None:
        """A canary now; if one is already in flight, wait for the next free moment (bounded)."""
        config = self.hub.config
        try:
            timeout = config.target(target).canary.timeout
        except KeyError:
            return None
        deadline = asyncio.get_running_loop().time() + timeout + 5.0
        while True:
            canary = await self.hub.canary_now(target)
            if canary is not None or asyncio.get_running_loop().time() >= deadline:
                return canary
            if not self.hub.canary_in_flight(target):
                return None  # no model to ask (or unknown target): the actor judges by the poll
            await asyncio.sleep(0.2)


class ActListener:
    """Component "act": starts the actor after the pipeline, tells the hub that it acts."""

    name = "act"

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.actor = Actor(HubHost(hub), hub.incidents)

    async def start(self) -> None:
        await self.actor.start()
        self.hub.acts = True
        self.hub.action_status = self.status

    async def reload(self, config: Config) -> None:
        await self.actor.reload()  # the actor reads hub.config at every decision

    async def stop(self) -> None:
        self.hub.acts = False
        self.hub.action_status = None
        await self.actor.stop()

    async def status(self) -> Mapping[str, ActionStatus]:
        from watchdog.status.model import ActionStatus

        out = {}
        for name, info in (await self.actor.status()).items():
            until = info.get("paused_until")
            out[name] = ActionStatus(**{**info, "paused_until": None if until is None else
                                        datetime.fromtimestamp(until, tz=UTC)})
        return out


def make_actions(hub: Hub) -> ActListener:
    """The builder's factory for the act listener."""
    return ActListener(hub)
