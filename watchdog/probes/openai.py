"""Any OpenAI-compatible server: ``/v1/models`` for state, ``/v1/chat/completions`` for canaries.

The common ground that vLLM and llama.cpp's server also speak; their adapters
add what their own endpoints tell (``/health``, ``/metrics``, ``/slots``).
"""

from __future__ import annotations

from typing import Any

from watchdog.probes.adapters import (
    CanaryChoice,
    CanaryRequest,
    ModelList,
    PollParts,
    ServerAdapter,
    kept_models,
)
from watchdog.probes.http import BAD_RESPONSE, HttpFailure
from watchdog.trace.records import LoadedModel


def parse_model_list(data: Any) -> list[LoadedModel]:
    """The models of an OpenAI ``/v1/models`` answer; bad_response if it is not one."""
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise HttpFailure(BAD_RESPONSE, '/v1/models: no "data" list')
    kept, total = kept_models(items)
    models = ModelList()
    models.total = total
    for item in kept:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise HttpFailure(BAD_RESPONSE, '/v1/models: an entry has no "id"')
        models.append(LoadedModel(name=item["id"]))
    return models


def openai_canary_requests(
    choice: CanaryChoice, prompt: str, max_tokens: int, *, usage: bool = False
) -> list[CanaryRequest]:
    """Chat first; plain completions if the server rejects chat (a base model without a chat
    template makes vLLM answer 400)."""
    common: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0, "stream": True}
    if choice.model is not None:
        common["model"] = choice.model
    if usage:
        common["stream_options"] = {"include_usage": True}
    chat = dict(common, messages=[{"role": "user", "content": prompt}])
    completion = dict(common, prompt=prompt)
    return [
        CanaryRequest("POST", "/v1/chat/completions", chat, "sse"),
        CanaryRequest("POST", "/v1/completions", completion, "sse"),
    ]


class OpenAIAdapter(ServerAdapter):
    """A server that speaks only the OpenAI API."""

    kind = "openai"

    async def _poll(self) -> PollParts:
        return PollParts(state="ready", models=parse_model_list(await self.get_json("/v1/models")))

    def canary_requests(self, choice: CanaryChoice, prompt: str, max_tokens: int) -> list[CanaryRequest]:
        return openai_canary_requests(choice, prompt, max_tokens)
