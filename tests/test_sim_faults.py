"""Every fault, as a client and the simulated GPU (read through SimNvml) observe it."""

from __future__ import annotations

import json
import os
import re
import signal
import threading

import httpx
import ollama
import openai
import pynvml
import pytest

from tests.simulator import SimulatorError, sim_factory  # noqa: F401 - the fixture
from tests.support import wait_for
from watchdog.sim.nvml import SimNvml, pid_alive

FAST = ("--decode-tps", "400", "--load-time", "0.1")
MIB = 1024 * 1024


def gpu(sim):
    nvml = sim.nvml()
    return nvml, nvml.nvmlDeviceGetHandleByIndex(0)


def used_mib(nvml, handle) -> float:
    return nvml.nvmlDeviceGetMemoryInfo(handle).used / MIB


def procs(nvml, handle) -> dict[int, float]:
    return {p.pid: p.usedGpuMemory / MIB for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)}


def util(nvml, handle) -> int:
    return nvml.nvmlDeviceGetUtilizationRates(handle).gpu


def background(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_ollama_hang_answers_ps_but_never_generates_until_recover(sim_factory):
    sim = sim_factory("ollama", *FAST)
    client = ollama.Client(host=sim.url)
    client.generate(model=sim.model, prompt="warm up")
    nvml, h = gpu(sim)
    held = used_mib(nvml, h)
    sim.inject("hang")

    with pytest.raises(httpx.ReadTimeout):  # not even the response headers come
        httpx.post(f"{sim.url}/api/generate", json={"model": sim.model, "prompt": "hi"}, timeout=0.5)
    stuck, result = background(lambda: ollama.Client(host=sim.url, timeout=30).generate(
        model=sim.model, prompt="still there?"))
    wait_for(lambda: (s := sim.state())["running"] + s["waiting"] == 2, 3, "both requests accepted and stuck")
    assert [m.model for m in client.ps().models] == [sim.model]  # status keeps answering
    assert httpx.head(sim.url, timeout=1).status_code == 200
    assert util(nvml, h) == 0 and used_mib(nvml, h) == held  # idle with memory held
    assert stuck.is_alive()

    sim.recover()
    stuck.join(10)
    assert result["value"].done and result["value"].response.strip()


def test_hang_after_tokens_stalls_a_vllm_stream_while_health_and_metrics_answer(sim_factory):
    sim = sim_factory("vllm", *FAST, "--stats-interval", "0.2")
    nvml, h = gpu(sim)
    sim.inject("hang", after_tokens=3)
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0, timeout=1.0)
    tokens = []
    with pytest.raises(openai.APITimeoutError):
        for chunk in client.completions.create(model=sim.model, prompt="hi", max_tokens=50, stream=True):
            tokens.append(chunk.choices[0].text)
    assert len(tokens) == 3
    assert httpx.get(f"{sim.url}/health", timeout=1).status_code == 200
    metrics = httpx.get(f"{sim.url}/metrics", timeout=1).text
    frozen = re.search(r"^vllm:generation_tokens_total\{.*\} (\S+)$", metrics, re.M).group(1)
    assert float(frozen) == 3.0
    assert re.search(r"^vllm:num_requests_running\{.*\} 1\.0$", metrics, re.M)  # the aborted request stays
    wait_for(lambda: util(nvml, h) == 0, 2, "GPU idle while the engine is stuck")
    assert used_mib(nvml, h) > 10000  # vLLM's memory stays held
    sim.wait_log("Avg generation throughput: 0.0 tokens/s, Running: 1 reqs, Waiting: 0 reqs")


def test_vllm_exits_when_its_engine_core_dies(sim_factory):
    sim = sim_factory("vllm", *FAST)
    nvml, h = gpu(sim)
    [engine_core] = procs(nvml, h)
    assert engine_core != sim.pid
    os.kill(engine_core, signal.SIGKILL)
    assert sim.proc.wait(5) == 1
    assert "died unexpectedly" in sim.wait_log("EngineCore_0")


def test_a_model_split_across_two_gpus(sim_factory):
    sim = sim_factory("vllm", *FAST, "--gpu-index", "0", "--gpu-index", "1", "--gpu-mem-mib", "16000",
                      "--gpu-memory-utilization", "0.5")
    nvml = sim.nvml()
    assert nvml.nvmlDeviceGetCount() == 2
    per_gpu = [procs(nvml, nvml.nvmlDeviceGetHandleByIndex(i)) for i in (0, 1)]
    assert per_gpu[0] == per_gpu[1] and len(per_gpu[0]) == 1
    assert sum(per_gpu[0].values()) == pytest.approx((0.5 * 16000 * 2 - 310) / 2, abs=1)


