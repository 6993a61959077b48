"""A process holding the store open is SIGKILLed mid-write; a restart keeps the incident."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from tests.paths import ROOT
from tests.support import wait_for
from watchdog.incidents import IncidentManager, read_recording
from watchdog.trace import read_trace
from watchdog.trace.records import GpuSample

WALL = 1_700_000_000.0


def _start_writer(state_dir) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.incident_writer", str(state_dir), str(WALL)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.strip())

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def _committed(lines: list[str]) -> int:
    done = [int(line.split()[1]) for line in list(lines) if line.startswith("committed ")]
    return max(done, default=0)


def test_sigkill_mid_write_then_restart_keeps_the_incident_and_its_timeline(tmp_path):
    state_dir = tmp_path / "state"
    proc, lines = _start_writer(state_dir)
    try:
        wait_for(lambda: _committed(lines) >= 40, timeout=60, what="the writer to commit 40 changes")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        stderr = proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL, stderr
    acknowledged = _committed(lines)
    incident_id = int(next(line for line in lines if line.startswith("opened ")).split()[1])

    restarted = IncidentManager(state_dir, wall_start=WALL + 600.0, incident_context=60.0)
    events = restarted.start(0.0)
    try:
        [incident] = restarted.open_incidents()
        assert incident.id == incident_id and incident.target == "ollama" and incident.state == "open"
        assert [(f.finding, f.state, f.carried_over) for f in incident.findings] == [("hang", "raised", True)]
        assert [e.change.kind for e in events] == ["note"] and "unclean stop" in events[0].change.summary

        timeline = incident.timeline
        assert (timeline[0].kind, timeline[0].finding, timeline[0].evidence) == ("raised", "hang", {"stalled_s": 30})
        notes = [e.evidence["n"] for e in timeline if e.kind == "note" and "n" in e.evidence]
        # Every change the writer saw committed is there, in order, with nothing lost between.
        assert notes[:acknowledged] == list(range(1, acknowledged + 1))
        assert notes == list(range(1, len(notes) + 1))
        assert timeline[-1].summary.startswith("daemon restarted")

        # The recording reads back whole (a torn last line, if the kill made one, is dropped)...
        path = state_dir / incident.recording.file
        trace = read_recording(path)
        assert trace.problems == []
        gpu = [r for r in trace.records if isinstance(r, GpuSample)]
        assert [r.t for r in gpu[:10]] == [float(t) for t in range(10)]  # the context
        assert max(r.t for r in gpu) >= 10.0 + acknowledged * 0.01 - 1e-6

        # ...and takes the new run's records after the old ones.
        restarted.record([GpuSample(t=1.0, index=0, util=3.0, mem_used_mib=9100)])
    finally:
        restarted.stop()
    replayed = read_trace(path)
    assert replayed.problems == []
    assert replayed.records[-1].t == 601.0 and replayed.records[-1].util == 3.0
