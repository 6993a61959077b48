"""Ollama: ``/api/ps`` (loaded models, their VRAM and expiry), unload with ``keep_alive: 0``,
canaries on ``/api/generate``.

Ollama has no request or token counters, so its canaries carry the progress
evidence. They must never change what they observe: a canary goes only to a
model that is already loaded (a request for another one would load it and
hold VRAM), and carries a ``keep_alive`` equal to the time the model has left,
so it does not extend the model's life (a model kept forever stays so).
"""

from __future__ import annotations

import asyncio

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from watchdog.probes.adapters import (
    CanaryChoice,
    CanaryRequest,
    ModelList,
    PollParts,
    ServerAdapter,
    UnloadResult,
    bytes_to_mib,
    kept_models,
)
from watchdog.probes.http import BAD_RESPONSE, HttpFailure, fetch, parse_json
from watchdog.trace.records import LoadedModel, ServerPoll

FOREVER_AFTER_S = 10 * 365 * 86400.0
"""An expiry further away than this is Ollama's way of saying keep_alive = -1."""
MIN_REMAINING_S = 5.0
"""A model this close to expiring gets no canary: if it expired before the request arrived,
the request would load it again."""
OVERDUE_AFTER_S = 2.0
"""A model still listed this long after its expiry is held by a request in flight (Ollama
stops the expiry timer while a request runs): it is busy, or stuck, and gets its canary."""
UNLOAD_DEADLINE_S = 30.0


def parse_ps(data: Any, wall_now: float) -> list[LoadedModel]:
    """The loaded models of an ``/api/ps`` answer; bad_response if it is not one."""
    items = data.get("models") if isinstance(data, dict) else None
    if items is None and isinstance(data, dict) and "models" in data:
        items = []
    if not isinstance(items, list):
        raise HttpFailure(BAD_RESPONSE, '/api/ps: no "models" list')
    kept, total = kept_models(items)
    models = ModelList()
    models.total = total
    for item in kept:
        if not isinstance(item, dict):
            raise HttpFailure(BAD_RESPONSE, "/api/ps: a model entry is not an object")
        name = item.get("name") or item.get("model")
        if not isinstance(name, str) or not name:
            raise HttpFailure(BAD_RESPONSE, '/api/ps: a model entry has no "name"')
        extra: dict[str, Any] = {}
        size_mib = bytes_to_mib(item.get("size"))
        if size_mib is not None:
            extra["size_mib"] = size_mib
        expires_in = _expires_in(item.get("expires_at"), wall_now)
        if expires_in == math.inf:
            extra["keep_alive"] = "forever"
            expires_in = None
        models.append(
            LoadedModel(name=name, vram_mib=bytes_to_mib(item.get("size_vram")), expires_in_s=expires_in, extra=extra)
        )
    return models


def _expires_in(value: Any, wall_now: float) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    remaining = when.timestamp() - wall_now
    if remaining > FOREVER_AFTER_S:
        return math.inf
    return round(remaining, 3)


