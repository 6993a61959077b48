"""vLLM: ``/health``, ``/metrics`` (requests running and waiting, generated tokens, KV cache) and
``/v1/models``.

vLLM's counters are the best evidence of progress there is: requests running
while ``generation_tokens_total`` stands still is a hang long before a canary
times out. Metric names changed across versions (``gpu_cache_usage_perc``
became ``kv_cache_usage_perc``); both are read. Several engines (data
parallel) or models are summed.
"""

from __future__ import annotations

import asyncio

from watchdog.probes.adapters import CanaryChoice, CanaryRequest, PollParts, ServerAdapter
from watchdog.probes.http import BAD_RESPONSE, HttpFailure
from watchdog.probes.openai import openai_canary_requests, parse_model_list
from watchdog.probes.promtext import MetricsFormatError, first_of, parse_sums

RUNNING = ("vllm:num_requests_running",)
WAITING = ("vllm:num_requests_waiting",)
GENERATED = ("vllm:generation_tokens_total", "vllm:generation_tokens")
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PROMPT = ("vllm:prompt_tokens_total", "vllm:prompt_tokens")
#: The histogram of tokens per engine step: its _count is observed once per step that produced
#: output (vLLM v1 skips steps that only computed a chunk of a prompt), so it counts engine steps.
STEPS = ("vllm:iteration_tokens_total_count",)


def parse_vllm_metrics(text: str) -> dict[str, float | None]:
    """running, waiting, gen_tokens_total and kv_cache_usage from vLLM's /metrics text."""
    sums = parse_sums(text, RUNNING + WAITING + GENERATED + KV_CACHE + PROMPT + STEPS)
    kv = first_of(sums, *KV_CACHE)
    return {
        "steps_total": first_of(sums, *STEPS),
        "prompt_tokens_total": first_of(sums, *PROMPT),
        "running": first_of(sums, *RUNNING),
        "waiting": first_of(sums, *WAITING),
        "gen_tokens_total": first_of(sums, *GENERATED),
        "kv_cache_usage": None if kv is None else min(max(kv, 0.0), 1.0),
    }


class VllmAdapter(ServerAdapter):
    kind = "vllm"
    lists_only_loaded_models = True  # it serves exactly the models (and LoRAs) it loaded

    async def _poll(self) -> PollParts:
        health, models, metrics = await asyncio.gather(
            self.get("/health"),
            self.get_json("/v1/models"),
            self.get("/metrics", ok_statuses=(404,)),
            return_exceptions=True,
        )
        if isinstance(health, BaseException):
            raise health
        if isinstance(models, BaseException):
            raise models
        parts = PollParts(state="ready", models=parse_model_list(models))
        if isinstance(metrics, BaseException):
            raise metrics
        status, body = metrics
        if status == 404:
            return parts
        try:
            values = parse_vllm_metrics(body.decode("utf-8", "replace"))
        except MetricsFormatError as exc:
            raise HttpFailure(BAD_RESPONSE, f"/metrics: {exc}") from None
        parts.running = _count(values["running"])
        parts.waiting = _count(values["waiting"])
        parts.gen_tokens_total = values["gen_tokens_total"]
        parts.kv_cache_usage = values["kv_cache_usage"]
        for key in ("steps_total", "prompt_tokens_total"):
            if values[key] is not None:
                parts.extra[key] = values[key]
        return parts

    def canary_requests(self, choice: CanaryChoice, prompt: str, max_tokens: int) -> list[CanaryRequest]:
        return openai_canary_requests(choice, prompt, max_tokens, usage=True)


def _count(value: float | None) -> int | None:
    return None if value is None else int(round(value))
