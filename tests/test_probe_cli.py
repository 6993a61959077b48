"""``watchdogctl probe`` as an operator runs it, against simulated servers and their GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.simulator import Simulator, sim_factory  # noqa: F401 - the fixture
from watchdog.trace.io import read_trace_lines
from watchdog.trace.records import Canary, GpuSample, LogLine, ProcessSample, ServerPoll


def write_config(path: Path, gpu_dir: Path, *sims: Simulator) -> Path:
    lines = ['[watchdog]', 'gpu_backend = "sim"', f'sim_gpu_dir = "{gpu_dir}"', "",
             "[policy]", 'mode = "observe"', ""]
    for sim in sims:
        lines += ["[[targets]]", f'name = "{sim.kind}"', f'kind = "{sim.kind}"', f'url = "{sim.url}"',
                  f'log_file = "{sim.log_path}"', ""]
    path.write_text("\n".join(lines))
    return path


def watchdogctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "watchdog", "--config", str(config), "probe", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def servers(sim_factory: Any, tmp_path: Path) -> tuple[Simulator, Simulator, Path]:  # noqa: F811
    ollama = sim_factory("ollama", "--decode-tps", "200", "--load-time", "0.2")
    httpx.post(f"{ollama.url}/api/generate", json={"model": ollama.model, "keep_alive": "10m"},
               timeout=10).raise_for_status()
    vllm = sim_factory("vllm", "--decode-tps", "200", "--load-time", "0.2", "--gpu-memory-utilization", "0.4")
    # An out-of-memory episode in vLLM's log, over before the probe runs.
    vllm.inject("fragmentation")
    httpx.post(f"{vllm.url}/v1/completions", json={"model": vllm.model, "prompt": "x", "max_tokens": 4}, timeout=10)
    vllm.recover()
    vllm.wait_log("OutOfMemoryError")
    return ollama, vllm, write_config(tmp_path / "watchdog.toml", ollama.gpu_dir, ollama, vllm)


def test_json_output_is_a_replayable_trace(sim_factory: Any, tmp_path: Path) -> None:  # noqa: F811
    ollama, vllm, config = servers(sim_factory, tmp_path)
    result = watchdogctl(config, "--all", "--json")
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stdout.splitlines()[0])
    assert first["type"] == "header" and {t["name"] for t in first["targets"]} == {"ollama", "vllm"}
    trace = read_trace_lines(result.stdout.splitlines())
    assert trace.problems == []
    by_type: dict[type, list[Any]] = {}
    for record in trace.records:
        by_type.setdefault(type(record), []).append(record)
    polls = {p.target: p for p in by_type[ServerPoll]}
    assert polls["ollama"].state == polls["vllm"].state == "ready"
    canaries = {c.target: c for c in by_type[Canary]}
    assert all(c.ok and c.ttft_s is not None and c.error is None for c in canaries.values())
    assert set(canaries) == {"ollama", "vllm"}
    (gpu,) = by_type[GpuSample]
    assert {p.target for p in gpu.procs} == {"ollama", "vllm"}
    assert {h.name: h.gpus for h in trace.header.targets} == {"ollama": [0], "vllm": [0]}
    assert {p.target: p.pid for p in by_type[ProcessSample]} == {"ollama": ollama.pid, "vllm": vllm.pid}
    assert any(line.target == "vllm" and line.extra["pattern"] == "torch_oom" for line in by_type[LogLine])
    raw = [json.loads(line) for line in result.stdout.splitlines()[1:]]
    canary_json = next(r for r in raw if r["type"] == "canary")
    assert {"ttft_s", "error", "tokens", "tokens_per_s", "started", "model", "ok"} <= set(canary_json)


def test_table_for_people(sim_factory: Any, tmp_path: Path) -> None:  # noqa: F811
    _, _, config = servers(sim_factory, tmp_path)
    result = watchdogctl(config, "vllm", "ollama")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for needle in ("Targets", "ollama", "vllm", "ready", "TTFT", "GPUs (ok: 1 GPU(s)", "Log lines that matter",
                   "torch_oom", "nothing was changed on any server"):
        assert needle in out, f"{needle!r} not in:\n{out}"


def test_no_canary_option_and_usage_errors(sim_factory: Any, tmp_path: Path) -> None:  # noqa: F811
    _, _, config = servers(sim_factory, tmp_path)
    result = watchdogctl(config, "vllm", "--json", "--no-canary")
    assert result.returncode == 0 and '"type":"canary"' not in result.stdout
    trace = read_trace_lines(result.stdout.splitlines())
    assert [t.name for t in trace.header.targets] == ["vllm"]
    # Only vLLM was probed, but Ollama's runner on the GPU is still Ollama's, not no one's.
    (gpu,) = [r for r in trace.records if isinstance(r, GpuSample)]
    assert {p.target for p in gpu.procs} == {"ollama", "vllm"}
    missing = watchdogctl(config, "nosuch")
    assert missing.returncode == 2 and "unknown or disabled target(s): nosuch" in missing.stderr
    neither = watchdogctl(config)
    assert neither.returncode == 2 and "--all" in neither.stderr
