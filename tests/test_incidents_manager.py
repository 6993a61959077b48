"""The incident manager over a real SQLite file and real recording files."""

from __future__ import annotations

import json
import sqlite3

import pytest

from watchdog.detect.finding import Finding
from watchdog.incidents import IncidentManager, IncidentStore, read_recording
from watchdog.incidents.events import EventBus
from watchdog.incidents.model import IncidentEvent
from watchdog.redact import Redactor
from watchdog.trace import read_trace
from watchdog.trace.records import (
    Canary,
    GpuDevice,
    GpuSample,
    Header,
    LogLine,
    ServerPoll,
    TraceTarget,
    Xid,
)

WALL = 1_700_000_000.0
HEADER = Header(
    host="nas-01",
    gpus=[GpuDevice(0, "GPU A", 12282), GpuDevice(1, "GPU B", 12282)],
    targets=[TraceTarget("ollama", "ollama", [0]), TraceTarget("vllm", "vllm", [1])],
)


def raised(t: float, target: str, finding: str, summary: str = "", **evidence) -> Finding:
    return Finding(t, target, finding, "raised", summary or f"{finding} on {target}", evidence)


def cleared(t: float, target: str, finding: str, summary: str = "") -> Finding:
    return Finding(t, target, finding, "cleared", summary or f"{finding} over on {target}")


def records_between(start: float, end: float, step: float = 1.0) -> list:
    out = []
    t = start
    while t <= end:
        out.append(GpuSample(t=t, index=0, util=0.0, mem_used_mib=9000))
        out.append(GpuSample(t=t, index=1, util=55.0, mem_used_mib=7000))
        out.append(ServerPoll(t=t, target="ollama", state="ready"))
        out.append(ServerPoll(t=t, target="vllm", state="ready", running=1))
        t += step
    return out


def manager(tmp_path, wall_start: float = WALL, **kwargs) -> IncidentManager:
    kwargs.setdefault("incident_context", 60.0)
    kwargs.setdefault("header", HEADER)
    return IncidentManager(tmp_path / "state", wall_start=wall_start, **kwargs)


def test_a_raised_finding_opens_an_incident_with_its_context_recording(tmp_path):
    m = manager(tmp_path)
    m.start(0.0)
    context = records_between(0.0, 100.0)
    events = m.handle([raised(100.0, "ollama", "hang", "no tokens for 42 s", stalled_s=42)], context)

    assert [e.kind for e in events] == ["opened"]
    incident = events[0].incident
    assert incident.target == "ollama" and incident.state == "open" and incident.severity == "critical"
    assert incident.title == "hang: no tokens for 42 s"
    assert incident.opened_at.timestamp() == WALL + 100.0
    assert [(e.kind, e.finding, e.evidence) for e in incident.timeline] == [("raised", "hang", {"stalled_s": 42})]

    trace = read_trace(m.state_dir / incident.recording.file)
    assert trace.problems == []
    assert trace.header.targets[0].name == "ollama" and [g.index for g in trace.header.gpus] == [0]
    assert trace.header.extra["incident"] == incident.id and trace.header.extra["wall_start"] == WALL
    # Only the last incident_context (60 s) of ollama's records and its GPU's.
    times = sorted({r.t for r in trace.records})
    assert times[0] == 40.0 and times[-1] == 100.0
    assert {getattr(r, "target", None) or f"gpu{r.index}" for r in trace.records} == {"ollama", "gpu0"}

    with IncidentStore(m.state_dir / "state.db") as store:
        stored = store.get(incident.id)
    assert stored == incident.model_copy(update={"recording": stored.recording})