class OllamaAdapter(ServerAdapter):
    kind = "ollama"
    stream_format = "ndjson"
    supports_unload = True
    empty_list_is_news = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._overdue_since: dict[str, float] = {}

    async def _poll(self) -> PollParts:
        data = await self.get_json("/api/ps")
        models = parse_ps(data, self.wall_clock())
        self._note_overdue(models)
        return PollParts(state="ready", models=models)

    async def still_loaded(self, model: str | None) -> bool:
        if model is None:
            return True
        try:  # a quick look: a server too stuck to answer this gets its canary
            models = parse_ps(await asyncio.wait_for(self.get_json("/api/ps"), 1.0), self.wall_clock())
        except Exception:  # noqa: BLE001 - a status endpoint that fails is the canary's business
            return True
        return any(m.name == model for m in models)

    def _note_overdue(self, models: list[LoadedModel]) -> None:
        """Remember since when each listed model has been past its expiry (see OVERDUE_AFTER_S)."""
        now = self.clock()
        overdue: dict[str, float] = {}
        for model in models:
            if model.expires_in_s is not None and model.expires_in_s <= 0:
                overdue[model.name] = self._overdue_since.get(model.name, now)
        self._overdue_since = overdue


    async def unload(self, model: str) -> UnloadResult:
        """``keep_alive: 0`` on an empty generate request: Ollama unloads the model now."""
        try:
            _, body = await fetch(
                self.client(),
                "POST",
                "/api/generate",
                deadline=max(self.target.request_timeout, UNLOAD_DEADLINE_S),
                max_bytes=self.max_body_bytes,
                json_body={"model": model, "keep_alive": 0},
            )
            data = parse_json(body, "/api/generate")
        except HttpFailure as failure:
            return UnloadResult(False, failure.text)
        except Exception as exc:  # noqa: BLE001 - never raises into the daemon
            return UnloadResult(False, type(exc).__name__)
        if isinstance(data, dict) and data.get("error"):
            return UnloadResult(False, str(data["error"])[:200])
        return UnloadResult(True, str(data.get("done_reason", "")) if isinstance(data, dict) else "")

    def canary_choices(
        self, poll: ServerPoll | None, now: float, configured: Sequence[str]
    ) -> tuple[list[CanaryChoice], str]:
        """Loaded models only, each with the keep_alive that leaves its expiry where it is.

        When /api/ps fails (a hung Ollama stops answering it too), the canary is the only
        evidence left: it goes to the models the last successful /api/ps listed (kept
        across restarts), never to a model not seen loaded.
        """
        if poll is None or poll.state != "ready":
            last = [m for m in self.known_models if not configured or m in configured]
            if last and (poll is None or poll.state == "error"):
                return [CanaryChoice(m, keep_alive=None) for m in last], ""
            return [], "the loaded models are not known (no successful /api/ps yet)"
        loaded = {m.name: m for m in poll.models}
        names = [m for m in configured if m in loaded] if configured else list(loaded)
        if not names:
            return [], "no model loaded" + (" among canary.models" if configured and loaded else "")
        choices, reasons = [], []
        for name in names:
            model = loaded[name]
            if model.extra.get("keep_alive") == "forever":
                choices.append(CanaryChoice(name, keep_alive=-1))
                continue
            if model.expires_in_s is None:
                reasons.append(f"{name}: expiry unknown")
                continue
            overdue = self._overdue_since.get(name)
            if overdue is not None and now - overdue >= OVERDUE_AFTER_S:
                # Past its expiry yet still loaded: a request holds it. Probe it with the
                # server's default keep_alive, as any client would.
                choices.append(CanaryChoice(name, keep_alive=None))
                continue
            remaining = model.expires_in_s - max(0.0, now - poll.t)
            if remaining <= 0:
                # Still listed after its expiry: busy with a request longer than its keep_alive
                # (Ollama sets the expiry when the last request ends), or being unloaded.
                reasons.append(f"{name}: its expiry has passed (busy, or being unloaded)")
                continue
            if remaining < MIN_REMAINING_S:
                reasons.append(f"{name}: expires in {remaining:.0f}s")
                continue
            choices.append(CanaryChoice(name, keep_alive=float(math.floor(remaining))))
        return choices, "; ".join(reasons)

    def canary_requests(self, choice: CanaryChoice, prompt: str, max_tokens: int) -> list[CanaryRequest]:
        body: dict[str, Any] = {
            "model": choice.model,
            "prompt": prompt,
            "stream": True,
            "options": {"temperature": 0, "num_predict": max_tokens},
        }
        if choice.keep_alive is not None:
            body["keep_alive"] = int(choice.keep_alive) if choice.keep_alive >= 0 else -1
        return [CanaryRequest("POST", "/api/generate", body, "ndjson")]
