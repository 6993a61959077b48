"""Talking to systemd (sd_notify): READY, STATUS, STOPPING, RELOADING and progress-gated WATCHDOG pings.

The point of ``WatchdogSec=`` is that a wedged watchdog gets restarted. A ping
sent from a timer thread, or from a loop that still turns but whose jobs are
stuck, would hide exactly that. So:

- ``watchdog_ping()`` is refused from any thread but the one that made the
  notifier (the daemon's main thread, which runs its asyncio loop);
- it sends ``WATCHDOG=1`` only when the daemon reported progress (``progress()``)
  since the previous ping: no progress, no ping, and systemd restarts the daemon
  after ``WatchdogSec``. The daemon calls ``progress()`` when its jobs complete, so
  WatchdogSec must be longer than its slowest regular job's interval (or the
  daemon bumps progress from a cheap scheduler job of its own).

Without ``NOTIFY_SOCKET`` (not started by systemd) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import sdnotify

from watchdog.logs import LogOnce

_once = LogOnce("systemd")


class SystemdNotify:
    """sd_notify for the daemon. Make it on the thread that runs the asyncio loop."""

    def __init__(self) -> None:
        self.socket_path = os.environ.get("NOTIFY_SOCKET") or None
        self._notifier: sdnotify.SystemdNotifier | None = None
        if self.socket_path:
            try:
                # debug=True: report failures to us instead of swallowing them.
                self._notifier = sdnotify.SystemdNotifier(debug=True)
            except OSError as exc:
                _once.problem("connect", f"cannot reach systemd's notify socket {self.socket_path}: {exc}")
        self.ping_interval = _watchdog_interval()
        self._owner = threading.get_ident()
        self._progress = 0
        self._pinged_at_progress = 0
        self.pings_sent = 0

    @property
    def enabled(self) -> bool:
        """Whether systemd listens (NOTIFY_SOCKET is set)."""
        return self._notifier is not None

    @property
    def watchdog_enabled(self) -> bool:
        """Whether systemd expects WATCHDOG=1 pings from this process (WatchdogSec= is set)."""
        return self.enabled and self.ping_interval is not None

    def ready(self, status: str | None = None) -> None:
        """Startup is done (the daemon has completed its first full round)."""
        self._send("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> None:
        """The one line ``systemctl status`` shows, e.g. "3 targets: 2 ok, 1 hang"."""
        self._send(f"STATUS={_one_line(text)}")

    def reloading(self) -> None:
        """A reload starts (follow with ``ready()``): what ``Type=notify-reload`` expects."""
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str | None = None) -> None:
        self._send("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def progress(self) -> None:
        """The daemon made progress (a job completed): the next ping may go."""
        self._progress += 1

    def watchdog_ping(self) -> bool:
        """Send WATCHDOG=1 if the daemon made progress since the last ping. Returns whether it did."""
        if not self.watchdog_enabled:
            return False
        if threading.get_ident() != self._owner:
            _once.problem(
                "thread", "watchdog_ping() called off the main loop's thread: refused (it would hide a wedge)", "ERROR"
            )
            return False
        if self._progress == self._pinged_at_progress:
            return False
        if self._send("WATCHDOG=1"):
            self._pinged_at_progress = self._progress
            self.pings_sent += 1
            return True
        return False

    async def run_watchdog(self) -> None:
        """Ping at half of WatchdogSec for as long as the loop runs (a task on the daemon's loop)."""
        if not self.watchdog_enabled:
            return
        assert self.ping_interval is not None
        while True:
            await asyncio.sleep(self.ping_interval)
            self.watchdog_ping()

    def _send(self, message: str) -> bool:
        if self._notifier is None:
            return False
        try:
            self._notifier.notify(message)
        except OSError as exc:
            _once.problem("send", f"cannot notify systemd on {self.socket_path}: {exc}")
            return False
        _once.ok("send", "notifying systemd again")
        return True

    def close(self) -> None:
        if self._notifier is not None and self._notifier.socket is not None:
            self._notifier.socket.close()
            self._notifier = None


def _watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC, when the watchdog is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        _once.problem("usec", f"WATCHDOG_USEC={usec!r} is not a number of microseconds; not pinging")
        return None
    return value / 2 / 1_000_000 if value > 0 else None


def _one_line(text: str) -> str:
    return " ".join(text.split())