def test_findings_on_the_same_target_join_its_incident_and_the_last_clear_closes_it(tmp_path):
    m = manager(tmp_path)
    m.start(0.0)
    opened = m.handle([raised(10.0, "vllm", "degraded", "TTFT 8x baseline")])[0].incident
    assert opened.severity == "warning"

    joined = m.handle([raised(20.0, "vllm", "oom", "CUDA out of memory")])
    assert [e.kind for e in joined] == ["updated"]
    assert joined[0].incident.id == opened.id and joined[0].incident.severity == "critical"
    other = m.handle([raised(21.0, "ollama", "down", "connection refused")])
    assert other[0].kind == "opened" and other[0].incident.id != opened.id

    first_clear = m.handle([cleared(30.0, "vllm", "oom")])
    assert first_clear[0].kind == "updated"
    assert [f.finding for f in first_clear[0].incident.active] == ["degraded"]

    assert m.handle([cleared(31.0, "vllm", "oom")]) == []  # already cleared: nothing happens
    assert m.handle([cleared(31.0, "nobody", "hang")]) == []

    closed = m.handle([cleared(40.0, "vllm", "degraded", "back to baseline")])
    assert [e.kind for e in closed] == ["closed"]
    incident = closed[0].incident
    assert incident.state == "closed" and incident.closed_at.timestamp() == WALL + 40.0
    assert incident.severity == "critical"  # the worst it ever was
    assert [(e.kind, e.finding) for e in incident.timeline] == [
        ("raised", "degraded"), ("raised", "oom"), ("cleared", "oom"), ("cleared", "degraded")
    ]
    assert [i.target for i in m.open_incidents()] == ["ollama"]

    again = m.handle([raised(50.0, "vllm", "degraded")])
    assert again[0].kind == "opened" and again[0].incident.id not in (opened.id, other[0].incident.id)

    listed = m.list()
    assert [i.id for i in listed] == [again[0].incident.id, other[0].incident.id, opened.id]
    assert m.get(opened.id).timeline == incident.timeline


def test_the_recording_runs_while_open_and_for_incident_context_after_closing(tmp_path):
    m = manager(tmp_path, incident_context=30.0)
    m.start(0.0)
    m.handle([raised(100.0, "ollama", "hang")], records_between(0.0, 100.0))
    m.record(records_between(101.0, 150.0))
    closed = m.handle([cleared(150.0, "ollama", "hang")])[0].incident
    assert closed.recording.until.timestamp() == WALL + 180.0
    m.record(records_between(151.0, 200.0))
    m.record(records_between(201.0, 210.0))

    trace = read_trace(m.state_dir / closed.recording.file)
    times = [r.t for r in trace.records]
    assert trace.problems == [] and times == sorted(times)
    assert min(times) == 70.0 and max(times) == 180.0
    assert not m.recording  # the tail has ended, the file is closed


def test_only_the_scope_of_the_target_is_recorded(tmp_path):
    m = manager(tmp_path)
    m.start(0.0)
    context = [
        GpuSample(t=1.0, index=0, util=0.0, mem_used_mib=1),
        GpuSample(t=1.0, index=1, util=0.0, mem_used_mib=1),
        Xid(t=2.0, index=1, xid=79),
        Canary(t=3.0, target="vllm", ok=False, error="timeout"),
        Canary(t=3.0, target="ollama", ok=True, ttft_s=0.2),
    ]
    gpu = m.handle([raised(5.0, "gpu:1", "gpu_fault", "XID 79 on GPU 1")], context)[0].incident
    trace = read_recording(m.state_dir / gpu.recording.file)
    assert [type(r).__name__ for r in trace.records] == ["GpuSample", "Xid", "Canary"]
    assert trace.records[2].target == "vllm"
    assert [t.name for t in trace.header.targets] == ["vllm"]


def test_secrets_never_reach_the_timeline_or_the_recording(tmp_path):
    secret = "sk-live-0123456789abcdef"
    m = manager(tmp_path, redactor=Redactor([secret]))
    m.start(0.0)
    context = [LogLine(t=1.0, target="ollama", line=f"auth failed for key {secret} at http://u:hunter22@x")]
    event = m.handle([raised(2.0, "ollama", "down", f"401 with key {secret}", header=f"Bearer {secret}")], context)[0]
    m.note("ollama", f"restart command used token={secret}", 3.0)

    db_bytes = b"".join(p.read_bytes() for p in (m.state_dir).glob("state.db*"))
    rec_bytes = (m.state_dir / event.incident.recording.file).read_bytes()
    for blob in (db_bytes, rec_bytes, event.model_dump_json().encode()):
        assert secret.encode() not in blob
    assert b"hunter22" not in rec_bytes
    assert "***" in event.incident.timeline[0].summary


