"""The daemon driven over parts built by ``daemon/builder.py``: listeners start, reload and stop in
order, and a reload restarts only the workers of the targets that changed.

In-process, over the real simulator (HTTP) and the simulated GPU; no ``watchdogctl run``.
"""

from __future__ import annotations

import asyncio
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
