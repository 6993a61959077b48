"""The async facade: one worker thread for the store, events on the loop, a loop that never waits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

from watchdog.detect.finding import Finding
from watchdog.incidents import Incidents, read_recording
from watchdog.trace.records import GpuDevice, GpuSample, Header, ServerPoll, TraceTarget

HEADER = Header(host="h", gpus=[GpuDevice(0, "GPU", 12282)], targets=[TraceTarget("ollama", "ollama", [0])])


class FakeClock:
    """The daemon clock, moved by the test."""

    def __init__(self, wall_start: float = 1_700_000_000.0) -> None:
        self.wall_start = wall_start
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Recorder:
    """A stand-in flight recorder: a list of records and ``records_since``."""

    def __init__(self) -> None:
        self.records: list = []

    def add(self, records) -> None:
        self.records.extend(records)

    def since(self, t: float):
        return [r for r in self.records if r.t >= t]


def batch(t: float) -> list:
    return [GpuSample(t=t, index=0, util=0.0, mem_used_mib=9000), ServerPoll(t=t, target="ollama", state="ready")]


async def test_the_daemon_flow_opens_records_and_closes_with_events_on_the_loop(tmp_path):
    clock, recorder = FakeClock(), Recorder()
    incidents = Incidents(tmp_path, clock=clock, header=HEADER, context=recorder.since, incident_context=20.0)
    seen: list[tuple[str, int, str]] = []
    threads: set[str] = set()

    def listener(event):
        threads.add(threading.current_thread().name)
        seen.append((event.kind, event.incident.id, event.change.kind))

    incidents.bus.subscribe(listener)
    await incidents.start()
    try:
        for t in range(0, 50):
            clock.t = float(t)
            records = batch(float(t))
            recorder.add(records)
            await incidents.on_records(records)
            if t == 40:
                await incidents.on_findings([Finding(40.0, "ollama", "hang", "raised", "no tokens for 20 s")])
                await incidents.note("ollama", "restart requested (observe mode: not done)")
        assert list(incidents.open_incidents) == ["ollama"]
        incident = incidents.open_incidents["ollama"]
        await incidents.on_findings([Finding(49.0, "ollama", "hang", "cleared", "tokens again")])
        assert incidents.open_incidents == {}
        for t in range(50, 80):
            clock.t = float(t)
            await incidents.on_records(batch(float(t)))

        assert seen == [("opened", incident.id, "raised"), ("updated", incident.id, "note"), ("closed", incident.id, "cleared")]
        assert threads == {threading.main_thread().name}  # listeners run on the loop, not in the worker

        [listed] = await incidents.list()
        full = await incidents.get(listed.id)
        assert [e.kind for e in full.timeline] == ["raised", "note", "cleared"]
        trace = read_recording(incidents.recording_path(full))
        times = sorted({r.t for r in trace.records})
        assert trace.problems == [] and times[0] == 20.0 and times[-1] == 69.0
        assert await incidents.get(999) is None
    finally:
        await incidents.stop()


async def test_a_slow_store_never_blocks_the_loop(tmp_path):
    clock = FakeClock()
    incidents = Incidents(tmp_path, clock=clock, header=HEADER)
    await incidents.start()
    # Another writer holds the database for a while: the store's commit waits on its busy timeout.
    holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    ticks = 0
    release = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not release.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    async def release_later() -> None:
        # The loop must keep ticking while the finding waits on the lock.
        while ticks < 30:
            await asyncio.sleep(0.01)
        holder.execute("ROLLBACK")
        release.set()

    ticking = asyncio.create_task(ticker())
    releasing = asyncio.create_task(release_later())
    try:
        events = await incidents.on_findings([Finding(1.0, "ollama", "down", "raised", "refused")])
        assert ticks >= 30 and [e.kind for e in events] == ["opened"]
        assert incidents.problems == []  # the commit got through once the lock went
    finally:
        release.set()
        await asyncio.gather(ticking, releasing)
        holder.close()
        await incidents.stop()


async def test_restart_through_the_facade_reloads_open_incidents(tmp_path):
    clock = FakeClock()
    first = Incidents(tmp_path, clock=clock, header=HEADER)
    await first.start()
    await first.on_findings([Finding(5.0, "ollama", "hang", "raised", "stuck")])
    await first.stop()

    second = Incidents(tmp_path, clock=FakeClock(wall_start=clock.wall_start + 60), header=HEADER)
    notes = []
    second.bus.subscribe(lambda e: notes.append(e.change.summary))
    await second.start()
    try:
        assert list(second.open_incidents) == ["ollama"]
        assert len(notes) == 1 and "after a clean stop" in notes[0]
    finally:
        await second.stop()


async def test_an_unusable_state_dir_never_stops_the_daemon(tmp_path):
    blocked = tmp_path / "state"
    blocked.write_text("a file where the state directory should be")
    incidents = Incidents(blocked, clock=FakeClock(), header=HEADER)
    seen = []
    incidents.bus.subscribe(lambda e: seen.append((e.kind, e.incident.target)))
    await incidents.start()
    try:
        assert any("state store unusable" in p and "kept in memory only" in p for p in incidents.problems)
        await incidents.on_findings([Finding(1.0, "ollama", "hang", "raised", "stuck")])
        assert seen == [("opened", "ollama")] and list(incidents.open_incidents) == ["ollama"]
        assert incidents.open_incidents["ollama"].recording is None  # nowhere to write it
        [listed] = await incidents.list()
        assert listed.target == "ollama"
    finally:
        await incidents.stop()
    assert blocked.read_text() == "a file where the state directory should be"


async def test_a_database_from_a_newer_version_is_kept_and_history_runs_in_memory(tmp_path):
    from watchdog.incidents.schema import MIGRATIONS, Migration
    from watchdog.incidents.store import IncidentStore

    IncidentStore(tmp_path / "state.db", migrations=(*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "future", ()))).close()
    before = (tmp_path / "state.db").read_bytes()
    incidents = Incidents(tmp_path, clock=FakeClock(), header=HEADER)
    await incidents.start()
    try:
        assert any("newer than this watchdog knows" in p for p in incidents.problems)
    finally:
        await incidents.stop()
    assert (tmp_path / "state.db").read_bytes() == before


async def test_canaries_are_counted_per_model_even_with_no_incident_open(tmp_path):
    from watchdog.incidents.store import IncidentStore
    from watchdog.trace.records import Canary

    incidents = Incidents(tmp_path, clock=FakeClock(), header=HEADER)
    await incidents.start()
    try:
        await incidents.on_records([*batch(1.0), Canary(t=2.0, target="ollama", model="a", ok=True)])
        await incidents.on_records([Canary(t=3.0, target="ollama", model="a", ok=False, error="timeout"),
                                    Canary(t=4.0, target="ollama", model="b", ok=True)])
        assert incidents.open_incidents == {}
    finally:
        await incidents.stop()
    with IncidentStore(tmp_path / "state.db") as store:
        assert store.canary_counts() == [("ollama", "a", 2, 1), ("ollama", "b", 1, 0)]