def test_a_restart_reloads_open_incidents_and_carries_their_findings_over(tmp_path):
    first = manager(tmp_path, carryover_grace=120.0)
    first.start(0.0)
    opened = first.handle([raised(10.0, "ollama", "hang"), raised(11.0, "vllm", "degraded")], records_between(0, 11))
    first.record(records_between(12.0, 20.0))
    # No stop(): the process died.

    second = manager(tmp_path, wall_start=WALL + 1000.0, carryover_grace=120.0)
    events = second.start(0.0)
    assert sorted(e.incident.id for e in events) == sorted(e.incident.id for e in opened)
    assert all(e.kind == "updated" and e.change.kind == "note" for e in events)
    assert "after an unclean stop" in events[0].change.summary
    hang = next(e.incident for e in events if e.incident.target == "ollama")
    assert [(f.finding, f.carried_over) for f in hang.findings] == [("hang", True)]

    # The new run sees the hang again: it stays, no longer carried.
    again = second.handle([raised(30.0, "ollama", "hang", "still no tokens")])
    assert again[0].kind == "updated" and not again[0].incident.findings[0].carried_over
    assert again[0].incident.findings[0].raised_at == hang.findings[0].raised_at

    # vllm's degraded is never raised again by a run that watches vllm: cleared after the grace.
    second.record([ServerPoll(t=50.0, target="vllm", state="ready", running=1)])
    assert second.tick(119.0) == []
    expired = second.tick(121.0)
    assert [(e.kind, e.incident.target) for e in expired] == [("closed", "vllm")]
    assert "not raised again: over" in expired[0].change.summary
    assert [i.target for i in second.open_incidents()] == ["ollama"]

    # The recording went on across the restart with t moving forward (the new run's t + 1000 s).
    second.record(records_between(1.0, 3.0))
    second.stop()
    trace = read_trace(second.state_dir / hang.recording.file)
    assert trace.problems == []
    times = [r.t for r in trace.records]
    assert times == sorted(times) and max(times) == 1003.0

    third = manager(tmp_path, wall_start=WALL + 5000.0)
    note = third.start(0.0)[0].change.summary
    assert "after a clean stop" in note
    third.stop()


def test_a_torn_last_line_is_ignored_on_read_and_cut_before_appending(tmp_path):
    m = manager(tmp_path)
    m.start(0.0)
    incident = m.handle([raised(5.0, "ollama", "hang")], records_between(0, 5))[0].incident
    path = m.state_dir / incident.recording.file
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"t": 6.0, "type": "gpu", "ind')  # the crash hit mid-line
    assert read_recording(path).problems == []
    assert read_trace(path).problems  # the plain reader does notice the broken line

    again = manager(tmp_path, wall_start=WALL + 100.0)
    again.start(0.0)
    again.record(records_between(0.0, 2.0))
    again.stop()
    trace = read_trace(path)
    assert trace.problems == []
    assert [r.t for r in trace.records][-1] == 102.0


def test_a_locked_store_loses_nothing_and_events_still_go_out(tmp_path):
    store_path = tmp_path / "state" / "state.db"
    store = IncidentStore(store_path, busy_timeout=0.05)
    m = manager(tmp_path, store=store)
    m.start(0.0)
    blocker = sqlite3.connect(store_path, isolation_level=None, timeout=0.05)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database
    try:
        events = m.handle([raised(1.0, "ollama", "hang")])
        assert [e.kind for e in events] == ["opened"]
        assert "cannot save incident" in m.problems["store"]
        m.note("ollama", "restart requested", 2.0)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    m.tick(3.0)
    assert m.problems == {}
    with IncidentStore(store_path) as check:
        saved = check.get(events[0].incident.id)
    assert [e.kind for e in saved.timeline] == ["raised", "note"]


def test_old_closed_incidents_and_their_recordings_are_forgotten(tmp_path):
    m = manager(tmp_path, incident_context=1.0)
    m.start(0.0)
    old = m.handle([raised(1.0, "ollama", "hang")], records_between(0, 1))[0].incident
    m.handle([cleared(2.0, "ollama", "hang")])
    m.stop()
    recording = m.state_dir / old.recording.file
    assert recording.exists()

    later = manager(tmp_path, wall_start=WALL + 100 * 86400, retention=90 * 86400)
    later.start(0.0)
    assert later.get(old.id) is None and not recording.exists()


def test_list_since_and_limit(tmp_path):
    m = manager(tmp_path, incident_context=1.0)
    m.start(0.0)
    for i, target in enumerate(["a", "b", "c"]):
        m.handle([raised(100.0 * i, target, "down")])
        m.handle([cleared(100.0 * i + 10, target, "down")])
    m.handle([raised(500.0, "d", "hang")])
    assert [i.target for i in m.list()] == ["d", "c", "b", "a"]
    assert [i.target for i in m.list(limit=2)] == ["d", "c"]
    assert [i.target for i in m.list(since=WALL + 150.0)] == ["d", "c"]
    assert all(i.timeline == [] for i in m.list())


def test_listener_failures_never_break_the_bus():
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(lambda event: 1 / 0)
    bus.subscribe(lambda event: seen.append(event.kind))
    event = IncidentEvent.model_validate(
        {
            "kind": "opened",
            "incident": {"id": 1, "target": "x", "state": "open", "severity": "warning", "title": "t",
                         "opened_at": "2024-01-01T00:00:00Z"},
            "change": {"at": "2024-01-01T00:00:00Z", "kind": "raised", "summary": "s"},
        }
    )
    bus.publish([event, event])
    assert seen == ["opened", "opened"]


