"""llama.cpp's server: ``/health`` (503 "Loading model" while it loads), ``/metrics``,
``/slots`` and ``/v1/models``.

llama.cpp's ``tokens_predicted_total`` only grows when a request finishes, so
a long generation would look frozen. ``/slots`` tells how many tokens each busy
slot has decoded so far; their sum plus the finished total is a counter that
rises with every token, which is what the hang detector needs. ``/metrics``
and ``/slots`` are optional (``--metrics``, ``--no-slots``): absent, their fields
are left out.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import Any

from watchdog.probes.adapters import (
    CanaryChoice,
    CanaryRequest,
    PollParts,
    ServerAdapter,
    StreamFormat,
    StreamStep,
)
from watchdog.probes.http import BAD_RESPONSE, HttpFailure, parse_json
from watchdog.probes.openai import openai_canary_requests, parse_model_list
from watchdog.probes.promtext import MetricsFormatError, first_of, parse_sums
from watchdog.trace.records import ServerPoll

PROCESSING = "llamacpp:requests_processing"
DEFERRED = "llamacpp:requests_deferred"
PREDICTED = "llamacpp:tokens_predicted_total"
KV_RATIO = "llamacpp:kv_cache_usage_ratio"
DECODES = "llamacpp:n_decode_total"
PROMPT = "llamacpp:prompt_tokens_total"
_ABSENT = (404, 501)


def parse_llamacpp_metrics(text: str) -> dict[str, float | None]:
    sums = parse_sums(text, (PROCESSING, DEFERRED, PREDICTED, KV_RATIO, DECODES, PROMPT))
    return {
        "processing": first_of(sums, PROCESSING),
        "deferred": first_of(sums, DEFERRED),
        "predicted": first_of(sums, PREDICTED),
        "kv": first_of(sums, KV_RATIO),
        "decodes": first_of(sums, DECODES),
        "prompt": first_of(sums, PROMPT),
    }


def parse_slots(data: Any) -> tuple[int, int]:
    """(busy slots, tokens decoded so far by the busy slots) from ``/slots``."""
    if not isinstance(data, list):
        raise HttpFailure(BAD_RESPONSE, "/slots: not a list")
    busy = decoded = 0
    for slot in data:
        if not isinstance(slot, dict):
            raise HttpFailure(BAD_RESPONSE, "/slots: an entry is not an object")
        processing = slot.get("is_processing")
        if processing is None:
            processing = slot.get("state") not in (None, 0)
        if not processing:
            continue
        busy += 1
        nxt = slot.get("next_token")
        if isinstance(nxt, list):
            nxt = nxt[0] if nxt else None
        source = nxt if isinstance(nxt, dict) else slot
        n = source.get("n_decoded")
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            decoded += n
    return busy, decoded


class LlamaCppAdapter(ServerAdapter):
    kind = "llamacpp"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_predicted: float | None = None
        self._last_total: float | None = None

    async def _poll(self) -> PollParts:
        status, body = await self.get("/health", ok_statuses=(503,))
        if status == 503:
            text = body[:500].decode("utf-8", "replace").lower()
            if "loading" in text:
                return PollParts(state="loading")
            raise HttpFailure("http_5xx", text[:100], status=503)
        answers = await asyncio.gather(
            self.get("/v1/models", ok_statuses=_ABSENT),
            self.get("/metrics", ok_statuses=_ABSENT),
            self.get("/slots", ok_statuses=_ABSENT),
            return_exceptions=True,
        )
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        (m_status, m_body), (x_status, x_body), (s_status, s_body) = answers  # type: ignore[misc]
        models = parse_model_list(parse_json(m_body, "/v1/models")) if m_status not in _ABSENT else []
        parts = PollParts(state="ready", models=models)
        metrics = None
        if x_status not in _ABSENT:
            try:
                metrics = parse_llamacpp_metrics(x_body.decode("utf-8", "replace"))
            except MetricsFormatError as exc:
                raise HttpFailure(BAD_RESPONSE, f"/metrics: {exc}") from None
        slots = parse_slots(parse_json(s_body, "/slots")) if s_status not in _ABSENT else None

        if metrics is not None:
            parts.waiting = _count(metrics["deferred"])
            parts.running = _count(metrics["processing"])
            parts.kv_cache_usage = metrics["kv"]
            if metrics["decodes"] is not None:
                parts.extra["steps_total"] = metrics["decodes"]  # one llama_decode() per batch: engine steps
            if metrics["prompt"] is not None:
                parts.extra["prompt_tokens_total"] = metrics["prompt"]
        if slots is not None:
            parts.running = slots[0]
        predicted = metrics["predicted"] if metrics is not None else None
        if predicted is not None:
            parts.gen_tokens_total = self._monotonic(predicted, slots[1] if slots is not None else 0)
            if slots is None:
                parts.extra["gen_tokens_live"] = False  # grows only when a request finishes
        return parts

    def _monotonic(self, predicted: float, in_flight: int) -> float:
        """Finished plus in-flight tokens, never going back while the server lives.

        /metrics and /slots are read a moment apart: a request finishing in between
        could make the sum dip. A drop of the finished total itself means a restart.
        """
        total = predicted + in_flight
        restarted = self._last_predicted is not None and predicted < self._last_predicted
        if self._last_total is not None and not restarted:
            total = max(total, self._last_total)
        self._last_predicted, self._last_total = predicted, total
        return total

    def canary_choices(
        self, poll: ServerPoll | None, now: float, configured: Sequence[str]
    ) -> tuple[list[CanaryChoice], str]:
        """llama.cpp serves one model and ignores the name: a canary needs none.

        In router mode it lists several and loads them on demand: then only canary.models.
        """
        choices, why = super().canary_choices(poll, now, configured)
        if choices or why.endswith("set canary.models to the ones that stay loaded"):
            return choices, why
        return [CanaryChoice(None)], ""

    def canary_requests(self, choice: CanaryChoice, prompt: str, max_tokens: int) -> list[CanaryRequest]:
        return openai_canary_requests(choice, prompt, max_tokens)

    def parse_stream_line(self, line: str, stream_format: StreamFormat) -> StreamStep | None:
        """As any OpenAI stream, plus the rate the server measured (its last event's ``timings``).

        Seen on llama-server: the 4 tokens of a canary come about 2 ms apart, so the
        daemon often reads several in one go and its own timing swings between hundreds
        and tens of thousands of tokens per second; ``predicted_per_second`` does not.
        """
        step = super().parse_stream_line(line, stream_format)
        if step is not None and stream_format == "sse" and '"timings"' in line:
            step.server_tokens_per_s = parse_timings_rate(line)
        return step


def parse_timings_rate(line: str) -> float | None:
    """``timings.predicted_per_second`` of a llama.cpp stream event, if it measured 2+ tokens."""
    try:
        data = json.loads(line.split(":", 1)[1])
    except (ValueError, IndexError):
        return None
    timings = data.get("timings") if isinstance(data, dict) else None
    if not isinstance(timings, dict):
        return None
    rate, count = timings.get("predicted_per_second"), timings.get("predicted_n")
    if not isinstance(count, int) or count < 2 or isinstance(rate, bool) or not isinstance(rate, (int, float)):
        return None
    return float(rate) if math.isfinite(rate) and rate > 0 else None


def _count(value: float | None) -> int | None:
    return None if value is None else int(round(value))
