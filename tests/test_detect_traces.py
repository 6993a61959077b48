"""Every trace with an expectation file: replay raises what it expects, when, and nothing else.

Traces dropped into ../shared/traces (or tests/traces) with a NAME.expect.json
beside them are picked up automatically. A NAME.config.toml beside a trace
gives the thresholds it was recorded with (a live run that lowered one); the
replay uses them, as ``watchdogctl replay --config`` would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.paths import all_trace_files
from watchdog.cli import cli
from watchdog.commands.replay import check_expectations, replay_file
from watchdog.config import parse_config
from watchdog.config.model import Config

TRACES = [p for p in all_trace_files() if p.with_name(p.name.replace(".trace.jsonl", ".expect.json")).exists()]


def expectation(path: Path) -> dict:
    return json.loads(path.with_name(path.name.replace(".trace.jsonl", ".expect.json")).read_text())


def recorded_config(path: Path) -> Config | None:
    """The config a trace was recorded with, if one lies beside it."""
    config = path.with_name(path.name.replace(".trace.jsonl", ".config.toml"))
    return parse_config(config.read_text()) if config.exists() else None


def test_there_are_traces_to_check() -> None:
    assert len(TRACES) >= 7


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name.removesuffix(".trace.jsonl"))
def test_replay_meets_expectations(path: Path) -> None:
    result = replay_file(path, recorded_config(path))
    assert result.problems == []
    report = check_expectations(result.findings, expectation(path))
    assert report.ok, f"{path.name}:\n{report}"


@pytest.mark.parametrize("path", TRACES[:3], ids=lambda p: p.name.removesuffix(".trace.jsonl"))
def test_cli_prints_the_same_findings_as_json_lines(path: Path) -> None:
    result = CliRunner().invoke(cli, ["replay", str(path)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    expected = [f.to_json() for f in replay_file(path).findings]
    assert lines == expected
    for line in lines:
        assert list(line) == ["t", "target", "finding", "state", "summary"]


def test_cli_checks_an_expectation_file(tmp_path: Path) -> None:
    path = next(p for p in TRACES if p.name.startswith("h100"))
    expect = expectation(path)
    good = CliRunner().invoke(cli, ["replay", str(path), "--expect", str(path.with_name(
        path.name.replace(".trace.jsonl", ".expect.json")))])
    assert good.exit_code == 0, good.output
    expect["expect"].append({"finding": "oom", "target": "toy", "onset": 10, "raise_by": 20})
    wrong = tmp_path / "wrong.expect.json"
    wrong.write_text(json.dumps(expect))
    bad = CliRunner().invoke(cli, ["replay", str(path), "--expect", str(wrong)])
    assert bad.exit_code == 1
    assert "missed: oom on toy" in bad.output


def test_explain_shows_a_timeline() -> None:
    path = next(p for p in TRACES if p.name.startswith("h100"))
    result = CliRunner().invoke(cli, ["replay", "--explain", str(path)])
    assert result.exit_code == 0, result.output
    assert "failed_unload" in result.output and "restart_started" in result.output
    assert "RAISED" in result.output


def test_broken_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    path = next(p for p in TRACES if p.name.startswith("h100"))
    lines = path.read_text().splitlines()
    lines.insert(5, '{"t": 0.5, "type": "gpu"')
    broken = tmp_path / "broken.trace.jsonl"
    broken.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(cli, ["replay", str(broken)])
    assert result.exit_code == 0
    assert "line 6: not valid JSON" in result.output
    assert sum(1 for line in result.output.splitlines() if line.startswith("{")) == len(replay_file(path).findings)