async def test_async_listeners_run_as_tasks_and_their_failures_are_contained():
    bus = EventBus()
    seen: list[int] = []

    async def slow_ok(event):
        seen.append(event.incident.id)

    async def broken(event):
        raise RuntimeError("webhook down")

    bus.subscribe(broken)
    bus.subscribe(slow_ok)
    event = IncidentEvent.model_validate(
        {
            "kind": "closed",
            "incident": {"id": 7, "target": "x", "state": "closed", "severity": "critical", "title": "t",
                         "opened_at": "2024-01-01T00:00:00Z"},
            "change": {"at": "2024-01-01T00:00:00Z", "kind": "cleared", "summary": "s"},
        }
    )
    bus.publish([event])
    await bus.drain(timeout=5)
    assert seen == [7] and bus.pending == 0


def test_timeline_evidence_round_trips_as_json(tmp_path):
    m = manager(tmp_path)
    m.start(0.0)
    evidence = {"gpu": 0, "held_mib": 11468, "pids": [4242], "nested": {"util": 0.0}}
    incident = m.handle([raised(1.0, "ollama", "failed_unload", **evidence)])[0].incident
    with IncidentStore(m.state_dir / "state.db") as store:
        stored = store.get(incident.id)
    assert stored.timeline[0].evidence == evidence
    assert json.loads(stored.model_dump_json())["timeline"][0]["evidence"] == evidence


@pytest.mark.parametrize("severity_finding", [("memory_growth", "warning"), ("gpu_fault", "critical")])
def test_incident_severity_follows_the_finding(tmp_path, severity_finding):
    finding, severity = severity_finding
    m = manager(tmp_path)
    m.start(0.0)
    assert m.handle([raised(1.0, "t", finding)])[0].incident.severity == severity


def test_an_open_incident_without_a_raised_finding_is_closed_at_start(tmp_path):
    from datetime import datetime, timezone

    from watchdog.incidents.model import Incident

    with IncidentStore(tmp_path / "state" / "state.db") as store, store.transaction():
        store.put_incident(Incident(id=5, target="ollama", state="open", severity="warning", title="odd",
                                    opened_at=datetime.fromtimestamp(WALL, tz=timezone.utc)))
    m = manager(tmp_path)
    events = m.start(10.0)
    assert [(e.kind, e.incident.id, e.incident.state) for e in events] == [("closed", 5, "closed")]
    assert m.open_incidents() == []
    assert m.get(5).state == "closed"
    m.stop()


def test_a_long_running_daemon_forgets_old_incidents_too(tmp_path):
    m = manager(tmp_path, incident_context=1.0, retention=90 * 86400)
    m.start(0.0)
    old = m.handle([raised(1.0, "ollama", "hang")], records_between(0, 1))[0].incident
    m.handle([cleared(2.0, "ollama", "hang")])
    m.tick(3.0)
    assert m.get(old.id) is not None
    m.tick(91 * 86400.0)  # the same daemon, three months later
    assert m.get(old.id) is None
    m.stop()


# --- flapping: raise, clear, raise within flap_window reopens the same incident ----------------


def test_a_target_that_raises_again_within_the_flap_window_reopens_its_incident(tmp_path):
    m = manager(tmp_path, flap_window=300.0)
    m.start(0.0)
    context = records_between(0.0, 100.0)
    first = m.handle([raised(100.0, "ollama", "hang", "no tokens for 42 s")], context)[0].incident
    assert m.handle([cleared(130.0, "ollama", "hang")], [])[0].kind == "closed"

    events = m.handle([raised(200.0, "ollama", "hang", "no tokens for 40 s")], [])
    # Two "updated" events (the reopen note, then the finding), never an "opened": nothing pages again.
    assert [e.kind for e in events] == ["updated", "updated"]
    note, again = events
    assert note.change.kind == "note" and note.change.evidence["reopened"] is True
    assert note.change.evidence["flaps"] == 1 and note.change.evidence["closed_for_s"] == 70.0
    assert again.change.kind == "raised" and again.change.finding == "hang"
    incident = again.incident
    assert incident.id == first.id and incident.state == "open" and incident.closed_at is None
    assert incident.flaps == 1
    # A second flap: the same incident again, counted.
    m.handle([cleared(230.0, "ollama", "hang")], [])
    incident = m.handle([raised(260.0, "ollama", "hang")], [])[-1].incident
    assert incident.id == first.id and incident.flaps == 2
    # The store holds it, flaps and all (history --json shows them).
    stored = m.store.get(first.id)
    assert stored.flaps == 2 and stored.state == "open"
    assert sum(1 for e in stored.timeline if e.evidence.get("reopened")) == 2
    assert m.store.max_id() == first.id
    # Its recording goes on in the same file.
    m.record(records_between(261.0, 262.0))
    assert read_trace(m.state_dir / incident.recording.file).problems == []
    m.stop()


