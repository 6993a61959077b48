"""The simulator's side of issue 16, through the real probes: engine steps and prompt tokens on
/metrics (frozen by a stuck collective), the slow fault's clock event reason and SM clock through
SimNvml, and each server's log line for a prompt longer than its context."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.simulator import sim_factory  # noqa: F401 - the fixture
from tests.support import wait_for
from tests.test_adapters_sim import Probes, start
from watchdog.detect.truncation import parse_cut
from watchdog.probes.gpu import GpuProbe
from watchdog.probes.logpatterns import classify_line
from watchdog.sim.gpu import SLOW_CAUSES
from watchdog.sim.nvml import SimNvml


@pytest.mark.parametrize("kind", ["vllm", "llamacpp"])
async def test_steps_and_prompt_tokens_move_with_work_and_stop_in_a_stuck_collective(
        sim_factory: Any, kind: str) -> None:  # noqa: F811
    sim = start(sim_factory, kind)
    probes = Probes(sim)
    try:
        before = await probes.poll()
        assert (await probes.send()).ok
        after = await probes.poll()
        assert after.extra["steps_total"] > before.extra.get("steps_total", 0)
        assert after.extra["prompt_tokens_total"] > before.extra.get("prompt_tokens_total", 0)
        sim.inject("nccl_hang")
        request = asyncio.create_task(asyncio.to_thread(
            httpx.post, f"{sim.url}/v1/completions", json={"model": sim.model, "prompt": "hi", "max_tokens": 8},
            timeout=3))
        await asyncio.sleep(0.5)
        stuck = await probes.poll()
        await asyncio.sleep(1.0)
        still = await probes.poll()
        assert (stuck.running or 0) + (stuck.waiting or 0) == 1  # in flight, never scheduled
        assert still.extra["steps_total"] == stuck.extra["steps_total"]
        assert still.gen_tokens_total == stuck.gen_tokens_total
        nvml = sim.nvml()
        nvml.nvmlInit()
        assert nvml.nvmlDeviceGetUtilizationRates(nvml.nvmlDeviceGetHandleByIndex(0)).gpu == 100
        with pytest.raises(httpx.TimeoutException):
            await request
    finally:
        sim.recover()
        await probes.close()


@pytest.mark.parametrize("cause", ["power_brake", "hw_slowdown", "thermal"])
def test_the_slow_fault_reports_its_cause_and_a_lower_sm_clock(sim_factory: Any, cause: str) -> None:  # noqa: F811
    sim = start(sim_factory, "vllm")
    nvml = sim.nvml()
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    top = nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM)
    sim.inject("slow", factor=0.25, cause=cause)
    wait_for(lambda: nvml.nvmlDeviceGetCurrentClocksEventReasons(handle) & SLOW_CAUSES[cause], 5,
             f"the {cause} clock event reason")
    assert nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM) < 0.5 * top


@pytest.mark.parametrize("kind", ["ollama", "llamacpp", "vllm"])
def test_a_prompt_longer_than_the_context_is_logged_as_each_server_does(
        sim_factory: Any, kind: str) -> None:  # noqa: F811
    sim = start(sim_factory, kind)
    words = "lorem " * 60000  # about 90,000 tokens: longer than every simulated context
    if kind == "ollama":
        body = {"model": sim.model, "prompt": words, "stream": False, "options": {"num_predict": 2}}
        assert httpx.post(f"{sim.url}/api/generate", json=body, timeout=30).status_code == 200  # cut, answered
        needle = "truncating input prompt"
    elif kind == "llamacpp":
        assert httpx.post(f"{sim.url}/completion", json={"prompt": words, "n_predict": 2}, timeout=30).status_code == 400
        needle = "exceeds the available context size"
    else:
        body = {"model": sim.model, "prompt": words, "max_tokens": 2}
        assert httpx.post(f"{sim.url}/v1/completions", json=body, timeout=30).status_code == 400
        needle = "maximum context length"
    line = sim.wait_log(needle, timeout=10)
    assert classify_line(line) in ("prompt_truncated", "context_exceeded")
    cut = parse_cut(line)
    assert cut is not None and cut.context and cut.prompt and cut.prompt > cut.context


async def test_the_gpu_probe_puts_the_slowdown_reason_and_sm_clock_in_its_samples(
        sim_factory: Any) -> None:  # noqa: F811
    sim = start(sim_factory, "llamacpp")
    sim.inject("slow", factor=0.5, cause="power_brake")
    probe = GpuProbe(SimNvml(sim.gpu_dir), time.monotonic, lambda record: None)
    try:
        async def sample() -> Any:
            samples = await probe.round()
            return samples[0] if samples and "hw_power_brake" in samples[0].extra.get("throttle", []) else None

        deadline = time.monotonic() + 5
        found = None
        while found is None and time.monotonic() < deadline:
            found = await sample()
            await asyncio.sleep(0.1)
        assert found is not None, "no sample with the power brake reason"
        assert found.extra["sm_clock_mhz"] < found.extra["sm_clock_max_mhz"] / 2
    finally:
        probe.close()
