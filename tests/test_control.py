"""The control socket: the real server on a real unix socket, the real client, real processes."""

from __future__ import annotations

import io
import os
import socket
import stat

import httpx
import pytest

from tests.control_support import HEADER, mini_daemon, short_tmpdir
from tests.control_support import observations as shared_observations
from tests.support import unavailable, wait_for
from watchdog.control import ControlClient, ControlError, DaemonUnreachable
from watchdog.control.server import ControlServer
from watchdog.control.socket import ControlSocketError
from watchdog.detect.finding import Finding
from watchdog.incidents import read_recording
from watchdog.trace import read_trace_lines
from watchdog.trace.records import (
    Xid,
)

def observations(t: float) -> list:
    return shared_observations(t, vllm_tokens=100.0 + t)


@pytest.fixture
def daemon():
    with mini_daemon(HEADER) as running:
        running.feed(observations(running.clock()))
        yield running


def client_for(daemon, timeout: float = 10.0) -> ControlClient:
    return ControlClient(daemon.socket_path, timeout=timeout)


def test_status_over_the_socket(daemon):
    snapshot = client_for(daemon).status()
    assert snapshot.state == "ok" and [t.name for t in snapshot.targets] == ["ollama", "vllm"]
    assert snapshot.target("ollama").models[0].name == "llama3.1:8b"
    assert snapshot.target("vllm").gpus[0].target_mem_mib == 9500
    assert snapshot.gpu(0).temp_c == 55.0 and snapshot.daemon.mode == "observe"


def test_incidents_over_the_socket_with_their_timelines_and_recordings(daemon):
    t = daemon.clock()
    daemon.feed(observations(t), [Finding(t, "vllm", "hang", "raised", "no tokens for 20 s with 1 request running")])
    daemon.feed(observations(t + 0.1) + [Xid(t=t + 0.1, index=0, xid=13)])
    daemon.feed([], [Finding(t + 0.2, "vllm", "hang", "cleared", "tokens again")])
    daemon.feed([], [Finding(t + 0.3, "ollama", "degraded", "raised", "TTFT 3.1 s, 10x its baseline")])
    client = client_for(daemon)

    listed = client.incidents()
    assert [(i.target, i.state) for i in listed] == [("ollama", "open"), ("vllm", "closed")]
    assert all(i.timeline == [] for i in listed)
    with_timelines = client.incidents(timeline=True)
    assert [e.kind for e in with_timelines[1].timeline] == ["raised", "cleared"]
    assert [i.target for i in client.incidents(since="1h", limit=1)] == ["ollama"]

    hang = client.incident(listed[1].id)
    assert [(e.kind, e.summary) for e in hang.timeline] == [
        ("raised", "no tokens for 20 s with 1 request running"), ("cleared", "tokens again")
    ]
    status = client.status()
    assert status.target("ollama").incident.id == listed[0].id and status.target("ollama").state == "degraded"

    out = io.BytesIO()
    size = client.trace(hang.id, out)
    trace = read_trace_lines(out.getvalue().decode().splitlines())
    assert size == len(out.getvalue()) > 0 and trace.problems == []
    assert trace.header.extra["incident"] == hang.id
    assert any(isinstance(r, Xid) for r in trace.records)  # appended while open

    with pytest.raises(ControlError) as missing:
        client.incident(9999)
    assert missing.value.status == 404 and "no incident #9999" in missing.value.message
    with pytest.raises(ControlError, match="since: expected a duration"):
        client.incidents(since="yesterday-ish")
    with pytest.raises(ControlError, match="limit: expected 1 to 1000"):
        client.incidents(limit=0)


def test_a_trace_being_written_is_served_in_whole_lines(daemon):
    t = daemon.clock()
    [opened] = daemon.feed(observations(t), [Finding(t, "ollama", "down", "raised", "refused")])
    path = daemon.root / "state" / opened.incident.recording.file
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"t": 99.0, "type": "gp')  # a line being appended right now
    out = io.BytesIO()
    client_for(daemon).trace(opened.incident.id, out)
    assert out.getvalue().endswith(b"\n") and b'"t": 99.0' not in out.getvalue()
    assert read_recording(path).problems == []


def test_reload_reports_what_the_daemon_says(daemon):
    assert client_for(daemon).reload().ok
    daemon.reload_result = daemon.reload_result.model_copy(update={"ok": False, "message": "targets[0].url: bad"})
    result = client_for(daemon).reload()
    assert not result.ok and result.message == "targets[0].url: bad"


def test_a_failing_provider_gives_a_json_500_and_the_daemon_goes_on(daemon):
    daemon.status_error = RuntimeError("builder bug")
    with pytest.raises(ControlError) as failed:
        client_for(daemon).status()
    assert failed.value.status == 500 and "builder bug" in failed.value.message
    daemon.status_error = None
    assert client_for(daemon).status().state == "ok"