def test_a_raise_after_the_flap_window_opens_a_new_incident(tmp_path):
    m = manager(tmp_path, flap_window=60.0)
    m.start(0.0)
    first = m.handle([raised(100.0, "ollama", "hang")], records_between(0.0, 100.0))[0].incident
    m.handle([cleared(130.0, "ollama", "hang")], [])
    events = m.handle([raised(191.0, "ollama", "hang")], [])
    assert [e.kind for e in events] == ["opened"] and events[0].incident.id == first.id + 1
    assert events[0].incident.flaps == 0
    m.stop()


def test_without_a_flap_window_every_raise_after_a_close_is_a_new_incident(tmp_path):
    m = manager(tmp_path)  # flap_window = 0
    m.start(0.0)
    m.handle([raised(100.0, "ollama", "hang")], records_between(0.0, 100.0))
    m.handle([cleared(110.0, "ollama", "hang")], [])
    assert [e.kind for e in m.handle([raised(120.0, "ollama", "hang")], [])] == ["opened"]
    m.stop()


def test_a_flap_across_a_daemon_restart_reopens_the_stored_incident(tmp_path):
    m = manager(tmp_path, flap_window=300.0)
    m.start(0.0)
    first = m.handle([raised(100.0, "ollama", "hang")], records_between(0.0, 100.0))[0].incident
    m.handle([cleared(130.0, "ollama", "hang")], [])
    m.stop()
    # A new run, 60 s of wall time later (its clock starts at 0 again).
    again = manager(tmp_path, wall_start=WALL + 190.0, flap_window=300.0)
    again.start(0.0)
    events = again.handle([raised(10.0, "ollama", "hang")], [])
    assert [e.kind for e in events] == ["updated", "updated"]
    assert events[-1].incident.id == first.id and events[-1].incident.flaps == 1
    again.stop()


def test_a_different_finding_soon_after_is_a_new_incident_not_a_flap(tmp_path):
    m = manager(tmp_path, flap_window=300.0)
    m.start(0.0)
    first = m.handle([raised(100.0, "ollama", "hang")], records_between(0.0, 100.0))[0].incident
    m.handle([cleared(130.0, "ollama", "hang")], [])
    events = m.handle([raised(140.0, "ollama", "failed_unload")], [])
    assert [e.kind for e in events] == ["opened"] and events[0].incident.id == first.id + 1
    m.stop()

def test_a_carried_over_hang_is_re_judged_from_evidence_never_by_the_timer(tmp_path):
    first = manager(tmp_path, carryover_grace=60.0)
    first.start(0.0)
    first.handle([raised(10.0, "ollama", "hang"), raised(11.0, "vllm", "down")], records_between(0, 11))

    second = manager(tmp_path, wall_start=WALL + 1000.0, carryover_grace=60.0)
    second.start(0.0)
    # The server says nothing (its status endpoint hangs, canaries time out) for ten graces:
    still = [ServerPoll(t=t, target="ollama", state="error", error="timeout") for t in range(1, 600, 5)]
    still += [Canary(t=t + 0.5, target="ollama", ok=False, error="timeout") for t in range(1, 600, 20)]
    still += [ServerPoll(t=t, target="vllm", state="down", error="refused") for t in range(1, 600, 5)]
    events = second.record(sorted(still, key=lambda r: r.t))
    assert not [e for e in events if e.kind == "closed"]
    incidents = {i.target: i for i in second.open_incidents()}
    assert set(incidents) == {"ollama", "vllm"}
    for incident in incidents.values():
        assert all("assumed over" not in entry.summary for entry in incident.timeline)
        assert "no fresh evidence that it is over" in incident.timeline[-1].summary
    # Evidence that it is over clears it at once, saying why.
    answered = second.record([Canary(t=700.0, target="ollama", ok=True, ttft_s=0.2),
                              ServerPoll(t=700.0, target="vllm", state="ready")])
    closed = {e.incident.target: e.change.summary for e in answered if e.kind == "closed"}
    assert "a canary got through" in closed["ollama"]
    assert "the server answers" in closed["vllm"]
