"""The actor against real incidents (SQLite in tmp_path) and real commands, with a scripted view.

The host here is the narrow seam the daemon provides (watchdog/act/host.py):
the detectors' view of the target is set by the test, canaries are answered by
the test, and the restart is a real command (a script that counts its runs in a
file), so what is asserted is what the actor did, its records and its timeline.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from watchdog.act import Actor, State, TargetSnapshot
from watchdog.act.actor import ActError
from watchdog.act.store import ActionStore
from watchdog.config.load import parse_config
from watchdog.config.model import Config
from watchdog.detect.finding import Finding
from watchdog.incidents import Incidents
from watchdog.probes.base import MonotonicClock
from watchdog.trace.records import Canary, Event, Record

pytestmark = pytest.mark.asyncio


def config_text(counter: Path, *, policy: str = "", restart: str = "", exit_code: int = 0) -> str:
    script = f"import sys; open({str(counter)!r}, 'a').write('x'); sys.exit({exit_code})"
    return f"""
[policy]
cooldown = "0.2s"
grace = "1s"
{policy}

[[targets]]
name = "llm"
kind = "ollama"
url = "http://127.0.0.1:9"

[targets.restart]
method = "command"
command = {_toml_list([sys.executable, "-c", script])}
{restart}
"""


def _toml_list(words: list[str]) -> str:
    import json

    return json.dumps(words)


class Host:
    """The daemon's side of the seam, scripted."""

    def __init__(self, config: Config) -> None:
        self.clock = MonotonicClock()
        self._config = config
        self.view = TargetSnapshot(state="ready", models=("m",), held_mib=4000, findings=frozenset({"hang"}))
        self.records: list[Record] = []
        self.canary_ok: Callable[[], bool] = lambda: True
        self.canaries = 0
        #: The view once a restart has started (the new server, as the probes see it then).
        self.after_restart: Callable[[], TargetSnapshot] | None = None

    def config(self) -> Config:
        return self._config

    def emit(self, record: Record) -> None:
        self.records.append(record)

    def snapshot(self, target: str) -> TargetSnapshot | None:
        if self.after_restart is not None and "restart_started" in self.events():
            return self.after_restart()
        return self.view

    async def canary(self, target: str) -> Canary | None:
        self.canaries += 1
        ok = self.canary_ok()
        return Canary(t=self.clock(), target=target, ok=ok, error=None if ok else "timeout", ttft_s=0.1 if ok else None)

    def events(self) -> list[str]:
        return [r.event for r in self.records if isinstance(r, Event)]


async def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
            value = await value  # type: ignore[misc]
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[tuple[Actor, Incidents]] = []

    async def make(text: str) -> tuple[Host, Incidents, Actor]:
        host = Host(parse_config(text))
        incidents = Incidents(tmp_path / "state", clock=host.clock)
        await incidents.start()
        actor = Actor(host, incidents, poll_s=0.05, canary_gap_s=0.1)
        await actor.start()
        made.append((actor, incidents))
        return host, incidents, actor

    yield make
    for actor, incidents in made:
        await actor.stop()
        await incidents.stop()


async def raise_finding(incidents: Incidents, host: Host, finding: str = "hang") -> int:
    events = await incidents.on_findings([Finding(host.clock(), "llm", finding, "raised", f"{finding} for a test")])
    return events[0].incident.id


def runs(counter: Path) -> int:
    return len(counter.read_text()) if counter.exists() else 0


async def incident_json(incidents: Incidents, incident_id: int) -> dict[str, Any]:
    incident = await incidents.get(incident_id)
    assert incident is not None
    return incident.to_json()