def test_hang_scope_all_stalls_status_routes_too(sim_factory):
    sim = sim_factory("vllm", *FAST)
    sim.inject("hang", scope="all")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{sim.url}/health", timeout=0.5)
    assert sim.state()["faults"]["hang"]["scope"] == "all"  # the control API still answers
    sim.recover()
    assert httpx.get(f"{sim.url}/health", timeout=2).status_code == 200


def test_nccl_hang_pins_util_at_100_and_logs_the_watchdog_timeout(sim_factory):
    sim = sim_factory("vllm", *FAST)
    nvml, h = gpu(sim)
    sim.inject("nccl_hang", timeout_s=0.5)
    with pytest.raises(openai.APITimeoutError):
        openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0, timeout=0.8).completions.create(
            model=sim.model, prompt="hi", max_tokens=5)
    wait_for(lambda: util(nvml, h) == 100, 2, "util pinned at 100%")
    line = sim.wait_log("Watchdog caught collective operation timeout")
    assert "ProcessGroupNCCL.cpp" in line and "Timeout(ms)=500" in line and "milliseconds before timing out" in line
    assert httpx.get(f"{sim.url}/health", timeout=1).status_code == 200
    sim.recover()
    wait_for(lambda: util(nvml, h) < 100, 2, "util back from 100%")


def test_slow_cuts_tokens_per_second_and_reports_thermal_slowdown(sim_factory):
    sim = sim_factory("ollama", "--decode-tps", "200", "--load-time", "0.1", "--response-tokens", "20")
    client = ollama.Client(host=sim.url)
    client.generate(model=sim.model, prompt="warm up")

    def tokens_per_s() -> float:
        answer = client.generate(model=sim.model, prompt="hi")
        return answer.eval_count / (answer.eval_duration / 1e9)

    normal = tokens_per_s()
    sim.inject("slow", factor=0.2)
    slow = tokens_per_s()
    assert slow < normal * 0.4, (normal, slow)
    nvml, h = gpu(sim)
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons(h) & pynvml.nvmlClocksEventReasonSwThermalSlowdown


def test_failed_unload_leaves_the_runner_and_its_memory(sim_factory):
    sim = sim_factory("ollama", *FAST)
    client = ollama.Client(host=sim.url)
    client.generate(model=sim.model, prompt="")
    nvml, h = gpu(sim)
    [(runner, mem)] = wait_for(lambda: [(p, m) for p, m in procs(nvml, h).items() if m == 2600], 2,
                               "the loaded model's memory on the GPU")
    sim.inject("failed_unload", report_after_s=0.2)

    assert client.generate(model=sim.model, prompt="", keep_alive=0).done_reason == "unload"
    assert client.ps().models == []  # gone from the server's list...
    line = sim.wait_log("gpu VRAM usage didn't recover within timeout")
    assert f"runner.pid={runner}" in line and "runner.vram=" in line
    assert procs(nvml, h) == {runner: mem}  # ...but not from the GPU
    assert pid_alive(runner)

    sim.recover()
    wait_for(lambda: procs(nvml, h) == {}, 3, "the stuck runner freed by recover")


def test_leak_per_load_and_over_time(sim_factory):
    sim = sim_factory("ollama", *FAST)
    client = ollama.Client(host=sim.url)
    nvml, h = gpu(sim)
    sim.inject("leak", mib_per_load=300)
    for _ in range(2):
        client.generate(model=sim.model, prompt="")
        client.generate(model=sim.model, prompt="", keep_alive=0)
    wait_for(lambda: procs(nvml, h) == {sim.pid: 600}, 3, "600 MiB left with the server after 2 loads")

    sim.inject("leak", mib_per_s=2000)
    client.generate(model=sim.model, prompt="")
    first = used_mib(nvml, h)
    wait_for(lambda: used_mib(nvml, h) > first + 500, 3, "memory growing while the model stays loaded")
    assert [m.model for m in client.ps().models] == [sim.model]


def reserved_unallocated_gib(line: str) -> float:
    return float(re.search(r"([\d.]+) GiB is reserved by PyTorch but unallocated", line).group(1))


def test_fragmentation_fails_requests_with_much_reserved_but_unallocated(sim_factory):
    sim = sim_factory("vllm", *FAST)
    sim.inject("fragmentation")
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError, match="CUDA out of memory"):
        client.completions.create(model=sim.model, prompt="hi")
    line = sim.wait_log("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate")
    assert reserved_unallocated_gib(line) > 2.0
    assert "expandable_segments:True" in line


