"""The flight recorder: bounded ring buffers, and a 10-minute recording of real probes against a
simulated server that round-trips through the trace reader.

Time is synthetic (a clock the test advances), the records are real: HTTP polls
and canaries to the simulator, SimNvml samples, psutil looks at its process.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.simulator import sim_factory  # noqa: F401 - the fixture
from watchdog.config.model import Config
from watchdog.daemon.recorder import FlightRecorder
from watchdog.probes.suite import ProbeSuite
from watchdog.sim.nvml import SimNvml
from watchdog.trace.header import build_header
from watchdog.trace.io import read_trace
from watchdog.trace.records import (
    Canary,
    GpuDevice,
    GpuSample,
    LogLine,
    ProcessSample,
    ServerPoll,
    Xid,
)


def poll(t: float, target: str = "a") -> ServerPoll:
    return ServerPoll(t=t, target=target, state="ready")


def test_window_is_bounded_by_time_behind_the_newest_record() -> None:
    rec = FlightRecorder(window_s=60.0)
    for t in range(0, 181, 5):
        rec.add(poll(float(t)))
        rec.add(GpuSample(t=t + 0.5, index=0, util=0.0, mem_used_mib=100))
    records = rec.records()
    assert min(r.t for r in records) >= 120.0 and max(r.t for r in records) == 180.5
    assert [r.t for r in records] == sorted(r.t for r in records)


def test_a_flood_of_one_kind_never_pushes_out_another() -> None:
    rec = FlightRecorder(window_s=600.0, max_per_stream=100)
    rec.add(poll(1.0))
    for i in range(10_000):
        rec.add(LogLine(t=2.0 + i * 0.001, target="a", line="cudaMalloc failed"))
    polls = [r for r in rec.records() if isinstance(r, ServerPoll)]
    logs = [r for r in rec.records() if isinstance(r, LogLine)]
    assert len(polls) == 1 and len(logs) == 100 and logs[-1].t == pytest.approx(11.999)
    assert len(rec) == 101


def test_selection_by_target_and_gpu_and_time() -> None:
    rec = FlightRecorder(window_s=600.0)
    rec.add(poll(1.0, "a"))
    rec.add(poll(2.0, "b"))
    rec.add(GpuSample(t=3.0, index=0, util=1.0, mem_used_mib=1))
    rec.add(GpuSample(t=4.0, index=1, util=1.0, mem_used_mib=1))
    rec.add(Xid(t=5.0, index=1, xid=79))
    assert [r.t for r in rec.records(targets=["a"], gpus=[1])] == [1.0, 4.0, 5.0]
    assert [r.t for r in rec.records(since=2.0, until=4.0)] == [2.0, 3.0, 4.0]
    assert rec.records(targets=["nobody"]) == []


def test_records_arriving_slightly_out_of_order_are_written_in_order(tmp_path: Path) -> None:
    rec = FlightRecorder(window_s=600.0)
    # A canary is stamped when it ends, a GPU sample when it starts: emit order is not time order.
    rec.add(GpuSample(t=10.2, index=0, util=1.0, mem_used_mib=1))
    rec.add(Canary(t=10.1, target="a", ok=True, started=9.0))
    rec.add(poll(10.0))
    path = tmp_path / "x.trace.jsonl"
    rec.write(path, build_header(Config(), []))
    trace = read_trace(path)
    assert [r.t for r in trace.records] == [10.0, 10.1, 10.2] and trace.problems == []


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_ten_minutes_of_a_simulated_server_round_trip(sim_factory: Any, tmp_path: Path) -> None:  # noqa: F811
    sim = sim_factory("vllm", "--decode-tps", "200", "--load-time", "0.2", "--response-tokens", "100000")
    config = Config.model_validate({
        "watchdog": {"gpu_backend": "sim", "sim_gpu_dir": str(sim.gpu_dir), "recorder_window": "15m"},
        "policy": {"mode": "observe"},
        "targets": [{"name": "vllm", "kind": "vllm", "url": sim.url, "log_file": str(sim.log_path),
                     "canary": {"interval": "30s"}, "restart": {"method": "none"}}],
    })
    clock = FakeClock()
    everything = FlightRecorder(window_s=config.watchdog.recorder_window)
    recent = FlightRecorder(window_s=300.0)

    def emit(record: Any) -> None:
        everything.add(record)
        recent.add(record)

    suite = ProbeSuite(config, clock, emit, gpu_table=SimNvml(sim.gpu_dir))
    probes = suite.targets["vllm"]
    traffic: asyncio.Task[Any] | None = None
    try:
        for tick in range(600):
            clock.now = float(tick)
            if tick == 200:  # real traffic for a while: canaries must give way to it
                traffic = asyncio.create_task(httpx.AsyncClient(timeout=60).post(
                    f"{sim.url}/v1/completions", json={"model": sim.model, "prompt": "x", "max_tokens": 8000}))
            if tick % 2 == 0:
                await suite.gpu.round()  # type: ignore[union-attr]
            if tick % 5 == 0:
                await probes.server.round()
                await suite.processes.round()
            await probes.canary.round()
        assert traffic is not None and not traffic.done(), "the traffic ended early"
        everything.note_gpus(suite.gpu.devices)  # type: ignore[union-attr]
        header = build_header(config, everything.gpus, target_gpus=suite.target_gpus(), wall_zero=1.7e9)
    finally:
        if traffic is not None:
            traffic.cancel()
        await suite.aclose()

    records = everything.records()
    kinds = {type(r) for r in records}
    assert {GpuSample, ServerPoll, ProcessSample, Canary} <= kinds
    assert sum(isinstance(r, GpuSample) for r in records) == 300
    assert sum(isinstance(r, ServerPoll) for r in records) == 120
    canaries = [r for r in records if isinstance(r, Canary)]
    assert all(c.ok for c in canaries)
    # While the long request produced tokens (40 s at 200 tok/s: longer than the rest of the
    # synthetic run), no canary was needed; before it, one every interval.
    # (Routine canaries wait an extra 0-10% of their interval: jitter, so targets do not burst.)
    starts = [c.started for c in canaries]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert starts[0] == 0.0 and gaps and all(30.0 <= gap <= 34.0 for gap in gaps), starts
    assert starts[-1] < 200.0 <= starts[-1] + 34.0, starts  # one every interval until the traffic, then none

    path = tmp_path / "vllm.trace.jsonl"
    assert everything.write(path, header) == len(records)
    trace = read_trace(path)
    assert trace.problems == []
    assert trace.header.targets[0].name == "vllm" and trace.header.targets[0].gpus == [0]
    assert trace.header.gpus == [GpuDevice(index=0, name=everything.gpus[0].name,
                                           mem_total_mib=everything.gpus[0].mem_total_mib,
                                           extra=everything.gpus[0].extra)]
    assert trace.header.extra["wall_zero"] == 1.7e9
    assert trace.records == records  # every field, extras included, survives the round trip

    kept = recent.records()
    assert recent.newest == records[-1].t and min(r.t for r in kept) >= recent.newest - 300.0
    assert len(kept) < len(records)
    assert kept == [r for r in records if r.t >= min(r.t for r in kept)]


def test_records_are_kept_packed_and_come_back_equal() -> None:
    """Issue 15: the recorder holds records as bytes, a third of the memory, and gives back
    equal records, types kept exactly (int and float, list and tuple in ``extra``)."""
    from watchdog.daemon.recorder import pack
    from watchdog.trace.records import Event, GpuProc, LoadedModel, UnknownRecord

    originals = [
        GpuSample(t=1.25, index=3, util=87.0, mem_used_mib=70000, procs=[
            GpuProc(pid=4001, mem_mib=69000, target="a", extra={"util": 40}), GpuProc(pid=9, mem_mib=None)],
            temp_c=70.5, power_w=None, extra={"clock": [1, 2.5], "tuple": (1, "x")}),
        Xid(t=2.0, index=1, xid=79, pid=None, extra={"unattributed": True}),
        Canary(t=3.0, target="a", ok=False, model="m", started=2.5, error="timeout"),
        ServerPoll(t=4.0, target="a", state="ready", running=3, gen_tokens_total=1e12,
                   models=[LoadedModel("llama3:8b", 4096.0, 240.0, {"digest": "sha"}), LoadedModel("x")],
                   extra={"steps_total": 12.0}),
        ProcessSample(t=5.0, target="a", status="sleeping", pid=100, rss_mib=2048.5, cpu_percent=0.0),
        LogLine(t=6.0, target="a", line="CUDA error: out of memory \u2603"),
        Event(t=7.0, target="a", event="restart_started", model=None),
    ]
    rec = FlightRecorder(window_s=600.0)
    for record in originals:
        assert pack(record) is not None and len(pack(record)) < 300
        rec.add(record)
    back = rec.records()
    assert back == originals and all(a is not b for a, b in zip(back, originals, strict=True))
    assert type(back[0].extra["clock"]) is list and type(back[0].extra["tuple"]) is tuple
    assert type(back[0].mem_used_mib) is int and type(back[3].extra["steps_total"]) is float

    # What cannot be packed exactly is kept as it is: an object in extra, an integer time, unknown types.
    odd = [LogLine(t=8.0, target="a", line="x", extra={"obj": object()}), poll(9),  # type: ignore[arg-type]
           UnknownRecord(t=10.0, type="future", raw={"a": 1})]
    for record in odd:
        assert pack(record) is None
        rec.add(record)
    assert [r is o for r, o in zip(rec.records(since=8.0), odd, strict=True)] == [True, True, True]
