"""The GPU probe through the simulator's NVML (SimNvml) while real simulator processes run.

The same probe code as on a real GPU; the simulator's runners are real child
processes, so attribution by process tree is real too.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psutil
import pytest

from tests.simulator import Simulator, sim_factory  # noqa: F401 - the fixture
from tests.support import wait_for
from watchdog.config.model import TargetSettings
from watchdog.probes.attribution import Attributor
from watchdog.probes.gpu import GpuProbe
from watchdog.sim.nvml import SimNvml
from watchdog.trace.records import GpuSample, Xid

FAST = ("--decode-tps", "200", "--load-time", "0.2")


def target(sim: Simulator, name: str | None = None) -> TargetSettings:
    return TargetSettings(name=name or sim.kind, kind=sim.kind, url=sim.url, restart={"method": "none"})


def load(sim: Simulator, keep_alive: Any = "5m") -> None:
    import httpx

    httpx.post(f"{sim.url}/api/generate", json={"model": sim.model, "keep_alive": keep_alive},
               timeout=10).raise_for_status()


def probe_for(sim: Simulator, targets: list[TargetSettings], **kw: Any) -> tuple[GpuProbe, Attributor, list[Any]]:
    attributor = Attributor(targets)
    out: list[Any] = []
    probe = GpuProbe(SimNvml(sim.gpu_dir), time.monotonic, out.append, attribute=attributor.owners, **kw)
    return probe, attributor, out


async def test_samples_follow_the_server_and_its_runner_belongs_to_it(sim_factory: Any) -> None:  # noqa: F811
    ollama = sim_factory("ollama", *FAST)
    load(ollama)
    # On the same GPU, but not a configured target:
    stranger = sim_factory("vllm", *FAST, "--gpu-memory-utilization", "0.4")
    probe, attributor, out = probe_for(ollama, [target(ollama)])
    try:
        (sample,) = await probe.round()
        assert sample.error is None and out == [sample]
        owners = {p.pid: p.target for p in sample.procs}
        runners = [p for p in psutil.Process(ollama.pid).children() if p.pid in owners]
        assert runners, f"no child of the Ollama simulator among {owners}"
        assert all(owners[r.pid] == "ollama" for r in runners)
        strangers = {stranger.pid, *(c.pid for c in psutil.Process(stranger.pid).children(recursive=True))}
        foreign = [pid for pid in owners if pid in strangers]
        assert foreign and all(owners[pid] is None for pid in foreign)  # reported, belongs to no one
        held = sum(p.mem_mib for p in sample.procs)
        assert sample.mem_used_mib >= held > 0
        assert attributor.gpus_of("ollama") == [0]
        device = probe.devices[0]
        assert device.name and device.mem_total_mib and device.mem_total_mib >= sample.mem_used_mib
    finally:
        probe.close()


async def test_two_targets_on_one_gpu(sim_factory: Any) -> None:  # noqa: F811
    ollama = sim_factory("ollama", *FAST)
    load(ollama)
    vllm = sim_factory("vllm", *FAST, "--gpu-memory-utilization", "0.4")
    probe, attributor, _ = probe_for(ollama, [target(ollama), target(vllm)])
    try:
        (sample,) = await probe.round()
        by_target: dict[str | None, int] = {}
        for proc in sample.procs:
            by_target[proc.target] = by_target.get(proc.target, 0) + (proc.mem_mib or 0)
        assert set(by_target) == {"ollama", "vllm"} and all(v > 0 for v in by_target.values())
        assert attributor.gpus_of("vllm") == [0]
    finally:
        probe.close()


async def first_sample(probe: GpuProbe, condition: Any, timeout: float = 5.0) -> GpuSample:
    """Rounds until a sample meets ``condition`` (SimNvml caches its files for 50 ms)."""
    async with asyncio.timeout(timeout):
        while True:
            (sample,) = await probe.round()
            if condition(sample):
                return sample
            await asyncio.sleep(0.02)


async def test_a_lost_gpu_and_its_recovery(sim_factory: Any) -> None:  # noqa: F811
    sim = sim_factory("vllm", *FAST)
    probe, _, _ = probe_for(sim, [target(sim)], retry_init_s=0.2)
    try:
        assert (await probe.round())[0].error is None
        sim.inject("gpu_lost")
        lost = await first_sample(probe, lambda s: s.error is not None)
        assert (lost.error, lost.util, lost.mem_used_mib) == ("gpu_lost", None, None)
        sim.recover()
        back = await first_sample(probe, lambda s: s.error is None)
        assert back.mem_used_mib and back.mem_used_mib > 0
    finally:
        probe.close()


async def test_driver_mismatch_then_a_fresh_init(sim_factory: Any) -> None:  # noqa: F811
    sim = sim_factory("vllm", *FAST)
    probe, _, _ = probe_for(sim, [target(sim)], retry_init_s=0.2)
    try:
        await probe.round()
        sim.inject("driver_mismatch")
        sample = await first_sample(probe, lambda s: s.error is not None)
        assert sample.error == "driver_mismatch" and "NVML lost" in probe.status
        sim.recover()
        await first_sample(probe, lambda s: s.error is None)
        assert probe.status.startswith("ok")
    finally:
        probe.close()


async def test_xid_events_reach_the_trace(sim_factory: Any) -> None:  # noqa: F811
    sim = sim_factory("vllm", *FAST)
    probe, _, out = probe_for(sim, [target(sim)])
    try:
        await probe.round()
        probe.start_xid_watch(wait_ms=100)
        wait_for(lambda: probe._xid is not None and probe._xid.registered == [0], 5, "XID registration")
        sim.inject("xid", xid=48)

        async def xid() -> Xid:
            while True:
                found = [r for r in out if isinstance(r, Xid)]
                if found:
                    return found[0]
                await asyncio.sleep(0.02)

        event = await asyncio.wait_for(xid(), 5.0)
        assert (event.index, event.xid) == (0, 48)
    finally:
        probe.close()


async def test_a_missing_simulated_gpu_is_no_driver(tmp_path: Any) -> None:
    probe = GpuProbe(SimNvml(tmp_path / "nothing-here"), time.monotonic, lambda r: None)
    try:
        assert await probe.round() == [] and "no NVIDIA driver" in probe.status
    finally:
        probe.close()


def test_xid_watch_stats_state_rewrites_and_reads_only_a_new_xid(sim_factory: Any, monkeypatch: Any) -> None:  # noqa: F811
    """The simulator rewrites its state file every 0.25 s; the simulated NVML's XID watcher
    must read no file for that (only its small XID file, and only when an XID is injected):
    this was a seventh of the daemon's CPU in the footprint benchmark (issue 15)."""
    import pynvml

    import watchdog.sim.nvml as sim_nvml

    sim = sim_factory("vllm", *FAST)
    state = sim.gpu_state
    wait_for(lambda: state.with_suffix(".xids").exists(), 10, "the simulator's XID file")
    reads: list[str] = []
    real_read = sim_nvml._read_bytes

    def counting(path: str, size_hint: int) -> bytes:
        reads.append(os.path.basename(path))
        return real_read(path, size_hint)

    monkeypatch.setattr(sim_nvml, "_read_bytes", counting)
    nvml = SimNvml(sim.gpu_dir)
    nvml.nvmlInit()
    events = nvml.nvmlEventSetCreate()
    nvml.nvmlDeviceRegisterEvents(nvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlEventTypeXidCriticalError, events)
    assert reads == [state.with_suffix(".xids").name]  # the baseline, from the XID file alone
    reads.clear()
    before = state.stat().st_mtime_ns
    for _ in range(3):  # about 3 s of state-file rewrites
        with pytest.raises(pynvml.NVMLError_Timeout):
            nvml.nvmlEventSetWait_v2(events, 1000)
    assert state.stat().st_mtime_ns != before, "the simulator did not rewrite its state file"
    assert reads == []
    sim.inject("xid", xid=48)
    event = nvml.nvmlEventSetWait_v2(events, 10_000)
    assert (event.eventType, event.eventData, event.device.index) == (pynvml.nvmlEventTypeXidCriticalError, 48, 0)
    assert set(reads) == {state.with_suffix(".xids").name}
    with pytest.raises(pynvml.NVMLError_Timeout):
        nvml.nvmlEventSetWait_v2(events, 600)  # reported once
    nvml.nvmlEventSetFree(events)
    nvml.nvmlShutdown()