async def test_a_hang_is_restarted_verified_and_recovered(world, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    host, incidents, actor = await world(config_text(counter))
    incident_id = await raise_finding(incidents, host)
    await wait_until(lambda: actor.machine("llm").history and actor.machine("llm").state == State.WATCHING
                     and any(t.new == State.RECOVERED for t in actor.machine("llm").history), what="recovered")
    assert runs(counter) == 1
    assert host.events() == ["restart_started", "restart_finished"]
    data = await incident_json(incidents, incident_id)
    [action] = data["actions"]
    assert (action["action"], action["method"], action["result"]) == ("restart", "command", "ok")
    assert action["started"] and action["finished"] and "exited 0" in action["detail"]
    assert data["recovered_after_s"] is not None and data["recovered_after_s"] >= 0
    lines = [e["summary"] for e in data["timeline"] if e["kind"] == "note"]
    assert any(line.startswith("act: watching → acting: hang: restart (rung 1 of 3") for line in lines)
    assert any("act: acting → verifying" in line for line in lines)
    assert any("act: verifying → recovered: fixed by restart: a canary passed" in line for line in lines)
    note = next(e for e in data["timeline"] if e["evidence"].get("action") == "restart")
    assert {"action", "method", "result", "started", "finished", "detail"} <= set(note["evidence"])


async def test_a_server_that_keeps_hanging_climbs_the_ladder_and_gives_up(world, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    host, incidents, actor = await world(config_text(counter))
    host.canary_ok = lambda: False
    incident_id = await raise_finding(incidents, host)
    await wait_until(lambda: any(t.new == State.GAVE_UP for t in actor.machine("llm").history), what="gave up")
    assert runs(counter) == 2  # restart → restart → give up
    status = (await actor.status())["llm"]
    assert status["paused"] and "gave up" in status["paused_reason"]
    data = await incident_json(incidents, incident_id)
    assert [a["result"] for a in data["actions"]] == ["ok", "ok"]
    assert data["recovered_after_s"] is None
    assert any("gave up: the hang ladder is spent: restart (ok, not verified), restart (ok, not verified) "
               "did not fix it" in e["summary"] for e in data["timeline"])
    # Paused: a new incident gets no action until an operator resumes.
    await incidents.on_findings([Finding(host.clock(), "llm", "hang", "cleared", "x")])
    await raise_finding(incidents, host)
    await asyncio.sleep(0.5)
    assert runs(counter) == 2
    await actor.resume("llm")
    assert (await actor.status())["llm"]["restarts_left"] == 3
    await wait_until(lambda: runs(counter) >= 3, what="acting again after resume")


async def test_the_restart_budget_survives_a_new_actor_and_is_spent(world, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    text = config_text(counter, policy="max_restarts = 1")
    host, incidents, actor = await world(text)
    host.canary_ok = lambda: False
    incident_id = await raise_finding(incidents, host)
    await wait_until(lambda: any(t.new == State.GAVE_UP for t in actor.machine("llm").history), what="gave up")
    assert runs(counter) == 1  # the second rung found the budget spent
    data = await incident_json(incidents, incident_id)
    assert any("restart budget spent: 1 restart(s) within 1h" in e["summary"] for e in data["timeline"])
    # A new actor on the same database (a restarted watchdog) still sees the budget spent.
    await actor.resume("llm")
    store = ActionStore(incidents.db_path)
    assert len(store.restart_starts("llm", 0.0)) == 1
    store.close()


async def test_dry_run_records_would_and_does_nothing(world, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    host, incidents, _actor = await world(config_text(counter, policy='mode = "dry-run"'))
    incident_id = await raise_finding(incidents, host)
    data = await wait_until(lambda: _actions(incidents, incident_id), what="an action row")
    assert data[0]["result"] == "would" and data[0]["detail"] == "would restart by command"
    await asyncio.sleep(0.3)
    assert runs(counter) == 0 and host.events() == []


async def _actions(incidents: Incidents, incident_id: int) -> list[dict[str, Any]]:
    return (await incident_json(incidents, incident_id))["actions"]


async def test_observe_decides_nothing(world, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    host, incidents, actor = await world(config_text(counter, restart='mode = "observe"'))
    incident_id = await raise_finding(incidents, host)
    await asyncio.sleep(0.5)
    assert runs(counter) == 0
    assert await _actions(incidents, incident_id) == []
    assert actor.machine("llm").history == []


async def test_a_loading_server_is_never_restarted(world, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    host, incidents, actor = await world(config_text(counter))
    host.view = TargetSnapshot(state="loading", loading=True, findings=frozenset({"down"}))
    await raise_finding(incidents, host, "down")
    await wait_until(lambda: actor.machine("llm").state == State.WAITING, what="waiting")
    await asyncio.sleep(0.5)
    assert runs(counter) == 0
    host.view = TargetSnapshot(state="down", findings=frozenset({"down"}))  # the load ended; still down
    await wait_until(lambda: runs(counter) == 1, what="the restart once the load ended")


def _notes(data: dict[str, Any]) -> list[str]:
    return [e["summary"] for e in data["timeline"] if e["kind"] == "note"]


async def test_a_restarted_server_that_says_ready_is_verified_without_waiting_out_a_load(
        world, tmp_path: Path) -> None:
    # The GPU validation run: the new pid's memory, there at once, was attributed at the next
    # process round, so it "rose" and read as a load for LOADING_WINDOW_S; the verification
    # waited that out although the server said ready and answered. With a grace of an hour,
    # a verification that waits for the "load" to end never comes within this test.
    counter = tmp_path / "runs"
    host, incidents, actor = await world(config_text(counter).replace('grace = "1s"', 'grace = "1h"'))
    host.after_restart = lambda: TargetSnapshot(state="ready", loading=True, models=("m",), held_mib=4000,
                                                findings=frozenset({"hang"}))
    incident_id = await raise_finding(incidents, host)
    await wait_until(lambda: any(t.new == State.RECOVERED for t in actor.machine("llm").history), 60,
                     "recovered while the memory still read as loading")
    assert runs(counter) == 1 and host.canaries == 1
    assert host.events() == ["restart_started", "restart_finished"]
    data = await incident_json(incidents, incident_id)
    assert data["recovered_after_s"] is not None
    assert any("fixed by restart: a canary passed" in line for line in _notes(data))


async def test_a_canary_that_got_through_ends_the_wait_for_a_fresh_poll(world, tmp_path: Path) -> None:
    # The bench's runs: the scheduler's canary got through 0.7 s after the restart, while the
    # verification waited for the next scheduled poll (a poll interval). The last poll here is
    # from before the restart (a timeout) and never renewed.
    counter = tmp_path / "runs"
    host, incidents, actor = await world(config_text(counter).replace('grace = "1s"', 'grace = "1h"'))
    host.after_restart = lambda: TargetSnapshot(state="error", models=(), poll_t=0.0, canary_ok_t=host.clock(),
                                                findings=frozenset({"hang"}))
    await raise_finding(incidents, host)
    await wait_until(lambda: any(t.new == State.RECOVERED for t in actor.machine("llm").history), 60,
                     "recovered on the canary that got through")
    assert runs(counter) == 1


async def test_a_restarted_server_still_loading_is_not_judged_before_its_grace(world, tmp_path: Path) -> None:
    # Never make things worse: a server that says ready while its model still loads (Ollama
    # loads in its runner) fails canaries; they are retried, not judged, until the grace ends.
    counter = tmp_path / "runs"
    host, incidents, actor = await world(config_text(counter).replace('grace = "1s"', 'grace = "1h"'))
    host.after_restart = lambda: TargetSnapshot(state="ready", loading=True, models=("m",), held_mib=2000,
                                                findings=frozenset({"hang"}))
    host.canary_ok = lambda: False
    incident_id = await raise_finding(incidents, host)
    await wait_until(lambda: host.canaries >= 3, what="canaries while it loads")
    assert actor.machine("llm").state == State.VERIFYING and runs(counter) == 1
    assert not any("verification after restart failed" in line for line in _notes(await incident_json(
        incidents, incident_id)))
    host.canary_ok = lambda: True  # the load ended
    await wait_until(lambda: any(t.new == State.RECOVERED for t in actor.machine("llm").history), 60,
                     "recovered once loaded")
    assert runs(counter) == 1


async def test_a_restarted_server_that_says_it_is_loading_gets_no_canary_until_ready(
        world, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    host, incidents, actor = await world(config_text(counter).replace('grace = "1s"', 'grace = "1h"'))
    state = {"now": "loading"}
    looks = [0]

    def after_restart() -> TargetSnapshot:
        looks[0] += 1
        return TargetSnapshot(state=state["now"], loading=state["now"] == "loading", models=("m",),
                              findings=frozenset({"hang"}))

    host.after_restart = after_restart
    await raise_finding(incidents, host)
    await wait_until(lambda: actor.machine("llm").state == State.VERIFYING, what="verifying")
    seen = looks[0]
    await wait_until(lambda: looks[0] >= seen + 5, what="the actor looking at the loading server again")
    assert host.canaries == 0 and runs(counter) == 1
    state["now"] = "ready"
    await wait_until(lambda: any(t.new == State.RECOVERED for t in actor.machine("llm").history), 60,
                     "recovered once ready")
    assert host.canaries == 1


async def test_a_failed_command_escalates_and_the_incident_says_so(world, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    host, incidents, actor = await world(config_text(counter, exit_code=3))
    incident_id = await raise_finding(incidents, host)
    await wait_until(lambda: any(t.new == State.GAVE_UP for t in actor.machine("llm").history), what="gave up")
    data = await incident_json(incidents, incident_id)
    assert [a["result"] for a in data["actions"]] == ["failed", "failed"]
    assert "exited 3" in data["actions"][0]["detail"]


async def test_an_action_interrupted_by_a_kill_is_recorded_and_not_repeated(world, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    # What a SIGKILLed watchdog leaves: an open incident and an intent without a result.
    clock = MonotonicClock()
    incidents = Incidents(tmp_path / "state", clock=clock)
    await incidents.start()
    [event] = await incidents.on_findings([Finding(clock(), "llm", "hang", "raised", "hang")])
    await incidents.stop()
    store = ActionStore(tmp_path / "state" / "state.db")
    store.begin(target="llm", incident_id=event.incident.id, finding="hang", step=0, action="restart",
                method="command", started=clock.wall_start)
    store.close()
    _host, incidents, actor = await world(config_text(counter))
    await wait_until(lambda: any(t.new == State.RECOVERED for t in actor.machine("llm").history), what="verified")
    assert runs(counter) == 0  # verified, not redone
    data = await incident_json(incidents, event.incident.id)
    assert [a["result"] for a in data["actions"]] == ["interrupted"]
    assert any("interrupted" in e["summary"] and "not repeated" in e["summary"] for e in data["timeline"])


async def test_manual_restart_pause_and_resume(world, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    host, _incidents, actor = await world(config_text(counter))
    host.view = TargetSnapshot(state="ready", models=("m",))
    answer = await actor.manual("restart", "llm")
    assert answer["result"] == "ok" and answer["verified"] is True and runs(counter) == 1
    await actor.pause("llm", seconds=3600)
    with pytest.raises(ActError, match="paused"):
        await actor.manual("restart", "llm")
    assert (await actor.status())["llm"]["paused_until"] is not None
    await actor.resume("llm")
    host.view = TargetSnapshot(state="loading", loading=True)
    with pytest.raises(ActError, match="a model is loading"):
        await actor.manual("restart", "llm")
    with pytest.raises(ActError, match="no target named"):
        await actor.manual("restart", "nope")


async def test_a_misattributed_process_is_never_signalled(world, tmp_path: Path) -> None:
    """The view says a foreign process holds the target's memory (a wrong process_match, a port taken
    over): the kill rung finds no per-pid proof, signals nothing, and the ladder goes on."""
    import subprocess

    import psutil

    counter = tmp_path / "runs"
    text = config_text(counter).replace('method = "command"', 'method = "none"')
    foreign = subprocess.Popen(["sleep", "300"])  # noqa: ASYNC220 - a test's foreign process
    try:
        host, incidents, actor = await world(text)
        host.view = TargetSnapshot(state="ready", held_mib=3000, held_by_pid={foreign.pid: 3000.0},
                                   main_pid=os.getpid() + 10_000_000, pid_served=True,
                                   findings=frozenset({"failed_unload"}))
        events = await incidents.on_findings([Finding(host.clock(), "llm", "failed_unload", "raised", "held",
                                                      {"pids": [foreign.pid]})])
        incident_id = events[0].incident.id
        await wait_until(lambda: any(t.new == State.GAVE_UP for t in actor.machine("llm").history), what="gave up")
        data = await incident_json(incidents, incident_id)
        kill = next(a for a in data["actions"] if a["action"] == "kill_orphans")
        assert kill["result"] == "skipped" and "nothing signalled" in kill["detail"]
        assert foreign.poll() is None and psutil.Process(foreign.pid).status() != psutil.STATUS_ZOMBIE
        assert [a["action"] for a in data["actions"]] == ["unload", "kill_orphans", "restart"]
        assert runs(counter) == 0
    finally:
        foreign.kill()
        foreign.wait()


async def test_a_non_urgent_finding_waits_for_the_drain(world, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    host, incidents, actor = await world(config_text(counter))
    host.view = TargetSnapshot(state="ready", models=("m",), running=2, busy=False,
                               findings=frozenset({"memory_growth"}))
    incident_id = await raise_finding(incidents, host, "memory_growth")
    await wait_until(lambda: actor.machine("llm").state == State.WAITING, what="draining")
    await asyncio.sleep(0.5)
    assert runs(counter) == 0  # requests still running: not yet
    host.view = TargetSnapshot(state="ready", models=("m",), running=0, findings=frozenset({"memory_growth"}))
    await wait_until(lambda: any(t.new == State.RECOVERED for t in actor.machine("llm").history), what="recovered")
    assert runs(counter) == 1
    data = await incident_json(incidents, incident_id)
    assert any("draining" in e["summary"] for e in data["timeline"])


async def test_outside_the_maintenance_window_a_non_urgent_finding_waits(world, tmp_path: Path) -> None:
    from datetime import datetime, timedelta

    counter = tmp_path / "runs"
    later = datetime.now(UTC) + timedelta(hours=3)
    window = f"{later:%H}:00-{(later + timedelta(hours=1)):%H}:00"
    host, incidents, actor = await world(config_text(counter, policy=f'maintenance_window = "{window}"'))
    host.view = TargetSnapshot(state="ready", models=("m",), findings=frozenset({"degraded"}))
    incident_id = await raise_finding(incidents, host, "degraded")
    await wait_until(lambda: actor.machine("llm").state == State.WAITING, what="waiting for the window")
    data = await incident_json(incidents, incident_id)
    assert any(f"maintenance window {window}" in e["summary"] for e in data["timeline"])
    await asyncio.sleep(0.3)
    assert runs(counter) == 0