def test_oom_fails_vllm_requests_with_little_reserved(sim_factory):
    sim = sim_factory("vllm", *FAST)
    sim.inject("oom")
    with pytest.raises(openai.InternalServerError):
        openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0).chat.completions.create(
            model=sim.model, messages=[{"role": "user", "content": "hi"}])
    line = sim.wait_log("torch.OutOfMemoryError")
    assert reserved_unallocated_gib(line) < 0.5


def test_oom_fails_an_ollama_load_with_cudamalloc_and_frees_the_runner(sim_factory):
    sim = sim_factory("ollama", *FAST)
    sim.inject("oom")
    with pytest.raises(ollama.ResponseError, match="cudaMalloc failed: out of memory") as err:
        ollama.Client(host=sim.url).generate(model=sim.model, prompt="hi")
    assert err.value.status_code == 500
    sim.wait_log("cudaMalloc failed: out of memory")
    nvml, h = gpu(sim)
    wait_for(lambda: procs(nvml, h) == {}, 3, "the failed runner's memory freed")


def test_a_model_too_big_for_a_shared_gpu_fails_to_load(sim_factory):
    first = sim_factory("ollama", *FAST, "--model", "big:70b=15000")
    second = sim_factory("ollama", *FAST, "--model", "mid:13b=10000")  # same simulated GPU
    ollama.Client(host=first.url).generate(model="big:70b", prompt="")
    wait_for(lambda: used_mib(*gpu(second)) > 15000, 2, "the first model on the shared GPU")
    with pytest.raises(ollama.ResponseError, match="out of memory"):
        ollama.Client(host=second.url).generate(model="mid:13b", prompt="")
    second.wait_log("unable to allocate CUDA0 buffer")


def test_crash_exits_and_the_gpu_memory_goes_away(sim_factory):
    sim = sim_factory("ollama", *FAST)
    ollama.Client(host=sim.url).generate(model=sim.model, prompt="")
    nvml, h = gpu(sim)
    [runner] = procs(nvml, h)
    sim.inject("crash", exit_code=3)
    assert sim.proc.wait(5) == 3
    wait_for(lambda: not pid_alive(runner), 3, "the runner gone with its server")
    assert procs(nvml, h) == {} and used_mib(nvml, h) == 0
    assert nvml.nvmlDeviceGetCount() == 1  # the GPU itself stays
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{sim.url}/api/ps", timeout=1)
    assert "panic:" in sim.log_text()


def test_sigkill_of_the_server_takes_its_runners_along(sim_factory):
    sim = sim_factory("ollama", *FAST)
    ollama.Client(host=sim.url).generate(model=sim.model, prompt="")
    [runner] = sim.state()["models"]
    os.kill(sim.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(runner["holder_pid"]), 3, "the orphaned runner exited")


def test_a_runner_killed_from_outside_drops_its_model(sim_factory):
    sim = sim_factory("ollama", *FAST)
    client = ollama.Client(host=sim.url)
    client.generate(model=sim.model, prompt="")
    nvml, h = gpu(sim)
    [runner] = procs(nvml, h)
    os.kill(runner, signal.SIGKILL)
    wait_for(lambda: client.ps().models == [], 3, "the model gone from /api/ps")
    assert procs(nvml, h) == {}
    assert "signal: killed" in sim.wait_log("llama runner process has terminated")
    assert client.generate(model=sim.model, prompt="again").done  # loads anew


def test_a_frozen_server_reads_idle_with_memory_held(sim_factory):
    sim = sim_factory("vllm", "--decode-tps", "10", "--load-time", "0.1")
    nvml, h = gpu(sim)
    thread, _ = background(lambda: httpx.post(f"{sim.url}/v1/completions", timeout=10,
                                              json={"model": sim.model, "prompt": "x", "max_tokens": 15}))
    wait_for(lambda: util(nvml, h) > 90, 3, "busy while generating")
    held = used_mib(nvml, h)
    os.kill(sim.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: util(nvml, h) == 0, 3, "a frozen writer reads as idle")
        assert used_mib(nvml, h) == held
    finally:
        os.kill(sim.pid, signal.SIGCONT)
    thread.join(10)


def test_http_5xx_on_generation_only_or_everywhere(sim_factory):
    sim = sim_factory("vllm", *FAST)
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    sim.inject("http_5xx")
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model=sim.model, messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 500
    assert client.models.list().data[0].id == sim.model  # looks alive
    assert httpx.get(f"{sim.url}/health", timeout=1).status_code == 200
    sim.inject("http_5xx", status=503, scope="all")
    assert httpx.get(f"{sim.url}/health", timeout=1).status_code == 503
    assert '" 503 ' in sim.wait_log('"GET /health HTTP/1.1" 503')


