"""Down: the server does not accept connections, or its process is gone.

Not down: a server that is starting (its process is alive and has not served
yet, or its memory is rising as it loads) for up to ``startup_grace``, or one
being restarted. Refused connections must last ``down_after`` and be seen
twice; a vanished process is unambiguous after two looks.
"""

from __future__ import annotations

from watchdog.detect.base import TargetDetector, Verdict, clear, raise_
from watchdog.detect.view import secs
from watchdog.trace.records import Canary, Event, ProcessSample, Record, ServerPoll

_GONE = ("gone", "zombie")


class DownDetector(TargetDetector):
    finding = "down"
    wants = (ServerPoll, Canary, ProcessSample, Event)

    def __init__(self, view) -> None:  # type: ignore[no-untyped-def]
        super().__init__(view)
        self.refused_since: float | None = None
        self.refused_count = 0
        self.gone_since: float | None = None
        self.gone_count = 0
        self.gone_pid: int | None = None

    def observe(self, record: Record) -> Verdict | None:
        view = self.view
        if isinstance(record, ServerPoll):
            if record.state == "down":
                self._refused(record.t)
            else:
                return self._answered(f"the server answers again (state {record.state})")
        elif isinstance(record, Canary):
            if record.error == "refused":
                self._refused(record.t)
            else:
                return self._answered("a canary was accepted again")
        elif isinstance(record, ProcessSample):
            if record.status in _GONE:
                if self.gone_since is None:
                    self.gone_since, self.gone_pid = record.t, record.pid
                self.gone_count += 1
            else:
                was_gone = self.gone_since is not None
                self.gone_since, self.gone_count = None, 0
                if was_gone and self.active and self._starting(record.t):
                    self.refused_since, self.refused_count = None, 0
                    return clear(f"a new server process {record.pid} is starting")
        elif isinstance(record, Event) and record.event == "restart_started":
            return None
        if self.active:
            return None
        return self._judge(view.now)

    def _refused(self, t: float) -> None:
        if self.refused_since is None:
            self.refused_since = t
        self.refused_count += 1

    def _answered(self, why: str) -> Verdict | None:
        self.refused_since, self.refused_count = None, 0
        if self.active and self.gone_since is None:
            return clear(why)
        return None

    def _starting(self, t: float) -> bool:
        """A server process that is alive but has not served yet, within its grace."""
        view = self.view
        process = view.process
        if process is not None and process.status not in _GONE:
            if view.pid_served or view.pid_since is None:
                return False
            return t - view.pid_since < self.settings.startup_grace
        if process is None and view.served_t is None:
            # Nothing says what runs; memory rising means a model is loading.
            return view.memory_rose(t - max(self.settings.down_after, 10.0), t, by=64.0)
        return False

    def _judge(self, t: float) -> Verdict | None:
        view = self.view
        if view.restarting(t, self.settings.down_after):
            return None
        if self.gone_since is not None and self.gone_count >= 2:
            pid = f"process {self.gone_pid}" if self.gone_pid else "the server process"
            status = view.process.status if view.process else "gone"
            return raise_(f"{pid} is {status} (for {secs(t - self.gone_since)})", cause="process_gone",
                          pid=self.gone_pid)
        if self.refused_since is None or self.refused_count < 2:
            return None
        refused_for = t - self.refused_since
        if refused_for < self.settings.down_after or self._starting(t):
            return None
        alive = ""
        if view.process is not None and view.process.status not in _GONE:
            alive = f"; process {view.pid} is still {view.process.status}"
        return raise_(f"connections refused for {secs(refused_for)} ({self.refused_count} attempts){alive}",
                      cause="refused", refused_s=round(refused_for, 1))
