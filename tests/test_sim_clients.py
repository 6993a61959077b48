"""The official ollama and openai clients, unmodified, against the simulator's flavours."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import httpx
import ollama
import openai
import psutil
import pytest

from tests.simulator import sim_factory  # noqa: F401 - the fixture
from tests.support import wait_for

FAST = ("--decode-tps", "400", "--load-time", "0.1")


def test_ollama_client_lists_generates_and_chats(sim_factory):
    sim = sim_factory("ollama", *FAST, "--model", "llama3.2:1b=2600", "--model", "qwen2.5:0.5b=800")
    client = ollama.Client(host=sim.url)

    assert sorted(m.model for m in client.list().models) == ["llama3.2:1b", "qwen2.5:0.5b"]
    assert client.ps().models == []

    answer = client.generate(model="llama3.2:1b", prompt="Why is the sky blue?", stream=False)
    assert answer.done and answer.done_reason == "stop" and answer.response.strip()
    assert answer.eval_count == len(answer.response.split())
    assert answer.prompt_eval_count > 0 and answer.load_duration > 0
    assert answer.total_duration >= answer.eval_duration > 0

    parts = list(client.generate(model="llama3.2:1b", prompt="Count", stream=True,
                                 options={"num_predict": 5}))
    assert [p.done for p in parts] == [False] * 5 + [True]
    assert parts[-1].done_reason == "length" and parts[-1].eval_count == 5
    assert parts[-1].load_duration == 0  # already loaded

    chat = client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}])
    assert chat.message.role == "assistant" and chat.message.content.strip()
    chunks = list(client.chat(model="qwen2.5:0.5b", messages=[{"role": "user", "content": "hi"}],
                              stream=True))
    assert chunks[-1].done and "".join(c.message.content for c in chunks).strip()

    loaded = {m.model: m for m in client.ps().models}
    assert set(loaded) == {"llama3.2:1b", "qwen2.5:0.5b"}
    assert loaded["llama3.2:1b"].size_vram == 2600 * 1024 * 1024
    assert loaded["llama3.2:1b"].expires_at > datetime.now(timezone.utc)

    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="nope:7b", prompt="x")
    assert err.value.status_code == 404
    assert client.show("llama3.2:1b").details.family == "llama"


def test_ollama_unload_with_keep_alive_zero_frees_the_gpu(sim_factory):
    sim = sim_factory("ollama", *FAST)
    client = ollama.Client(host=sim.url)
    nvml = sim.nvml()
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)

    loaded = client.generate(model=sim.model, prompt="")  # an empty prompt only loads
    assert loaded.done_reason == "load"
    runner = nvml.nvmlDeviceGetComputeRunningProcesses(gpu)
    assert len(runner) == 1
    assert psutil.Process(runner[0].pid).ppid() == sim.pid  # the runner is the server's child

    unloaded = client.generate(model=sim.model, prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert client.ps().models == []
    wait_for(lambda: not nvml.nvmlDeviceGetComputeRunningProcesses(gpu), 3, "the runner's memory freed")
    assert not psutil.pid_exists(runner[0].pid) or psutil.Process(runner[0].pid).status() == "zombie"


@pytest.mark.parametrize("keep_alive", ["500ms", 0.5])
def test_ollama_keep_alive_expires_idle_models(sim_factory, keep_alive):
    sim = sim_factory("ollama", *FAST)
    client = ollama.Client(host=sim.url)
    client.generate(model=sim.model, prompt="hello", keep_alive=keep_alive)
    assert [m.model for m in client.ps().models] == [sim.model]
    wait_for(lambda: client.ps().models == [], 3, "the model to expire")


def test_ollama_keep_alive_forever_and_bad_values(sim_factory):
    sim = sim_factory("ollama", *FAST)
    client = ollama.Client(host=sim.url)
    client.generate(model=sim.model, prompt="hello", keep_alive=-1)
    assert client.ps().models[0].expires_at.year > 2300
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model=sim.model, prompt="hello", keep_alive="soon")
    assert err.value.status_code == 400


def test_ollama_loads_on_demand_with_vram_rising_at_zero_util(sim_factory):
    sim = sim_factory("ollama", "--load-time", "1.5", "--model", "big:7b=6000")
    nvml = sim.nvml()
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    idle_used = nvml.nvmlDeviceGetMemoryInfo(gpu).used
    with httpx.Client(timeout=10) as http:
        thread = threading.Thread(target=lambda: http.post(
            f"{sim.url}/api/generate", json={"model": "big:7b", "prompt": "", "stream": False}))
        thread.start()
        seen = []

        def partly_loaded() -> bool:
            used = nvml.nvmlDeviceGetMemoryInfo(gpu).used - idle_used
            seen.append((used, nvml.nvmlDeviceGetUtilizationRates(gpu).gpu))
            return 0 < used < 6000 * 1024 * 1024

        wait_for(partly_loaded, 3, "memory rising while the model loads", interval=0.02)
        thread.join(5)
    assert all(util == 0 for _, util in seen)
    wait_for(lambda: nvml.nvmlDeviceGetMemoryInfo(gpu).used - idle_used == 6000 * 1024 * 1024, 2,
             "the whole model in GPU memory")
    sim.wait_log("llama runner started in")


def test_ollama_long_prompt_is_truncated_with_a_log_line(sim_factory):
    sim = sim_factory("ollama", *FAST, "--prefill-tps", "100000")
    answer = ollama.Client(host=sim.url).generate(model=sim.model, prompt="word " * 3000)
    assert answer.prompt_eval_count == 2048
    line = sim.wait_log("truncating input prompt")
    assert "limit=2048" in line and "prompt=" in line


@pytest.mark.parametrize("kind", ["vllm", "llamacpp", "ollama"])
def test_openai_client_models_completions_and_chat(sim_factory, kind):
    sim = sim_factory(kind, *FAST)
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="sk-unused", max_retries=0)

    models = client.models.list().data
    assert [m.id for m in models][0] == sim.model

    completion = client.completions.create(model=sim.model, prompt="Hello", max_tokens=7)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 7 and completion.usage.prompt_tokens > 0
    assert len(completion.choices[0].text.split()) == 7

    chat = client.chat.completions.create(model=sim.model, messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content.strip() and chat.choices[0].finish_reason == "stop"
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

    stream = client.chat.completions.create(model=sim.model, messages=[{"role": "user", "content": "hi"}],
                                            stream=True, max_tokens=4,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 4

    pieces = [c.choices[0].text for c in client.completions.create(
        model=sim.model, prompt="Hello", max_tokens=3, stream=True)]
    assert len("".join(pieces).split()) == 3


def test_vllm_rejects_an_unknown_model_and_an_overlong_prompt(sim_factory):
    sim = sim_factory("vllm", *FAST)
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other/model", prompt="x")
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model=sim.model, prompt="word " * 40000)
