"""Status routes: vLLM and llama.cpp /metrics (parsed by prometheus_client), llama.cpp /health and /slots."""

from __future__ import annotations

import threading

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.simulator import sim_factory  # noqa: F401 - the fixture
from tests.support import wait_for


def metrics(url: str) -> dict[str, float]:
    """Every sample of /metrics by name, summed over labels (``name{le=..}`` kept for buckets)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name
            if sample.name.endswith("_bucket"):
                key = f"{sample.name}{{le={sample.labels['le']}}}"
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def test_vllm_metrics_parse_and_follow_the_work(sim_factory):
    sim = sim_factory("vllm", "--decode-tps", "400")
    text = httpx.get(f"{sim.url}/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:gpu_cache_usage_perc", "vllm:generation_tokens", "vllm:prompt_tokens",
                 "vllm:time_to_first_token_seconds", "vllm:request_success"):
        assert name in families, name
    running = families["vllm:num_requests_running"].samples[0]
    assert running.labels["model_name"] == sim.model
    assert families["vllm:time_to_first_token_seconds"].type == "histogram"

    before = metrics(sim.url)
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    client.completions.create(model=sim.model, prompt="Hello there", max_tokens=9)
    after = metrics(sim.url)
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 9
    assert after["vllm:prompt_tokens_total"] > before["vllm:prompt_tokens_total"]
    assert after["vllm:time_to_first_token_seconds_count"] == before["vllm:time_to_first_token_seconds_count"] + 1
    assert after["vllm:request_success_total"] == before["vllm:request_success_total"] + 1


def test_vllm_metrics_show_running_and_waiting_requests(sim_factory):
    sim = sim_factory("vllm", "--decode-tps", "40", "--parallel", "2", "--response-tokens", "40")
    threads = [threading.Thread(target=httpx.post, args=(f"{sim.url}/v1/completions",),
                                kwargs={"json": {"model": sim.model, "prompt": "x", "max_tokens": 24},
                                        "timeout": 30}) for _ in range(3)]
    for t in threads:
        t.start()
    seen = wait_for(lambda: (m := metrics(sim.url))["vllm:num_requests_running"] == 2
                    and m["vllm:num_requests_waiting"] == 1 and m, 5, "2 running and 1 waiting")
    assert seen["vllm:kv_cache_usage_perc"] > 0
    for t in threads:
        t.join(30)
    final = metrics(sim.url)
    assert final["vllm:num_requests_running"] == final["vllm:num_requests_waiting"] == 0
    assert final["vllm:generation_tokens_total"] == 72


def test_llamacpp_health_is_503_while_loading_then_ok(sim_factory):
    sim = sim_factory("llamacpp", "--load-time", "1.0", wait_loaded=False)
    first = httpx.get(f"{sim.url}/health", timeout=5)
    assert first.status_code == 503 and first.json()["error"]["message"] == "Loading model"
    wait_for(lambda: httpx.get(f"{sim.url}/health", timeout=5).status_code == 200, 5, "health ok")
    assert httpx.get(f"{sim.url}/health", timeout=5).json() == {"status": "ok"}


def test_llamacpp_slots_metrics_and_native_completion(sim_factory):
    sim = sim_factory("llamacpp", "--decode-tps", "30", "--parallel", "2")
    slots = httpx.get(f"{sim.url}/slots", timeout=5).json()
    assert [s["is_processing"] for s in slots] == [False, False]

    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(httpx.post(
        f"{sim.url}/completion", json={"prompt": "Hello", "n_predict": 20}, timeout=30).json()))
    thread.start()
    wait_for(lambda: any(s["is_processing"] for s in httpx.get(f"{sim.url}/slots", timeout=5).json()),
             5, "a busy slot")
    assert metrics(sim.url)["llamacpp:requests_processing"] == 1
    thread.join(30)
    assert result["stop"] is True and result["tokens_predicted"] == 20 and result["stop_type"] == "limit"
    assert result["timings"]["predicted_n"] == 20
    m = metrics(sim.url)
    assert m["llamacpp:tokens_predicted_total"] == 20 and m["llamacpp:requests_processing"] == 0

    with httpx.stream("POST", f"{sim.url}/completion", json={"prompt": "Hi", "n_predict": 3, "stream": True},
                      timeout=10) as resp:
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert len(events) == 4 and '"stop":true' in events[-1]


def test_a_long_prefill_is_busy_without_tokens_but_counts_prompt_tokens(sim_factory):
    sim = sim_factory("vllm", "--prefill-tps", "4000", "--decode-tps", "200")
    nvml = sim.nvml()
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    thread = threading.Thread(target=httpx.post, args=(f"{sim.url}/v1/completions",), kwargs={
        "json": {"model": sim.model, "prompt": "word " * 8000, "max_tokens": 3}, "timeout": 30})
    thread.start()
    first = wait_for(lambda: (m := metrics(sim.url))["vllm:prompt_tokens_total"] > 0 and m, 3,
                     "prompt tokens counted during the prefill")
    assert first["vllm:generation_tokens_total"] == 0 and first["vllm:num_requests_running"] == 1
    wait_for(lambda: nvml.nvmlDeviceGetUtilizationRates(gpu).gpu > 90, 2, "the GPU busy prefilling")
    assert metrics(sim.url)["vllm:generation_tokens_total"] == 0
    wait_for(lambda: metrics(sim.url)["vllm:prompt_tokens_total"] > first["vllm:prompt_tokens_total"],
             3, "the prompt-token counter rising")
    thread.join(30)
    final = metrics(sim.url)
    assert final["vllm:prompt_tokens_total"] == 10000 and final["vllm:generation_tokens_total"] == 3
