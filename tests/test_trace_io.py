"""Trace-v1 reader and writer: round trips, strict required fields, lenient extras."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from watchdog.trace import (
    Canary,
    GpuSample,
    Header,
    ServerPoll,
    TraceError,
    UnknownRecord,
    read_trace,
    read_trace_lines,
    write_trace,
)
from tests.paths import all_trace_files

HEADER = json.dumps({"type": "header", "version": 1, "host": "h", "gpus": [], "targets": []})


@pytest.mark.parametrize("path", all_trace_files(), ids=lambda p: p.name)
def test_every_known_trace_round_trips(path: Path, tmp_path: Path) -> None:
    original = read_trace(path)
    assert original.problems == []
    assert original.records, "a trace with no records proves nothing"
    copy = tmp_path / path.name
    write_trace(copy, original.header, original.records)
    again = read_trace(copy)
    assert again.problems == []
    assert again.header == original.header
    assert again.records == original.records
    # Writing the copy again gives the same bytes: the format is stable.
    second = tmp_path / ("2-" + path.name)
    write_trace(second, again.header, again.records)
    assert second.read_bytes() == copy.read_bytes()


def test_gzip_traces_round_trip(tmp_path: Path) -> None:
    records = [GpuSample(t=1.0, index=0, util=50, mem_used_mib=1000)]
    path = tmp_path / "x.trace.jsonl.gz"
    write_trace(path, Header(host="h"), records)
    assert read_trace(path).records == records


def test_broken_lines_are_reported_with_their_number_and_skipped() -> None:
    lines = [
        HEADER,
        '{"t": 1.0, "type": "gpu", "index": 0, "util": 5, "mem_used_mib": 100, "procs": []}',
        '{"t": 2.0, "type": "gpu", "index": 0, "util": 5',  # truncated
        '{"t": 3.0, "type": "canary", "ok": true}',  # no target
        '{"t": "4", "type": "server", "target": "a", "state": "ready", "models": []}',  # t not a number
        '{"type": "log", "target": "a", "line": "x"}',  # no t
        '[1, 2, 3]',
        '{"t": 6.0, "type": "server", "target": "a", "state": "ready", "models": [], "running": "two"}',
        '{"t": 7.0, "type": "canary", "target": "a", "ok": false, "error": "timeout", "tokens": 0}',
    ]
    trace = read_trace_lines(lines)
    numbers = [p.line for p in trace.problems]
    assert numbers == [3, 4, 5, 6, 7, 8]
    assert "not valid JSON" in str(trace.problems[0])
    assert 'without "target"' in trace.problems[1].message
    assert '"t": expected a number' in trace.problems[2].message
    assert '"running": expected an integer' in trace.problems[5].message
    assert [type(r) for r in trace.records] == [GpuSample, Canary]


def test_unknown_fields_and_types_are_kept_not_errors(tmp_path: Path) -> None:
    lines = [
        HEADER.replace('"targets": []', '"targets": [], "recorder": "v9"'),
        '{"t": 1.0, "type": "server", "target": "a", "state": "ready", "models": '
        '[{"name": "m", "vram_mib": 10, "quant": "q4"}], "uptime_s": 5}',
        '{"t": 2.0, "type": "thermal", "index": 0, "fan": 80}',
    ]
    trace = read_trace_lines(lines)
    assert trace.problems == []
    server, unknown = trace.records
    assert isinstance(server, ServerPoll) and server.extra == {"uptime_s": 5}
    assert server.models[0].extra == {"quant": "q4"}
    assert isinstance(unknown, UnknownRecord) and unknown.type == "thermal"
    assert trace.header.extra == {"recorder": "v9"}
    path = tmp_path / "t.jsonl"
    write_trace(path, trace.header, trace.records)
    assert read_trace(path).records == trace.records


def test_nullable_fields_are_accepted_when_omitted() -> None:
    trace = read_trace_lines([HEADER, '{"t": 1, "type": "canary", "target": "a", "ok": true}'])
    (canary,) = trace.records
    assert canary.ttft_s is None and canary.started is None and canary.start == 1


def test_backwards_time_is_reported_but_kept() -> None:
    lines = [
        HEADER,
        '{"t": 5, "type": "log", "target": "a", "line": "x"}',
        '{"t": 4, "type": "log", "target": "a", "line": "y"}',
    ]
    trace = read_trace_lines(lines)
    assert [p.line for p in trace.problems] == [3]
    assert len(trace.records) == 2


def test_missing_header_is_a_problem_not_a_crash() -> None:
    trace = read_trace_lines(['{"t": 1, "type": "log", "target": "a", "line": "x"}'])
    assert trace.problems[0].line == 1
    assert trace.header == Header()
    assert len(trace.records) == 1


def test_wrong_version_is_refused() -> None:
    with pytest.raises(TraceError, match="version 2"):
        read_trace_lines([json.dumps({"type": "header", "version": 2})])


def test_unreadable_file_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(tmp_path / "absent.jsonl")
