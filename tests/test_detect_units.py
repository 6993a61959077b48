"""Detector rules on small, hand-written record sequences (time comes from the records)."""

from __future__ import annotations

import pytest

from watchdog.config.model import DetectSettings
from watchdog.detect.engine import DetectionEngine
from watchdog.detect.oom import parse_oom
from watchdog.detect.profile import TargetProfile
from watchdog.trace.records import (
    Canary,
    Event,
    GpuProc,
    GpuSample,
    LoadedModel,
    LogLine,
    ProcessSample,
    ServerPoll,
    Xid,
)


def engine(kind: str = "vllm", **settings: object) -> DetectionEngine:
    detect = DetectSettings(**settings)  # type: ignore[arg-type]
    return DetectionEngine([TargetProfile("srv", kind, (0,), detect)], detect, {0: 24000.0})


def gpu(t: float, util: float, mem: float, pid: int = 100, target: str | None = "srv") -> GpuSample:
    return GpuSample(t=t, index=0, util=util, mem_used_mib=mem + 300, procs=[GpuProc(pid, mem, target)])


def poll(t: float, tokens: float | None, running: int | None = 1, models: tuple[str, ...] = ("m",),
         state: str = "ready", vram: float = 9000) -> ServerPoll:
    return ServerPoll(t=t, target="srv", state=state, models=[LoadedModel(m, vram) for m in models],
                      running=running, waiting=0 if running is not None else None, gen_tokens_total=tokens)


def feed(e: DetectionEngine, records: list) -> list:
    out = []
    for record in sorted(records, key=lambda r: r.t):
        out.extend(e.feed(record))
    return out


def test_counter_stall_with_idle_gpu_is_a_hang_quickly() -> None:
    e = engine()
    records = [poll(t, 100 + 50 * min(t, 30), running=2) for t in range(0, 60, 5)]
    records += [gpu(t + 0.5, 95 if t < 30 else 0, 9500) for t in range(0, 60)]
    changes = feed(e, records)
    assert [(c.finding, c.state) for c in changes] == [("hang", "raised")]
    assert 30 + 14 <= changes[0].t <= 30 + 20
    assert "2 request(s) running" in changes[0].summary and "GPU 0 at 0%" in changes[0].summary


def test_counter_stall_with_busy_gpu_waits_for_the_busy_limit() -> None:
    e = engine(busy_stall_after=120)
    records = [poll(t, 100 + 50 * min(t, 30)) for t in range(0, 300, 5)]
    records += [gpu(t + 0.5, 99, 9500) for t in range(0, 300)]
    changes = feed(e, records)
    assert [(c.finding, c.state) for c in changes] == [("hang", "raised")]
    assert 150 <= changes[0].t <= 160
    assert "busy" in changes[0].summary


def test_tokens_resuming_clear_the_hang() -> None:
    e = engine()
    records = [poll(t, 100 + 50 * (min(t, 30) + max(0, t - 80))) for t in range(0, 120, 5)]
    records += [gpu(t + 0.5, 95 if t < 30 or t > 80 else 0, 9500) for t in range(0, 120)]
    changes = feed(e, records)
    assert [(c.finding, c.state) for c in changes] == [("hang", "raised"), ("hang", "cleared")]
    assert "tokens flow again" in changes[1].summary


def test_one_failed_canary_is_noise_two_are_a_hang() -> None:
    e = engine("ollama")
    base = [gpu(t + 0.5, 0, 9500) for t in range(0, 100)] + [poll(t, None, None) for t in range(0, 100, 5)]
    one = [Canary(t=28.0, target="srv", model="m", started=20.0, ok=False, error="timeout", tokens=0),
           Canary(t=31.0, target="srv", model="m", started=30.0, ok=True, ttft_s=0.3, tokens=4, tokens_per_s=20)]
    assert feed(e, base + one) == []
    e = engine("ollama")
    two = [Canary(t=28.0, target="srv", model="m", started=20.0, ok=False, error="timeout", tokens=0),
           Canary(t=38.0, target="srv", model="m", started=30.0, ok=False, error="stalled", tokens=2, ttft_s=0.2)]
    changes = feed(e, base + two)
    assert [(c.finding, c.state, c.t) for c in changes] == [("hang", "raised", 38.0)]


def test_canaries_failing_while_a_model_loads_are_not_a_hang() -> None:
    e = engine("ollama")
    records = [gpu(t + 0.5, 0, 500 + 200 * t) for t in range(0, 40)] + [poll(t, None, None) for t in range(0, 40, 5)]
    records += [Canary(t=18.0, target="srv", started=10.0, ok=False, error="timeout", tokens=0),
                Canary(t=28.0, target="srv", started=20.0, ok=False, error="timeout", tokens=0)]
    assert feed(e, records) == []


