"""One interface over the inference servers' own endpoints.

A :class:`ServerAdapter` knows, for one kind of server, how to read its state
(:meth:`ServerAdapter.poll`), how to unload a model, and how to send and read a
streaming canary prompt. It never raises into the daemon: a server that
answers garbage, a huge body, nothing at all, or refuses the connection gives a
``ServerPoll`` with ``state`` ``error`` or ``down`` and an ``error`` text.

The kinds live in their own modules (``ollama``, ``vllm``, ``llamacpp``,
``openai``); :func:`make_adapter` picks one for a target.
"""

from __future__ import annotations

import contextlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import httpx

from watchdog.config.model import TargetSettings
from watchdog.config.secrets import SecretError, SecretValue
from watchdog.probes.base import Clock
from watchdog.probes.http import (
    BAD_RESPONSE,
    DEFAULT_MAX_BODY,
    HttpFailure,
    fetch,
    make_client,
    parse_json,
)
from watchdog.probes.known_models import KnownModels
from watchdog.trace.records import ServerPoll

StreamFormat = Literal["ndjson", "sse"]
MAX_MODELS_PER_POLL = 256
"""What one ServerPoll may list: an /api/ps of 38,000 models must not make every record (and the
flight recorder holding thousands of them) megabytes large. The total is kept in ``extra``."""


class StreamFormatError(ValueError):
    """A line of a canary stream that is not what this kind of server sends."""


class ModelList(list):  # type: ignore[type-arg]
    """The models a poll keeps (at most MAX_MODELS_PER_POLL), and how many the server listed."""

    total: int = 0


def kept_models(items: list[Any]) -> tuple[list[Any], int]:
    """The entries worth parsing: parsing 38,000 (dates, names) would hold the loop for a second."""
    return items[:MAX_MODELS_PER_POLL], len(items)


@dataclass(frozen=True, slots=True)
class CanaryRequest:
    """How to ask one server kind for a tiny streamed answer."""

    method: str
    path: str
    body: dict[str, Any]
    stream_format: StreamFormat


@dataclass(slots=True)
class StreamStep:
    """What one line of a canary stream says."""

    tokens: int = 0
    done: bool = False
    usage_tokens: int | None = None
    error: str | None = None
    #: The generation rate the server measured itself (llama.cpp's ``timings``). Preferred
    #: to ours: a few tokens milliseconds apart often arrive in one read, and timing them
    #: on our side measures the daemon's own loop, not the server.
    server_tokens_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class CanaryChoice:
    """A model a canary may go to now, and what must ride along with the request."""

    model: str | None
    keep_alive: float | None = None  # Ollama: seconds left (or -1 for forever); others: unused


@dataclass(frozen=True, slots=True)
class UnloadResult:
    ok: bool
    detail: str = ""


