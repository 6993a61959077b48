"""`watchdogctl report` on a state directory with incidents of several models (a real SQLite store)."""

from __future__ import annotations

import json
import time

from click.testing import CliRunner

from watchdog.cli import cli
from watchdog.detect.finding import Finding
from watchdog.incidents import IncidentManager
from watchdog.trace.records import Canary


def _canaries(target: str, model: str, t0: float, sent: int, failed: int) -> list[Canary]:
    return [Canary(t=t0 + i, target=target, model=model, ok=i >= failed, error="timeout" if i < failed else None)
            for i in range(sent)]


def _state_dir(tmp_path) -> str:
    wall = time.time() - 7200.0
    manager = IncidentManager(tmp_path, wall_start=wall)
    manager.start(0.0)
    manager.record(_canaries("ollama", "qwen3:14b", 1.0, 40, 3))
    manager.record(_canaries("ollama", "llama3:8b", 100.0, 60, 1))
    manager.record(_canaries("vllm", "Qwen/Qwen3-14B-AWQ", 200.0, 50, 0))
    # Two hangs of qwen3 (one restarted, one not), one of llama3; a failed unload and an OOM of llama3.
    manager.handle([Finding(300.0, "ollama", "hang", "raised", "2 canaries got no token",
                            {"model": "qwen3:14b", "detect_s": 24.0})])
    manager.note("ollama", "restarted", 310.0, {"action": "restart", "ok": True, "model": "qwen3:14b"})
    manager.handle([Finding(340.0, "ollama", "hang", "cleared", "a canary got through")])
    manager.handle([Finding(600.0, "ollama", "hang", "raised", "no tokens", {"model": "qwen3:14b", "stalled_s": 16.0})])
    manager.note("ollama", "restart failed", 605.0, {"action": "restart", "ok": False})
    manager.handle([Finding(700.0, "ollama", "hang", "cleared", "tokens flow again")])
    manager.handle([Finding(900.0, "ollama", "failed_unload", "raised", "memory held", {"model": "llama3:8b"})])
    manager.handle([Finding(905.0, "ollama", "oom", "raised", "cudaMalloc failed", {"model": "llama3:8b"})])
    manager.handle([Finding(960.0, "ollama", "failed_unload", "cleared", "released"),
                    Finding(961.0, "ollama", "oom", "cleared", "over")])
    manager.handle([Finding(1000.0, "ollama", "hang", "raised", "no tokens", {"model": "llama3:8b", "stalled_s": 20.0})])
    manager.handle([Finding(1200.0, "vllm", "truncation", "raised", "prompts refused",
                            {"model": "Qwen/Qwen3-14B-AWQ", "count_last_hour": 12})])
    manager.stop()
    return str(tmp_path)


def test_report_counts_per_target_and_model(tmp_path):
    state = _state_dir(tmp_path)
    result = CliRunner().invoke(cli, ["report", "--state-dir", state, "--json"])
    assert result.exit_code == 0, result.output
    rows = {(r["target"], r["model"]): r for r in json.loads(result.output)["rows"]}
    qwen = rows[("ollama", "qwen3:14b")]
    assert (qwen["canaries_sent"], qwen["canaries_failed"]) == (40, 3)
    assert qwen["hangs"] == 2 and qwen["restarts"] == 1  # the failed attempt is not a restart
    assert qwen["hangs_per_100_canaries"] == 5.0
    assert qwen["time_to_detect_s"] == {"n": 2, "median": 20.0, "p95": 24.0}
    assert qwen["time_to_recover_s"]["n"] == 2 and qwen["time_to_recover_s"]["median"] == 70.0
    llama = rows[("ollama", "llama3:8b")]
    assert (llama["canaries_sent"], llama["hangs"], llama["failed_unloads"], llama["ooms"]) == (60, 1, 1, 1)
    assert llama["hangs_per_100_canaries"] == round(100 / 60, 2)
    assert llama["time_to_recover_s"]["n"] == 1  # the hang still open has no recovery time
    vllm = rows[("vllm", "Qwen/Qwen3-14B-AWQ")]
    assert (vllm["canaries_sent"], vllm["hangs"], vllm["truncations"]) == (50, 0, 1)
    assert vllm["hangs_per_100_canaries"] == 0.0


def test_report_since_leaves_older_incidents_out_and_renders_a_table(tmp_path):
    state = _state_dir(tmp_path)
    result = CliRunner().invoke(cli, ["report", "--state-dir", state, "--since", "1m", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"] == []
    table = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["report", "--state-dir", state])
    assert table.exit_code == 0 and "qwen3:14b" in table.output and "llama3:8b" in table.output


def test_report_on_a_missing_state_dir_says_so(tmp_path):
    result = CliRunner().invoke(cli, ["report", "--state-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "no state database" in result.output


def test_a_hang_raised_again_after_a_daemon_restart_is_one_hang(tmp_path):
    wall = time.time() - 600.0
    manager = IncidentManager(tmp_path, wall_start=wall)
    manager.start(0.0)
    manager.handle([Finding(10.0, "ollama", "hang", "raised", "no token", {"model": "qwen3:14b"})])
    manager.stop()  # the daemon dies mid-hang; the next one raises it again in the same incident
    again = IncidentManager(tmp_path, wall_start=wall + 60.0)
    again.start(0.0)
    again.handle([Finding(30.0, "ollama", "hang", "raised", "still no token", {"model": "qwen3:14b"})])
    again.note("ollama", "would restart", 31.0, {"action": "restart", "result": "would"})
    again.stop()
    result = CliRunner().invoke(cli, ["report", "--state-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    row = {(r["target"], r["model"]): r for r in json.loads(result.output)["rows"]}[("ollama", "qwen3:14b")]
    assert row["hangs"] == 1
    assert row["restarts"] == 0  # a dry-run's "would" is no restart