def test_a_stopped_process_is_a_hang() -> None:
    e = engine("openai")
    records = [gpu(t + 0.5, 0, 7000) for t in range(0, 30)]
    records += [ProcessSample(t=t, target="srv", pid=100, status="stopped" if t >= 10 else "sleeping")
                for t in range(0, 30, 3)]
    changes = feed(e, records)
    assert changes and changes[0].finding == "hang" and "stopped" in changes[0].summary
    assert 15 <= changes[0].t <= 18


def _stopped_then_restarted(*, by_watchdog: bool) -> list:
    """The bench's llama.cpp run (scripts/bench_recovery.py --mode act): pid 5464 stopped, seen so
    by the process probe every 5 s; restarted through a command at 95.1 (a new pid 5594 on the same
    port); a canary gets through at 96.1; the next poll (ready, 100.06) arrives a few ms before the
    next process round names the new pid (100.07)."""
    ok = {"model": "m", "ok": True, "ttft_s": 0.05, "tokens": 4, "tokens_per_s": 300.0}
    records: list = [ProcessSample(t=t, target="srv", pid=5464, status="sleeping" if t < 90 else "stopped")
                     for t in (80.0, 85.0, 90.0, 95.0)]
    records += [poll(t, 4.0, running=0) for t in (80.1, 85.1)]
    records += [ServerPoll(t=t, target="srv", state="error", error="timeout") for t in (90.1, 95.1)]
    records += [Canary(t=96.1, target="srv", started=96.0, **ok),  # type: ignore[arg-type]
                poll(100.06, 4.0, running=0),
                ProcessSample(t=100.07, target="srv", pid=5594, status="sleeping"),
                Canary(t=100.4, target="srv", started=100.37, **ok)]  # type: ignore[arg-type]
    if by_watchdog:
        records += [Event(t=95.2, target="srv", event="restart_started", extra={"by": "watchdog"}),
                    Event(t=100.37, target="srv", event="restart_finished", extra={"by": "watchdog"})]
    records += [ProcessSample(t=t, target="srv", pid=5594, status="sleeping") for t in (105.0, 110.0)]
    records += [poll(t, 8.0, running=0) for t in (105.1, 110.1)]
    return records


@pytest.mark.parametrize("by_watchdog", [True, False], ids=["act-restart", "outside-restart"])
def test_a_stopped_process_replaced_by_a_restart_is_not_hung_again(by_watchdog: bool) -> None:
    # Before the fix the poll at 100.06 raised "process 5464 is stopped for 10 s" again from the
    # samples of 90 and 95 (the pid already reaped), 5 ms before the new pid's sample cleared it.
    e = engine("llamacpp")
    changes = feed(e, _stopped_then_restarted(by_watchdog=by_watchdog))
    hangs = [(c.finding, c.state, c.t) for c in changes if c.finding == "hang"]
    assert hangs[0] == ("hang", "raised", 95.0) and "process 5464 is stopped" in changes[0].summary
    assert [state for _, state, _ in hangs] == ["raised", "cleared"], changes


def test_a_late_sample_of_the_stopped_pid_after_the_new_server_answered_is_no_hang() -> None:
    # The GPU validation's llamacpp run (an outside restart, no restart events), in the order the
    # pipeline took the records: the new server's first poll (its counter back to 0: "tokens flow
    # again") at 78.029 came before the old pid's last process sample, stamped 78.019.
    e = engine("llamacpp")
    ordered: list = []
    for t in range(60, 78):
        ordered.append(ProcessSample(t=t + 0.019, target="srv", pid=4882, status="stopped" if t >= 66 else "sleeping"))
        ordered.append(poll(t + 0.029, 500.0, running=0) if t < 66 else
                       ServerPoll(t=t + 0.029, target="srv", state="error", error="timeout"))
    ordered += [poll(78.029, 0.0, running=0),
                ProcessSample(t=78.019, target="srv", pid=4882, status="stopped"),
                poll(79.029, 0.0, running=0),
                ProcessSample(t=79.019, target="srv", pid=4955, status="sleeping"),
                poll(80.029, 0.0, running=0)]
    changes = [c for record in ordered for c in e.feed(record)]
    assert [(c.finding, c.state) for c in changes] == [("hang", "raised"), ("hang", "cleared")], changes
    assert "tokens flow again" in changes[1].summary