@dataclass(slots=True)
class PollParts:
    """What the kind-specific part of a poll found; the base class turns it into a record."""

    state: str = "ready"
    models: list[Any] = field(default_factory=list)
    running: int | None = None
    waiting: int | None = None
    gen_tokens_total: float | None = None
    kv_cache_usage: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ServerAdapter(ABC):
    """The status endpoints, unload and canary protocol of one kind of server."""

    #: Whether every model the server lists is loaded (vLLM), or it may list models it
    #: would load on demand (generic OpenAI-compatible servers).
    lists_only_loaded_models = False
    #: Whether an empty list from a successful poll means "nothing loaded" (Ollama's /api/ps),
    #: so the last known models are forgotten and never get a canary that would load them.
    empty_list_is_news = False

    kind: ClassVar[str]
    stream_format: ClassVar[StreamFormat] = "sse"
    supports_unload: ClassVar[bool] = False

    def __init__(
        self,
        target: TargetSettings,
        clock: Clock,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        wall_clock: Clock = time.time,
        known: KnownModels | None = None,
    ) -> None:
        self.target = target
        self.name = target.name
        self.clock = clock
        self.wall_clock = wall_clock
        self.max_body_bytes = max_body_bytes
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._canary_client: httpx.AsyncClient | None = None
        self._api_key: SecretValue | None = None
        self.known = known if known is not None else KnownModels()
        # From the last poll that listed models, or from the state dir (an earlier run).
        self.known_models: list[str] = self.known.get(target.name)

    # --- HTTP plumbing ----------------------------------------------------------------------

    def api_key(self) -> SecretValue | None:
        """The resolved API key; raises HttpFailure if its reference cannot be read."""
        if self.target.api_key is None:
            return None
        if self._api_key is None:
            try:
                self._api_key = self.target.api_key.resolve()
            except SecretError as exc:
                raise HttpFailure("error", f"api_key: {exc}") from None
        return self._api_key

    def client(self) -> httpx.AsyncClient:
        """The shared client for status requests (canaries have their own pool: a canary stuck
        on a hung server must not hold the connection a status poll needs)."""
        if self._client is None:
            self._client = self.new_client(connect_timeout=min(3.0, self.target.request_timeout))
        return self._client

    def canary_client(self, *, connect_timeout: float) -> httpx.AsyncClient:
        """The client canaries reuse, one per target: building a client per canary cost a third
        of the daemon's busy time (issue 15). Rebuilt if the connect deadline changes."""
        client = self._canary_client
        if client is None or client.is_closed or client.timeout.connect != connect_timeout:
            self._canary_client = client = self.new_client(connect_timeout=connect_timeout, read_timeout=None)
        return client

    @contextlib.asynccontextmanager
    async def canary_session(self, *, connect_timeout: float) -> AsyncIterator[httpx.AsyncClient]:
        """The canary client, borrowed for one canary: left open for the next (its connection
        is closed by the canary itself when it stops reading a stream early)."""
        yield self.canary_client(connect_timeout=connect_timeout)

    def new_client(self, *, connect_timeout: float, read_timeout: float | None = None) -> httpx.AsyncClient:
        return make_client(
            self.target.url,
            api_key=self.api_key(),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            transport=self._transport,
        )

    async def get(self, path: str, *, ok_statuses: tuple[int, ...] = ()) -> tuple[int, bytes]:
        return await fetch(
            self.client(),
            "GET",
            path,
            deadline=self.target.request_timeout,
            max_bytes=self.max_body_bytes,
            ok_statuses=ok_statuses,
        )

    async def get_json(self, path: str) -> Any:
        _, data = await fetch(
            self.client(),
            "GET",
            path,
            deadline=self.target.request_timeout,
            max_bytes=self.max_body_bytes,
            parse=lambda body: parse_json(body, path),
        )
        return data

    async def aclose(self) -> None:
        for client in (self._client, self._canary_client):
            if client is not None:
                await client.aclose()
        self._client = self._canary_client = None

    # --- polling ----------------------------------------------------------------------------

    async def poll(self) -> ServerPoll:
        """One look at the server's status endpoints. Never raises."""
        try:
            parts = await self._poll()
        except HttpFailure as failure:
            parts = PollParts(state="down" if failure.code == "refused" else "error", error=failure.text)
        except Exception as exc:  # noqa: BLE001 - a probe never raises into the loop
            parts = PollParts(state="error", error=f"{BAD_RESPONSE}: {type(exc).__name__}")
        total = max(len(parts.models), getattr(parts.models, "total", 0))
        if total > MAX_MODELS_PER_POLL:
            parts.extra["models_total"] = total
        parts.models = list(parts.models[:MAX_MODELS_PER_POLL])
        if parts.state == "ready" and (parts.models or self.empty_list_is_news):
            self.known_models = [m.name for m in parts.models]
            self.known.set(self.name, self.known_models)
        return ServerPoll(
            t=self.clock(),
            target=self.name,
            state=parts.state,  # type: ignore[arg-type]
            models=parts.models,
            running=parts.running,
            waiting=parts.waiting,
            gen_tokens_total=parts.gen_tokens_total,
            kv_cache_usage=parts.kv_cache_usage,
            error=parts.error,
            extra=parts.extra,
        )

    @abstractmethod
    async def _poll(self) -> PollParts:
        """Kind-specific poll; may raise HttpFailure (turned into an error record)."""

    # --- unload -----------------------------------------------------------------------------

    async def unload(self, model: str) -> UnloadResult:
        """Ask the server to unload ``model`` now. Never raises."""
        return UnloadResult(False, f"{self.kind} servers have no unload API: restart the server instead")

    # --- canary -----------------------------------------------------------------------------

    async def still_loaded(self, model: str | None) -> bool:
        """Whether ``model`` is still loaded, asked right before a canary goes out.

        Only servers that load a model on request (Ollama) need it: the canary was chosen
        from a poll up to one poll interval old, and a model unloaded since must not be
        loaded again by the canary. Others (and an answer that cannot be read: a hung or
        broken server still gets its canary) say yes."""
        return True

    def canary_choices(
        self, poll: ServerPoll | None, now: float, configured: Sequence[str]
    ) -> tuple[list[CanaryChoice], str]:
        """Models a canary may go to now, in order of preference, or ([], why not).

        A server that is down or answers garbage still gets canaries (their
        failures are evidence), to the models it served last.
        """
        served = [m.name for m in poll.models] if poll is not None and poll.models else self.known_models
        if configured:
            return [CanaryChoice(m) for m in configured], ""
        if len(served) > 1 and not self.lists_only_loaded_models:
            # A server that loads on demand (llama-swap, LM Studio, LocalAI, Ollama's /v1) lists
            # every installed model: a canary to one not loaded would load it, and hold VRAM.
            return [], (f"{len(served)} models listed and no way to tell which are loaded: "
                        "set canary.models to the ones that stay loaded")
        if served:
            return [CanaryChoice(m) for m in served], ""
        return [], "no model known (the server listed none; set canary.models)"

    @abstractmethod
    def canary_requests(self, choice: CanaryChoice, prompt: str, max_tokens: int) -> list[CanaryRequest]:
        """The request to send, then fallbacks to try if the server rejects it (HTTP 4xx)."""

    def parse_stream_line(self, line: str, stream_format: StreamFormat) -> StreamStep | None:
        """One line of a canary stream; None for lines that carry nothing (blank, comments)."""
        if stream_format == "ndjson":
            return parse_ollama_line(line)
        return parse_sse_line(line)


