"""``watchdogctl status`` and ``history`` as real processes against a daemon on a real socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.control_support import HEADER, mini_daemon, short_tmpdir
from tests.control_support import observations as shared_observations
from tests.paths import ROOT
from watchdog.detect.finding import Finding
from watchdog.status import StatusSnapshot
from watchdog.trace import read_trace

def observations(t: float) -> list:
    return shared_observations(t, vllm_running=2, vllm_waiting=1)


def watchdogctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("INFERENCE_WATCHDOG_SOCKET",)}
    environment.update({"COLUMNS": "220", "NO_COLOR": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "watchdog", *args], cwd=ROOT, env=environment, capture_output=True, text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def daemon():
    with mini_daemon(HEADER) as running:
        running.feed(observations(running.clock()))
        yield running


def test_status_exit_codes_follow_the_findings(daemon):
    sock = str(daemon.socket_path)
    ok = watchdogctl("status", "--socket", sock)
    assert ok.returncode == 0, ok.stderr
    for expected in ("OK", "Targets", "ollama", "llama3.1:8b (6.0 GiB)", "TTFT 0.30 s", "40.0 tok/s",
                     "2 running, 1 waiting", "GPUs", "Sim GPU", "35%", "55 °C", "120 W", "ollama, vllm"):
        assert expected in ok.stdout, expected

    t = daemon.clock()
    daemon.feed(observations(t), [Finding(t, "ollama", "memory_growth", "raised", "+2.1 GiB in 10 min, same models")])
    degraded = watchdogctl("status", "--socket", sock)
    assert degraded.returncode == 1 and "DEGRADED" in degraded.stdout and "+2.1 GiB in 10 min" in degraded.stdout

    daemon.feed([], [Finding(t + 0.1, "vllm", "hang", "raised", "no tokens for 31 s with 2 requests running")])
    critical = watchdogctl("status", "--json", "--socket", sock)
    assert critical.returncode == 2
    snapshot = StatusSnapshot.model_validate(json.loads(critical.stdout))
    vllm = snapshot.target("vllm")
    assert vllm.state == "critical" and vllm.incident is not None and vllm.incident.findings == ["hang"]

    daemon.feed([], [Finding(t + 0.2, "vllm", "hang", "cleared", "tokens again"),
                     Finding(t + 0.2, "ollama", "memory_growth", "cleared", "stable")])
    assert watchdogctl("status", "--socket", sock).returncode == 0


def test_status_finds_the_socket_in_the_config_or_the_environment(daemon):
    with short_tmpdir() as root:
        config = root / "watchdog.toml"
        config.write_text(f'[watchdog]\ncontrol_socket = "{daemon.socket_path}"\n')
        assert watchdogctl("--config", str(config), "status").returncode == 0
        assert watchdogctl("status", env={"INFERENCE_WATCHDOG_SOCKET": str(daemon.socket_path)}).returncode == 0
        broken = root / "broken.toml"
        broken.write_text("[watchdog]\ncontrol_sockett = 1\n")
        bad = watchdogctl("--config", str(broken), "status")
        assert bad.returncode == 2 and "control_sockett" in bad.stderr


def test_status_says_when_the_daemon_is_unreachable():
    with short_tmpdir() as root:
        result = watchdogctl("status", "--socket", str(root / "control.sock"))
        assert result.returncode == 3 and result.stdout == ""
        assert "does not exist" in result.stderr and "is inference-watchdog running" in result.stderr
        json_result = watchdogctl("status", "--json", "--socket", str(root / "control.sock"))
        assert json_result.returncode == 3 and json_result.stdout == ""
        assert watchdogctl("history", "--socket", str(root / "control.sock")).returncode == 3


def test_history_shows_incidents_with_timelines_and_writes_their_recordings(daemon):
    sock = str(daemon.socket_path)
    t = daemon.clock()
    [opened] = daemon.feed(
        observations(t), [Finding(t, "vllm", "failed_unload", "raised", "qwen unloaded 40 s ago, 9.3 GiB still held",
                                  {"held_mib": 9500, "pid": 12})]
    )
    daemon.feed(observations(t + 0.1), [Finding(t + 0.1, "vllm", "failed_unload", "cleared", "memory given back")])
    incident_id = opened.incident.id

    listing = watchdogctl("history", "--since", "1h", "--socket", sock)
    assert listing.returncode == 0, listing.stderr
    assert f"#{incident_id}" in listing.stdout and "CLOSED" in listing.stdout
    assert "qwen unloaded 40 s ago, 9.3 GiB still held" in listing.stdout and "memory given back" in listing.stdout

    one = watchdogctl("history", str(incident_id), "--socket", sock)
    assert one.returncode == 0 and 'held_mib=9500 pid=12' in one.stdout
    assert f"watchdogctl history --trace {incident_id}" in one.stdout

    as_json = json.loads(watchdogctl("history", "--json", "--socket", sock).stdout)
    mine = next(i for i in as_json if i["id"] == incident_id)
    assert [e["kind"] for e in mine["timeline"]] == ["raised", "cleared"]

    with short_tmpdir() as root:
        out = root / "incident.trace.jsonl"
        saved = watchdogctl("history", "--trace", str(incident_id), "-o", str(out), "--socket", sock)
        assert saved.returncode == 0 and f"wrote {out}" in saved.stderr
        trace = read_trace(out)
        assert trace.problems == [] and trace.header.extra["incident"] == incident_id
        assert {r.target for r in trace.records if hasattr(r, "target")} == {"vllm"}

        missing = watchdogctl("history", "--trace", "999", "-o", str(root / "x.jsonl"), "--socket", sock)
        assert missing.returncode == 1 and "no incident #999" in missing.stderr
        assert not (root / "x.jsonl").exists() and list(root.glob(".trace-*")) == []

    assert watchdogctl("history", "999", "--socket", sock).returncode == 1
    assert watchdogctl("history", "-o", "x", "--socket", sock).returncode == 2
