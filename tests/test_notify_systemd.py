"""sd_notify against a real AF_UNIX/SOCK_DGRAM socket bound by the test, as systemd binds it."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pytest

from tests.control_support import short_tmpdir
from tests.support import wait_for
from watchdog.daemon.systemd_notify import SystemdNotify


class FakeSystemd:
    """The listening end of NOTIFY_SOCKET: a real datagram socket, read on its own thread."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def texts(self) -> list[str]:
        return [text for _, text in self.messages]

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


@pytest.fixture
def systemd(monkeypatch):
    with short_tmpdir() as root:
        path = str(root / "notify.sock")
        listener = FakeSystemd(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "2000000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield listener
        listener.close()


def test_ready_status_stopping_and_reloading_arrive(systemd):
    notify = SystemdNotify()
    assert notify.enabled and notify.watchdog_enabled and notify.ping_interval == 1.0
    notify.ready("3 targets: 3 ok")
    notify.status("3 targets: 2 ok,\n1 hang")  # one line, whatever the caller passed
    notify.reloading()
    notify.stopping()
    wait_for(lambda: len(systemd.messages) == 4, timeout=5, what="four notifications")
    texts = systemd.texts()
    assert texts[0] == "READY=1\nSTATUS=3 targets: 3 ok"
    assert texts[1] == "STATUS=3 targets: 2 ok, 1 hang"
    assert texts[2].startswith("RELOADING=1\nMONOTONIC_USEC=") and int(texts[2].split("=")[-1]) > 0
    assert texts[3] == "STOPPING=1"
    notify.close()


def test_a_ping_goes_only_after_progress(systemd):
    notify = SystemdNotify()
    assert notify.watchdog_ping() is False  # no progress yet
    notify.progress()
    assert notify.watchdog_ping() is True
    assert notify.watchdog_ping() is False  # nothing new since that ping
    notify.progress()
    notify.progress()
    assert notify.watchdog_ping() is True
    notify.status("marker")  # datagrams keep their order: the marker comes after every ping sent
    wait_for(lambda: "STATUS=marker" in systemd.texts(), timeout=5, what="the marker")
    assert systemd.texts() == ["WATCHDOG=1", "WATCHDOG=1", "STATUS=marker"]
    notify.close()


def test_a_ping_from_another_thread_is_refused(systemd):
    notify = SystemdNotify()
    notify.progress()
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(notify.watchdog_ping()))
    worker.start()
    worker.join()
    assert result == [False]
    notify.status("marker")
    wait_for(lambda: systemd.texts() == ["STATUS=marker"], timeout=5, what="only the marker")
    assert notify.watchdog_ping() is True  # the progress is still there for the main thread
    notify.close()


async def test_a_wedged_or_idle_loop_stops_the_pings(systemd, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 50 ms
    notify = SystemdNotify()
    pinger = asyncio.create_task(notify.run_watchdog())
    working = True

    async def jobs() -> None:
        while True:
            if working:
                notify.progress()
            await asyncio.sleep(0.01)

    worker = asyncio.create_task(jobs())
    try:
        await _until(lambda: systemd.texts().count("WATCHDOG=1") >= 3, "pings while the loop works")

        # A wedged loop (blocked synchronously): no ping can leave it. Markers sent from the
        # loop's own thread bracket the wedge in the datagrams' order (no clocks compared).
        notify.status("wedge-start")
        time.sleep(0.5)
        notify.status("wedge-end")
        await _until(lambda: "WATCHDOG=1" in _after(systemd.texts(), "STATUS=wedge-end"), "pings again")
        assert "WATCHDOG=1" not in _between(systemd.texts(), "STATUS=wedge-start", "STATUS=wedge-end")

        # A loop that turns but whose jobs make no progress: no pings either (at most the one
        # owed for the progress made just before).
        working = False
        notify.status("idle-start")
        idle_until = time.monotonic() + 0.5  # ten ping periods of a turning loop
        while time.monotonic() < idle_until:
            await asyncio.sleep(0.02)
        notify.status("idle-end")
        await _until(lambda: "STATUS=idle-end" in systemd.texts(), "the idle-end marker")
        assert _between(systemd.texts(), "STATUS=idle-start", "STATUS=idle-end").count("WATCHDOG=1") <= 1
        working = True
        await _until(lambda: "WATCHDOG=1" in _after(systemd.texts(), "STATUS=idle-end"),
                     "a ping once progress resumes")
    finally:
        pinger.cancel()
        worker.cancel()
        await asyncio.gather(pinger, worker, return_exceptions=True)
        notify.close()


def _after(texts: list[str], marker: str) -> list[str]:
    return texts[texts.index(marker) + 1:] if marker in texts else []


def _between(texts: list[str], start: str, end: str) -> list[str]:
    return texts[texts.index(start) + 1:texts.index(end)]


async def _until(condition, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_abstract_namespace_sockets_work(monkeypatch):
    name = f"iw-notify-test-{os.getpid()}"
    listener = FakeSystemd("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        notify = SystemdNotify()
        notify.ready()
        wait_for(lambda: systemd_texts(listener) == ["READY=1"], timeout=5, what="READY over the abstract socket")
        notify.close()
    finally:
        listener.close()


def systemd_texts(listener: FakeSystemd) -> list[str]:
    return listener.texts()


def test_without_systemd_everything_is_a_quiet_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    notify = SystemdNotify()
    assert not notify.enabled and not notify.watchdog_enabled
    notify.ready("x")
    notify.status("x")
    notify.progress()
    assert notify.watchdog_ping() is False
    notify.stopping()
    asyncio.run(notify.run_watchdog())  # returns at once
    notify.close()


def test_a_watchdog_meant_for_another_process_or_malformed_is_ignored(systemd, monkeypatch):
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert SystemdNotify().ping_interval is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert SystemdNotify().ping_interval == 1.0
    monkeypatch.setenv("WATCHDOG_USEC", "soon")
    assert SystemdNotify().watchdog_enabled is False


def test_a_vanished_systemd_socket_is_logged_not_raised(systemd):
    notify = SystemdNotify()
    systemd.close()
    os.unlink(os.environ["NOTIFY_SOCKET"])
    notify.progress()
    assert notify.watchdog_ping() is False and notify.pings_sent == 0
    notify.status("nobody listens")
    notify.close()
