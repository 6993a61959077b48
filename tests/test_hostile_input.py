"""Bad values and hostile input for the one-shot commands: exit 2 (or a clean message), never a traceback.

Each case here was a traceback, a hang or an accepted absurd value before (issue 11).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.control_support import HEADER, mini_daemon
from watchdog.config.durations import parse_duration
from watchdog.control import ControlClient, ControlError
from watchdog.incidents.recording import RECORDING_MODE
from watchdog.redact import Redactor

ROOT = Path(__file__).resolve().parent.parent

BASE = """
[watchdog]
state_dir = "{state}"
gpu_backend = "none"
{watchdog_extra}
[policy]
mode = "observe"
[[targets]]
name = "t"
kind = "vllm"
url = "{url}"
{target_extra}
"""


def watchdogctl(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watchdog", *args], capture_output=True, text=True, check=False,
                          timeout=timeout, cwd=ROOT, env=dict(os.environ, **(env or {})))


def write(tmp_path: Path, *, watchdog_extra: str = "", target_extra: str = "",
          url: str = "http://127.0.0.1:8000") -> Path:
    path = tmp_path / "w.toml"
    path.write_text(BASE.format(state=tmp_path / "state", watchdog_extra=watchdog_extra, target_extra=target_extra,
                                url=url))
    return path


def assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("watchdog_extra", "target_extra", "path"),
    [
        ("poll_interval = nan", "", "watchdog.poll_interval"),
        ("poll_interval = inf", "", "watchdog.poll_interval"),
        ('poll_interval = "99999999999d"', "", "watchdog.poll_interval"),
        ("gpu_interval = -inf", "", "watchdog.gpu_interval"),
        ("", "[targets.canary]\ninterval = nan", "targets[0].canary.interval"),
        ("", 'request_timeout = "1e400s"', "targets[0].request_timeout"),
        ("", "[targets.detect]\nbusy_cpu_percent = nan", "targets[0].detect.busy_cpu_percent"),
    ],
)
def test_nan_infinite_and_absurd_values_are_refused_with_their_key_path(
    tmp_path: Path, watchdog_extra: str, target_extra: str, path: str
) -> None:
    config = write(tmp_path, watchdog_extra=watchdog_extra, target_extra=target_extra)
    assert_refused(watchdogctl("config", "check", str(config)), path)
    # ``run`` refuses it the same way (exit 2: systemd does not retry a broken config).
    assert_refused(watchdogctl("--config", str(config), "run", timeout=60), path)


def test_durations_have_an_upper_bound() -> None:
    assert parse_duration("366d") == 366 * 86400
    for bad in ("367d", "99999999999d", float("nan"), float("inf"), 1e300):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_toml_nested_a_thousand_deep_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 1000 + "]" * 1000 + "\n")
    assert_refused(watchdogctl("config", "check", str(path)), "nested more than")
    path.write_text("a = " + "{b = " * 1000 + "1" + "}" * 1000 + "\n")
    assert_refused(watchdogctl("config", "check", str(path)), "nested more than")


def test_a_config_on_a_fifo_or_a_device_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    assert_refused(watchdogctl("config", "check", str(fifo), timeout=20), "not a regular file")
    assert_refused(watchdogctl("config", "check", "/dev/zero", timeout=20), "not a regular file")
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (2 * 1024 * 1024) + b"\n")
    assert_refused(watchdogctl("config", "check", str(big)), "at most")


def test_a_nul_in_a_path_is_a_clean_error(tmp_path: Path) -> None:
    from watchdog.config import ConfigError, load_config
    from watchdog.trace.io import TraceError, open_text

    with pytest.raises(ConfigError, match="NUL"):
        load_config(str(tmp_path / "a\x00b.toml"))
    with pytest.raises(TraceError, match="NUL"):
        open_text(str(tmp_path / "a\x00b.jsonl"))


def test_credentials_in_a_query_string_are_refused_and_never_printed(tmp_path: Path) -> None:
    config = write(tmp_path, url="http://127.0.0.1:8000/?token=hunter2secret")
    result = watchdogctl("config", "check", str(config))
    assert_refused(result, "targets[0].url", "query string")
    assert "hunter2secret" not in result.stderr + result.stdout


def test_an_unresolvable_secret_is_a_warning_and_an_error_with_strict(tmp_path: Path) -> None:
    config = write(tmp_path, target_extra='api_key = "env:IW_TEST_NOT_SET_ANYWHERE"')
    env = {"IW_TEST_NOT_SET_ANYWHERE": ""}
    loose = watchdogctl("config", "check", str(config), env=env)
    assert loose.returncode == 0, loose.stderr
    assert "warning:" in loose.stderr and "targets[0].api_key" in loose.stderr
    assert_refused(watchdogctl("config", "check", "--strict", str(config), env=env), "targets[0].api_key")
    ok = watchdogctl("config", "check", "--strict", str(config), env={"IW_TEST_NOT_SET_ANYWHERE": "sk-1234567"})
    assert ok.returncode == 0 and "warning" not in ok.stderr, ok.stderr
    missing_file = write(tmp_path, target_extra=f'api_key = "file:{tmp_path / "nope"}"')
    assert_refused(watchdogctl("config", "check", "--strict", str(missing_file)), "targets[0].api_key")


def test_the_redactor_spares_ordinary_words_and_masks_query_credentials() -> None:
    redactor = Redactor()
    for text in ("a basic environment", "the bearer cannot connect", "Basic environment.",
                 "cannot read the environment"):
        assert redactor.text(text) == text
    assert redactor.text("Authorization: Bearer sk-abc123XYZ") == "Authorization: Bearer ***"
    assert redactor.text("GET http://h:1/v1?token=abc123&x=1") == "GET http://h:1/v1?token=***&x=1"
    assert redactor.text("http://h/?access_token=zzz9") == "http://h/?access_token=***"


# --- replay --------------------------------------------------------------------------------------

HEADER_LINE = json.dumps({"type": "header", "version": 1, "host": "h", "gpus": [],
                          "targets": [{"name": "t", "kind": "vllm", "gpus": []}]})
POLL = json.dumps({"type": "server_poll", "t": 1.0, "target": "t", "state": "ready", "models": []})


def test_replay_skips_a_line_with_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(HEADER_LINE.encode() + b"\n" + b'{"type": "server_poll", "t": \xff\xfe}\n' + POLL.encode() + b"\n")
    result = watchdogctl("replay", str(trace))
    assert result.returncode == 0, result.stderr
    assert "line 2: not UTF-8" in result.stderr and "Traceback" not in result.stderr


def test_replay_skips_a_line_nested_200k_deep(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(HEADER_LINE + "\n" + "[" * 200_000 + "]" * 200_000 + "\n" + POLL + "\n")
    result = watchdogctl("replay", str(trace))
    assert result.returncode == 0, result.stderr
    assert "line 2: JSON nested too deeply" in result.stderr and "Traceback" not in result.stderr


def test_replay_of_a_corrupt_or_truncated_gz_keeps_what_came_before(tmp_path: Path) -> None:
    body = (HEADER_LINE + "\n" + (POLL + "\n") * 2000).encode()
    packed = gzip.compress(body)
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(packed[: len(packed) // 2])
    result = watchdogctl("replay", str(truncated))
    assert result.returncode == 0, result.stderr
    assert "the rest is lost" in result.stderr and "Traceback" not in result.stderr
    corrupt = tmp_path / "bad.jsonl.gz"
    corrupt.write_bytes(packed[:40] + bytes(64) + packed[104:])
    result = watchdogctl("replay", str(corrupt))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "cannot be read past here" in result.stderr
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_text(HEADER_LINE + "\n")
    result = watchdogctl("replay", str(not_gzip))
    assert "Traceback" not in result.stderr and "cannot be read past here" in result.stderr, result.stderr


@pytest.mark.parametrize("expect", [[1, 2], {"expect": [{"finding": "hang"}]}, {"expect": "x"},
                                    {"expect": [{"target": "t", "finding": "hang", "onset": "soon", "raise_by": 1}]}])
def test_replay_with_an_expectation_file_of_the_wrong_schema_is_refused(tmp_path: Path, expect: object) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(HEADER_LINE + "\n" + POLL + "\n")
    expect_file = tmp_path / "t.expect.json"
    expect_file.write_text(json.dumps(expect))
    assert_refused(watchdogctl("replay", str(trace), "--expect", str(expect_file)), "not an expectation file")


# --- the control socket --------------------------------------------------------------------------

def test_an_incident_id_beyond_sqlite_is_a_clean_404() -> None:
    with mini_daemon(HEADER) as daemon:
        client = ControlClient(daemon.socket_path)
        with pytest.raises(ControlError) as caught:
            client.incident(10**25)
        assert caught.value.status == 404 and "no incident" in caught.value.message
        result = watchdogctl("history", "12345678901234567890123456", "--socket", str(daemon.socket_path))
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and "500" not in result.stderr


def test_recordings_are_created_0640_whatever_the_umask(tmp_path: Path) -> None:
    from watchdog.incidents.recording import RecordingFile, scope_for
    from watchdog.trace.records import Header

    old = os.umask(0)
    try:
        recording = RecordingFile.create(tmp_path / "r.jsonl", Header(), scope_for("t", Header()), [],
                                         wall_start=0.0, incident_id=1)
        recording.close()
    finally:
        os.umask(old)
    assert (tmp_path / "r.jsonl").stat().st_mode & 0o777 == RECORDING_MODE


def test_a_crowd_of_idle_control_clients_never_blocks_status() -> None:
    """1,100 half-open connections (issue 11) made ``status`` time out and flooded the log with
    accept() tracebacks. Now idle clients are dropped (oldest first when full, or after the idle
    timeout), and ``status`` answers throughout."""
    import socket as socketlib
    import time

    from watchdog.control.server import MAX_CONNECTIONS

    with mini_daemon(HEADER) as daemon:
        crowd = []
        try:
            for _ in range(1100):
                sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    sock.connect(str(daemon.socket_path))
                    sock.send(b"GET /status HTTP/1.1\r\n")  # half a request, never finished
                except OSError:  # the backlog is full (EAGAIN on a unix socket): refused
                    sock.close()
                    continue
                crowd.append(sock)
            client = ControlClient(daemon.socket_path, timeout=2.0)
            for _ in range(5):
                began = time.monotonic()
                assert client.status().targets
                assert time.monotonic() - began < 2.0
            server = daemon.server
            assert server.stats.open <= MAX_CONNECTIONS
            assert server.stats.dropped_full > 0
        finally:
            for sock in crowd:
                sock.close()


def test_an_idle_control_client_is_dropped_after_the_idle_timeout() -> None:
    import socket as socketlib

    from watchdog.control.server import IDLE_TIMEOUT_S

    with mini_daemon(HEADER) as daemon:
        sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
        sock.settimeout(IDLE_TIMEOUT_S + 20)
        sock.connect(str(daemon.socket_path))
        sock.send(b"GET /sta")
        assert sock.recv(100) == b""  # closed by the server, without an answer
        sock.close()
        assert daemon.server.stats.dropped_idle >= 1


def test_the_unit_raises_the_descriptor_limit_above_the_control_sockets_needs() -> None:
    from watchdog.control.server import BACKLOG, MAX_CONNECTIONS

    unit = (ROOT / "systemd" / "inference-watchdog.service").read_text()
    limits = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert limits and int(limits[0]) >= 8 * (MAX_CONNECTIONS + BACKLOG)