def test_alert_test_over_the_socket_checks_its_input(daemon):
    client = client_for(daemon)
    (result,) = client.alert_test(None, 7.5)
    assert result["delivered"] and result["sink"] == "ops" and result["timeout"] == 7.5
    with pytest.raises(ControlError) as unknown:
        client.alert_test("nope", 5)
    assert unknown.value.status == 404 and "no alert sink named 'nope'" in unknown.value.message
    for body in ({"timeout": 0}, {"timeout": "soon"}, {"timeout": 10_000}, {"sink": 3}, ["ops"]):
        with pytest.raises(ControlError) as bad:
            client._json("POST", "/alerts/test", json=body)
        assert bad.value.status == 400, body


def test_wedge_is_refused_unless_allowed(daemon):
    with pytest.raises(ControlError) as refused:
        client_for(daemon).wedge(1)
    assert refused.value.status == 403 and "allow_wedge" in refused.value.message


def test_an_allowed_wedge_blocks_the_daemon_loop():
    with mini_daemon(HEADER, allow_wedge=True) as daemon:
        client = client_for(daemon)
        for bad in (0, -1, "10", 10_000, True):
            with pytest.raises(ControlError) as invalid:
                client.wedge(bad)
            assert invalid.value.status == 400
        before = len(daemon.ticks)
        assert client.wedge(2.0) == {"wedging_s": 2.0}
        # While the loop is blocked nothing answers: a short-deadline client says so.
        with pytest.raises(DaemonUnreachable, match="may be wedged"):
            ControlClient(daemon.socket_path, timeout=0.5).status()
        wait_for(lambda: len(daemon.ticks) > before + 5, timeout=10, what="the loop to tick again")
        gaps = [b - a for a, b in zip(daemon.ticks[before - 1 :], daemon.ticks[before:])]
        assert max(gaps) >= 1.9  # the loop's own ticker stood still for the wedge
        assert client.status().state in ("ok", "unknown")


def test_the_socket_is_0660_and_given_to_the_configured_group():
    with mini_daemon(HEADER, group="nogroup") as daemon:
        info = os.stat(daemon.socket_path)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == 65534
        assert _status_as_nobody(daemon.socket_path) == "ok"
    with mini_daemon(HEADER) as daemon:
        assert os.stat(daemon.socket_path).st_gid == os.getgid()
        assert _status_as_nobody(daemon.socket_path).startswith("unreachable: permission denied")


def _status_as_nobody(path) -> str:
    """Ask for the status from a forked process running as nobody:nogroup (the code is already loaded)."""
    if os.getuid() != 0:
        unavailable("needs root to run a client as another user (nobody:nogroup)")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                ControlClient(path, timeout=5).status()
                answer = "ok"
            except DaemonUnreachable as exc:
                answer = f"unreachable: {exc}"
            except Exception as exc:  # noqa: BLE001
                answer = f"error: {exc!r}"
            os.write(write_end, answer.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


async def test_a_stale_socket_is_replaced_and_a_live_one_is_not_stolen():
    with short_tmpdir() as root:
        path = root / "control.sock"
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))  # bound, never listening, then abandoned: a daemon that died
        stale.close()
        first = ControlServer(path, provider=None)
        await first.start()
        try:
            second = ControlServer(path, provider=None)
            with pytest.raises(ControlSocketError, match="another daemon is already listening"):
                await second.start()
            assert path.is_socket()
        finally:
            await first.stop()
        assert not path.exists()


async def test_a_file_that_is_not_a_socket_is_never_touched():
    with short_tmpdir() as root:
        path = root / "control.sock"
        path.write_text("someone's notes")
        with pytest.raises(ControlSocketError, match="exists and is not a socket"):
            await ControlServer(path, provider=None).start()
        assert path.read_text() == "someone's notes"
        with pytest.raises(ControlSocketError, match="no such group"):
            await ControlServer(root / "other.sock", provider=None, group="no-such-group-xyz").start()


async def test_stopping_never_removes_a_newer_daemons_socket():
    with short_tmpdir() as root:
        path = root / "control.sock"
        old = ControlServer(path, provider=None)
        await old.start()
        path.unlink()  # e.g. an operator cleaned up, and a new daemon took the path
        newer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        newer.bind(str(path))
        try:
            await old.stop()
            assert path.is_socket()
        finally:
            newer.close()


def test_client_errors_say_what_to_check():
    with short_tmpdir() as root:
        with pytest.raises(DaemonUnreachable, match="does not exist .*is inference-watchdog running"):
            ControlClient(root / "none.sock").status()
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(root / "stale.sock"))
        stale.close()
        with pytest.raises(DaemonUnreachable, match="stale socket"):
            ControlClient(root / "stale.sock").status()
        (root / "file").write_text("x")
        with pytest.raises(DaemonUnreachable, match="not a socket"):
            ControlClient(root / "file").status()


def test_unknown_paths_and_methods_answer_json(daemon):
    transport = httpx.HTTPTransport(uds=str(daemon.socket_path))
    with httpx.Client(transport=transport, base_url="http://w") as raw:
        missing = raw.get("/nope")
        assert missing.status_code == 404 and "error" in missing.json()
        wrong = raw.get("/reload")
        assert wrong.status_code == 405 and "error" in wrong.json()
        bad_body = raw.post("/debug/wedge", content=b"not json")
        assert bad_body.status_code == 403  # refused before the body is even read