def test_a_process_stopped_again_after_answering_is_a_hang_again() -> None:
    # Forgetting stale stopped samples must not hide a new stop: the server answers, then stops.
    e = engine("llamacpp")
    records: list = [ProcessSample(t=t, target="srv", pid=7, status="stopped" if t >= 30 else "sleeping")
                     for t in range(0, 60, 5)]
    records += [poll(t + 0.1, 4.0, running=0) for t in range(0, 30, 5)]
    records += [ServerPoll(t=t + 0.1, target="srv", state="error", error="timeout") for t in range(30, 60, 5)]
    changes = feed(e, records)
    assert [(c.finding, c.state) for c in changes] == [("hang", "raised")]
    assert 35 <= changes[0].t <= 41


def test_startup_refusals_are_not_down_but_a_dead_process_is() -> None:
    e = engine("vllm")
    records = [ServerPoll(t=t, target="srv", state="down", error="refused") for t in range(0, 120, 5)]
    records += [ProcessSample(t=t, target="srv", pid=100, status="running") for t in range(0, 120, 5)]
    assert feed(e, records) == []
    e = engine("vllm")
    records = [poll(0, 10, 0)] + [ServerPoll(t=t, target="srv", state="down", error="refused") for t in range(5, 60, 5)]
    records += [ProcessSample(t=t, target="srv", pid=100, status="running" if t < 5 else "gone")
                for t in range(0, 60, 5)]
    changes = feed(e, records)
    assert [(c.finding, c.state) for c in changes] == [("down", "raised")]
    assert "gone" in changes[0].summary


def test_unload_that_frees_the_model_is_fine_and_one_that_does_not_is_raised() -> None:
    for released, expected in ((True, []), (False, [("failed_unload", "raised")])):
        e = engine("ollama")
        records = [poll(t, None, None, models=("m",) if t < 50 else ()) for t in range(0, 120, 5)]
        records += [gpu(t + 0.5, 0, 9500 if (t < 52 or not released) else 0) for t in range(0, 120)]
        records.append(Event(t=50.0, target="srv", event="unload_requested", model="m"))
        changes = feed(e, records)
        assert [(c.finding, c.state) for c in changes] == expected
        if expected:
            assert 60 <= changes[0].t <= 62 and "still held by pid 100" in changes[0].summary


def test_a_runner_still_under_the_main_process_is_no_orphan_when_the_main_pid_changes() -> None:
    """The main pid the process probe reports can change without the server being replaced (seen
    at start-up in the benchmarks: a false failed_unload, and in act mode a kill of a live engine).
    A memory holder that is still a descendant of the (new) main process serves it: no orphan."""
    for tree, expected in (([300], []), ([], [("failed_unload", "raised")])):
        e = engine("vllm")
        records = [poll(t, 10 + t, 0) for t in range(0, 90, 5)]
        records += [gpu(t + 0.5, 0, 7000, pid=300) for t in range(0, 90)]  # the engine/runner holds it
        records += [ProcessSample(t=t, target="srv", pid=100 if t < 20 else 200, status="sleeping",
                                  extra={"tree_pids": tree} if tree else {}) for t in range(0, 90, 5)]
        changes = feed(e, records)
        assert [(c.finding, c.state) for c in changes] == expected
        if expected:
            assert "outlived the server process" in changes[0].summary


def test_a_clean_unload_may_keep_its_cuda_context() -> None:
    e = engine("openai")
    records = [poll(t, 0, 0, models=("m",) if t < 50 else ()) for t in range(0, 120, 5)]
    records += [gpu(t + 0.5, 0, 7000 if t < 51 else 1500) for t in range(0, 120)]
    assert feed(e, records) == []


def test_leak_versus_one_big_allocation() -> None:
    e = engine("vllm", growth_window=60)
    records = [poll(t, 0, 0) for t in range(0, 600, 5)]
    records += [gpu(t + 0.5, 0, 10000 + (3000 if t > 100 else 0)) for t in range(0, 600)]
    assert feed(e, records) == [], "one step of 3 GiB is an allocation, not a leak"
    e = engine("vllm", growth_window=60)
    records = [poll(t, 0, 0) for t in range(0, 600, 5)]
    records += [gpu(t + 0.5, 0, 10000 + max(0, t - 100) * 10) for t in range(0, 600)]
    changes = feed(e, records)
    assert [(c.finding, c.state) for c in changes] == [("memory_growth", "raised")]
    assert "with the same models loaded" in changes[0].summary


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
         "23.68 GiB of which 3.10 GiB is free. 8.11 GiB is reserved by PyTorch but unallocated.", "fragmentation"),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 GiB. GPU 0 has a total capacity of "
         "23.68 GiB of which 1.10 GiB is free. 120.00 MiB is reserved by PyTorch but unallocated.", "oom"),
        ("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9536.00 MiB on device 0: cudaMalloc failed: "
         "out of memory", "oom"),
        ("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 512.00 MiB on device 0: cudaMalloc failed: "
         "out of memory", "fragmentation"),
        ('level=ERROR msg="llama runner process has terminated: cudaMalloc failed: out of memory"', "oom"),
    ],
)
def test_out_of_memory_lines_are_told_apart(line: str, kind: str) -> None:
    e = engine("llamacpp")
    # NVML shows 24000 - 20300 = 3700 MiB free on the device.
    changes = feed(e, [gpu(1.0, 50, 20000), LogLine(t=2.0, target="srv", line=line)])
    assert [(c.finding, c.state) for c in changes] == [(kind, "raised")]