def test_garbage_json_truncated_and_huge_bodies(sim_factory):
    sim = sim_factory("ollama", *FAST)
    client = ollama.Client(host=sim.url)
    client.generate(model=sim.model, prompt="")
    sim.inject("garbage")
    with pytest.raises(json.JSONDecodeError):
        client.ps()
    with pytest.raises(json.JSONDecodeError):
        list(client.generate(model=sim.model, prompt="hi", stream=True))
    sim.inject("garbage", mode="truncate", after_chunks=2)
    with pytest.raises(httpx.RemoteProtocolError):
        client.ps()
    parts = []
    with pytest.raises(httpx.RemoteProtocolError):
        for part in client.generate(model=sim.model, prompt="hi", stream=True):
            parts.append(part)
    assert len(parts) == 2
    sim.inject("garbage", mode="huge")
    assert len(httpx.get(f"{sim.url}/api/tags", timeout=10).content) > 20 * MIB
    sim.recover()
    assert client.ps().models[0].model == sim.model


def test_garbage_truncates_a_vllm_sse_stream(sim_factory):
    sim = sim_factory("vllm", *FAST)
    sim.inject("garbage", mode="truncate", after_chunks=3)
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    chunks = []
    with pytest.raises((httpx.RemoteProtocolError, openai.APIConnectionError)):
        for chunk in client.chat.completions.create(model=sim.model, stream=True,
                                                    messages=[{"role": "user", "content": "hi"}]):
            chunks.append(chunk)
    assert len(chunks) == 3


def test_xid_event_reaches_nvml_and_79_loses_the_gpu(sim_factory):
    sim = sim_factory("ollama", *FAST)
    client = ollama.Client(host=sim.url)
    client.generate(model=sim.model, prompt="")
    nvml, h = gpu(sim)
    events = nvml.nvmlEventSetCreate()
    nvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, events)
    sim.inject("xid", xid=13)
    assert nvml.nvmlEventSetWait_v2(events, 2000).eventData == 13
    assert client.generate(model=sim.model, prompt="hi").done  # 13 is survivable
    sim.inject("xid")
    assert nvml.nvmlEventSetWait_v2(events, 2000).eventData == 79
    wait_for(lambda: _raises(lambda: nvml.nvmlDeviceGetMemoryInfo(h), pynvml.NVMLError_GpuIsLost), 2,
             "GPU is lost after XID 79")
    with pytest.raises(ollama.ResponseError, match="CUDA error"):
        client.generate(model=sim.model, prompt="hi")


def test_gpu_lost_and_driver_mismatch_until_recover(sim_factory):
    sim = sim_factory("vllm", *FAST)
    sim.inject("gpu_lost")
    fresh = SimNvml(sim.gpu_dir, cache_s=0)
    fresh.nvmlInit()  # the driver still loads...
    with pytest.raises(pynvml.NVMLError_GpuIsLost):  # ...but the device answers "GPU is lost"
        fresh.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(openai.InternalServerError, match="CUDA error"):
        openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0).completions.create(
            model=sim.model, prompt="hi")
    sim.inject("driver_mismatch")
    with pytest.raises(pynvml.NVMLError_LibRmVersionMismatch):
        SimNvml(sim.gpu_dir).nvmlInit()
    sim.recover()
    fresh = SimNvml(sim.gpu_dir)
    fresh.nvmlInit()
    assert fresh.nvmlDeviceGetMemoryInfo(fresh.nvmlDeviceGetHandleByIndex(0)).used > 0


def test_control_api_refuses_bad_faults_and_cli_sets_initial_ones(sim_factory):
    sim = sim_factory("vllm", *FAST, "--fault", "slow:factor=0.5")
    assert sim.state()["faults"]["slow"]["factor"] == 0.5
    for body, needle in (({"fault": "melt"}, "unknown fault"),
                         ({"fault": "failed_unload"}, "does not apply"),
                         ({"fault": "slow", "factor": 3}, "factor"),
                         ({"fault": "hang", "after": 3}, "no parameter")):
        resp = httpx.post(f"{sim.url}/_sim/fault", json=body, timeout=2)
        assert resp.status_code == 400 and needle in resp.json()["error"], body
    with pytest.raises(SimulatorError, match="unknown fault"):
        sim_factory("ollama", "--fault", "melt")


def _raises(fn, exc_type) -> bool:
    try:
        fn()
    except exc_type:
        return True
    return False


def test_helper_reports_a_simulator_that_cannot_start(sim_factory):
    with pytest.raises(SimulatorError, match="exited with 2.*port must be"):
        sim_factory("ollama", "--port", "-5")
