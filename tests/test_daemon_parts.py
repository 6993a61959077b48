"""The daemon driven over parts built by ``daemon/builder.py``: listeners start, reload and stop in
order, and a reload restarts only the workers of the targets that changed.

In-process, over the real simulator (HTTP) and the simulated GPU; no ``watchdogctl run``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.daemon_support import write_config
from tests.simulator import sim_factory  # noqa: F401 - fixture
from tests.support import until
from watchdog.config import Config, load_config
from watchdog.daemon.builder import build
from watchdog.daemon.daemon import Daemon
from watchdog.listener import Component, Hub
from watchdog.trace.records import Event


class Recorder:
    """A listener that writes down what the daemon does to it, and uses the hub as act would."""

    def __init__(self, name: str, hub: Hub, calls: list[str]) -> None:
        self.name, self.hub, self.calls = name, hub, calls
        self.configs: list[Config] = []

    async def start(self) -> None:
        self.calls.append(f"start {self.name}")

    async def reload(self, config: Config) -> None:
        self.calls.append(f"reload {self.name}")
        self.configs.append(config)

    async def stop(self) -> None:
        self.calls.append(f"stop {self.name}")


async def test_listeners_and_per_target_workers(tmp_path: Path, sim_factory: Any) -> None:  # noqa: F811
    one = sim_factory("llamacpp", gpu_dir=tmp_path / "gpu")
    two = sim_factory("llamacpp", gpu_dir=tmp_path / "gpu")
    targets = [{"name": "one", "kind": "llamacpp", "url": one.url}, {"name": "two", "kind": "llamacpp", "url": two.url}]
    path = write_config(tmp_path / "watchdog.toml", tmp_path, [dict(t) for t in targets], gpu_dir=tmp_path / "gpu")
    calls: list[str] = []
    made: list[Recorder] = []

    def factory(name: str) -> Any:
        def make(hub: Hub) -> Component:
            made.append(Recorder(name, hub, calls))
            return made[-1]
        return make

    config = load_config(str(path))
    parts = build(config, str(path), listeners=[factory("act"), factory("notify")])
    assert [listener.name for listener in parts.listeners] == ["act", "notify"]
    assert all(isinstance(listener, Component) for listener in parts.listeners)
    daemon = Daemon(str(path), config, parts=parts)
    task = asyncio.create_task(daemon.serve())
    try:
        await until(lambda: daemon.ready, 30, "the first round")
        assert calls == ["start act", "start notify"]
        hub = made[0].hub
        assert hub.attributor() is not None and sorted(hub.header.targets[i].name for i in range(2)) == ["one", "two"]
        assert (await hub.status()).daemon.mode == "observe"  # nothing acts yet, whatever the policy says
        hub.emit(Event(t=hub.clock(), target="one", event="restart_started"))
        await until(lambda: any(isinstance(r, Event) for r in parts.recorder.records()), 30, "the event in the recorder")
        await until(lambda: "one" in hub.latest.canaries, 30, "the daemon's own first canary")
        canary = await hub.canary_now("one")
        assert canary is not None and canary.target == "one"

        workers = dict(parts.scheduler.workers)
        changed = [dict(t) for t in targets]
        changed[1]["poll_interval"] = "2s"
        write_config(path, tmp_path, changed, gpu_dir=tmp_path / "gpu")
        result = await daemon.reload()
        assert result.ok and result.message == "reloaded"
        assert calls[-2:] == ["reload act", "reload notify"]
        assert made[0].configs[-1].targets[1].poll_interval == 2.0
        assert parts.scheduler.workers["one"] is workers["one"]  # unchanged: kept running
        assert parts.scheduler.workers["two"] is not workers["two"]  # changed: replaced
        assert daemon.suite is not None and daemon.suite.targets["one"] is workers["one"].probes
        await until(lambda: daemon.ready, 30, "the first round after the reload")
        polls_before = daemon.latest.polls.get("one")
        await until(lambda: daemon.latest.polls.get("one") is not polls_before, 30, "target one polled after the reload")
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 30)
    assert calls[-2:] == ["stop notify", "stop act"]


async def test_a_slow_first_run_delays_the_schedule_and_skips_nothing() -> None:
    """The first GPU round at 32 targets took 1.2 s over its 1 s interval; APScheduler, already
    running it, skipped the next slot (max_instances = 1) and the scale bench counted it. The
    first run is now outside APScheduler, and the schedule starts when it ends."""
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED

    from watchdog.daemon.workers import Scheduler

    done: list[str] = []
    scheduler = Scheduler(on_done=done.append)
    scheduler.start()
    assert scheduler._scheduler is not None
    refused: list[Any] = []
    scheduler._scheduler.add_listener(refused.append, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
    starts: list[float] = []
    ends: list[float] = []

    async def round_() -> None:
        starts.append(time.monotonic())
        if len(starts) == 1:
            await asyncio.sleep(2.2)  # the slow first round: over two slots of its 1 s interval
        ends.append(time.monotonic())

    try:
        scheduler.every("gpu", 1.0, round_, 10.0)
        await until(lambda: len(ends) >= 3, 30, "three rounds")
        assert done[:3] == ["gpu", "gpu", "gpu"]  # the first run reports like any other (readiness)
        assert starts[1] >= ends[0]  # never two at once
        assert refused == []  # APScheduler never had a run to refuse or drop
        assert scheduler.timings.skipped == 0 and scheduler.timings.runs >= 3
    finally:
        await scheduler.stop()


async def test_a_job_cancelled_during_its_first_run_is_not_scheduled_after_it() -> None:
    from watchdog.daemon.workers import Scheduler

    scheduler = Scheduler()
    scheduler.start()
    assert scheduler._scheduler is not None
    running, release = asyncio.Event(), asyncio.Event()
    runs: list[int] = []

    async def poll() -> None:
        runs.append(1)
        running.set()
        await release.wait()

    try:
        scheduler.every("poll:x", 0.2, poll, 10.0)
        await asyncio.wait_for(running.wait(), 30)
        first = scheduler._first_runs["poll:x"]
        scheduler.cancel("poll:x")  # a reload removing the target while its first poll runs
        await asyncio.wait_for(asyncio.gather(first, return_exceptions=True), 30)
        assert scheduler._scheduler.get_job("poll:x") is None and "poll:x" not in scheduler._first_runs
        scheduler.every("poll:x", 0.2, poll, 10.0)  # and added again: scheduled as new
        release.set()
        await until(lambda: scheduler._scheduler is not None and scheduler._scheduler.get_job("poll:x") is not None,
                    30, "the schedule after the new first run")
    finally:
        await scheduler.stop()