def test_kv_cache_preemption_is_not_an_oom() -> None:
    assert parse_oom("Sequence group 12 is preempted by PreemptionMode.RECOMPUTE mode because there is not "
                     "enough KV cache space.") is None
    assert parse_oom("INFO: 200 OK") is None


def test_xids_raise_gpu_faults_unless_ignored() -> None:
    e = engine("vllm", ignore_xids=[45])
    changes = feed(e, [Xid(t=1.0, index=0, xid=45), Xid(t=2.0, index=0, xid=79)])
    assert [(c.target, c.finding, c.state) for c in changes] == [("gpu:0", "gpu_fault", "raised")]
    assert "fallen off the bus" in changes[0].summary


def test_degraded_needs_several_slow_canaries_against_its_own_baseline() -> None:
    e = engine("ollama")
    records = [Canary(t=10.0 * i + 1, target="srv", model="m", started=10.0 * i, ok=True, ttft_s=0.3, tokens=8,
                      tokens_per_s=40.0) for i in range(8)]
    records += [Canary(t=10.0 * i + 1, target="srv", model="m", started=10.0 * i, ok=True, ttft_s=0.3, tokens=8,
                       tokens_per_s=5.0) for i in range(8, 11)]
    changes = feed(e, records)
    assert [(c.finding, c.state, c.t) for c in changes] == [("degraded", "raised", 101.0)]
    assert "usually 40.0" in changes[0].summary


def test_a_server_that_answers_every_canary_with_500_cannot_generate() -> None:
    def run(errors: int, loading: bool = False) -> list:
        e = engine("vllm")
        records = [poll(t, 100, 0) for t in range(0, 80, 5)]
        records += [gpu(t + 0.5, 0, min(2000 + 100 * t, 9500) if loading else 9500) for t in range(0, 80)]
        records += [Canary(t=10.0 * i + 10.1, target="srv", model="m", started=10.0 * i + 10, ok=False,
                           error="http_5xx", tokens=0) for i in range(errors)]
        records.append(Canary(t=10.0 * errors + 10.2, target="srv", model="m", started=10.0 * errors + 10, ok=True,
                              ttft_s=0.2, tokens=4, tokens_per_s=30.0))
        return [(c.finding, c.state) for c in feed(e, records)]

    assert run(2) == [], "two 500s in a row can be a passing overload"
    assert run(3) == [("hang", "raised"), ("hang", "cleared")]
    assert run(3, loading=True) == [], "a model still loading (memory rising to its size) answers 503s"


def test_series_keeps_its_horizon_and_answers_newest_first() -> None:
    from watchdog.detect.view import Series

    series = Series(horizon=10.0)
    assert series.last() is None and series.at_or_before(5.0) is None
    for t in range(0, 30, 2):
        series.add(float(t), float(t) * 10)
    assert series.points[0] == (18.0, 180.0) and series.last() == (28.0, 280.0)  # 28 - 10 = 18 kept
    assert list(series.between(20.0, 24.0)) == [240.0, 220.0, 200.0]
    assert series.at_or_before(23.0) == 220.0 and series.at_or_before(17.0) is None


def test_two_stopped_samples_a_few_ms_under_five_seconds_apart_are_a_hang() -> None:
    # The process probe samples every 5 s, give or take a few ms. A target with no GPU samples in
    # between (nothing else re-checks the rule) waited a third sample, 5 s later, when the second
    # came 4.99 s after the first (seen in scripts/bench_recovery.py --mode act on llama.cpp).
    e = engine("llamacpp")
    records: list = [ProcessSample(t=t, target="srv", pid=7, status="sleeping") for t in (0.0, 5.0)]
    records += [poll(t, 4.0, running=0) for t in (0.02, 5.02)]
    records += [ProcessSample(t=9.93, target="srv", pid=7, status="stopped"),
                ProcessSample(t=14.92, target="srv", pid=7, status="stopped"),
                ServerPoll(t=14.93, target="srv", state="error", error="timeout"),
                ProcessSample(t=19.92, target="srv", pid=7, status="stopped")]
    changes = feed(e, records)
    assert [(c.finding, c.state) for c in changes] == [("hang", "raised")]
    assert changes[0].t == 14.92, changes