# --- stream parsers (pure) ------------------------------------------------------------------

def parse_sse_line(line: str) -> StreamStep | None:
    """One line of an OpenAI-style server-sent-event stream."""
    line = line.rstrip("\r")
    if not line or line.startswith(":"):
        return None
    if not line.startswith("data:"):
        if line.startswith(("event:", "id:", "retry:")):
            return None
        raise StreamFormatError("not a server-sent event line")
    payload = line[5:].strip()
    if payload == "[DONE]":
        return StreamStep(done=True)
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        raise StreamFormatError("event data is not JSON") from None
    if not isinstance(data, dict):
        raise StreamFormatError("event data is not an object")
    error = data.get("error")
    if error is not None or data.get("object") == "error":
        message = error.get("message") if isinstance(error, dict) else error
        message = message or data.get("message") or "error"
        return StreamStep(error=_short_text(str(message)))
    step = StreamStep()
    usage = data.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        step.usage_tokens = usage["completion_tokens"]
    choices = data.get("choices")
    if choices is None and "content" in data:  # llama.cpp's native /completion stream
        if data.get("content"):
            step.tokens = 1
        if data.get("stop") is True:
            step.done = True
        return step
    if not isinstance(choices, list):
        raise StreamFormatError('event without "choices"')
    for choice in choices:
        if not isinstance(choice, dict):
            raise StreamFormatError("a choice is not an object")
        delta = choice.get("delta")
        text = choice.get("text")
        if isinstance(delta, dict):
            text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
        if text:
            step.tokens += 1
    return step


def parse_ollama_line(line: str) -> StreamStep | None:
    """One line of Ollama's NDJSON stream (/api/generate or /api/chat)."""
    line = line.strip()
    if not line:
        return None
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        raise StreamFormatError("stream line is not JSON") from None
    if not isinstance(data, dict):
        raise StreamFormatError("stream line is not an object")
    if "error" in data:
        return StreamStep(error=_short_text(str(data.get("error"))))
    if "done" not in data:
        raise StreamFormatError('stream line without "done"')
    step = StreamStep(done=data.get("done") is True)
    message = data.get("message")
    text = data.get("response")
    thinking = data.get("thinking")
    if isinstance(message, dict):
        text = message.get("content")
        thinking = message.get("thinking")
    if text or thinking:
        step.tokens = 1
    if step.done and isinstance(data.get("eval_count"), int):
        step.usage_tokens = data["eval_count"]
    return step


def _short_text(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bytes_to_mib(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return int(round(value / (1024 * 1024)))


def make_adapter(
    target: TargetSettings,
    clock: Clock,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    known: KnownModels | None = None,
) -> ServerAdapter:
    """The adapter for a target's kind; ``known`` keeps its last known models (across restarts)."""
    from watchdog.probes.llamacpp import LlamaCppAdapter
    from watchdog.probes.ollama import OllamaAdapter
    from watchdog.probes.openai import OpenAIAdapter
    from watchdog.probes.vllm import VllmAdapter

    kinds: dict[str, type[ServerAdapter]] = {
        "ollama": OllamaAdapter,
        "vllm": VllmAdapter,
        "llamacpp": LlamaCppAdapter,
        "openai": OpenAIAdapter,
    }
    return kinds[target.kind](target, clock, transport=transport, max_body_bytes=max_body_bytes, known=known)
