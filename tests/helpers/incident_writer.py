"""A process that holds the incident store open and writes to it without pause, until killed.

Run by tests/test_incidents_crash.py, which SIGKILLs it mid-write. After each
change is applied (committed to SQLite, flushed to the recording) it prints
"committed N", so the test knows what must survive.
"""

from __future__ import annotations

import sys

from watchdog.detect.finding import Finding
from watchdog.incidents import IncidentManager
from watchdog.trace.records import GpuDevice, GpuSample, Header, ServerPoll, TraceTarget


def main(state_dir: str, wall_start: float) -> None:
    header = Header(host="crash", gpus=[GpuDevice(0, "GPU", 12282)], targets=[TraceTarget("ollama", "ollama", [0])])
    manager = IncidentManager(state_dir, wall_start=wall_start, header=header, incident_context=60.0)
    manager.start(0.0)
    context = [GpuSample(t=float(t), index=0, util=0.0, mem_used_mib=9000) for t in range(10)]
    event = manager.handle([Finding(10.0, "ollama", "hang", "raised", "no tokens for 30 s", {"stalled_s": 30})], context)
    print(f"opened {event[0].incident.id}", flush=True)
    n = 0
    while True:
        n += 1
        t = 10.0 + n * 0.01
        manager.record(
            [GpuSample(t=t, index=0, util=0.0, mem_used_mib=9000 + n), ServerPoll(t=t, target="ollama", state="ready")]
        )
        manager.note("ollama", f"note {n}", t, {"n": n})
        print(f"committed {n}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
