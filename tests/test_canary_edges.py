"""Canary and poll deadlines and caps against small real HTTP servers that misbehave in ways the
simulator does not: endless streams, endless lines, trickling bodies, 4xx on chat."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from watchdog.config.model import TargetSettings
from watchdog.probes.adapters import make_adapter
from watchdog.probes.canary import MAX_STREAM_BYTES, CanaryProbe
from watchdog.trace.records import Canary, ServerPoll

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for path, handler in routes.items():
            method, _, route = path.partition(" ")
            app.router.add_route(method, route, handler)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def target(url: str, kind: str = "openai", **canary: Any) -> TargetSettings:
    deadlines = {"connect_timeout": "1s", "first_token_timeout": "1s", "stall_timeout": "500ms",
                 "timeout": "3s", "models": ["m"], **canary}
    return TargetSettings(name="t", kind=kind, url=url, request_timeout=1.0, restart={"method": "none"},
                          canary=deadlines)


async def run_canary(url: str, **canary: Any) -> tuple[Canary | None, CanaryProbe]:
    settings = target(url, **canary)
    clock = time.monotonic
    adapter = make_adapter(settings, clock)
    probe = CanaryProbe(adapter, settings.canary, clock, lambda r: None)
    try:
        return await probe.round(force=True), probe
    finally:
        await adapter.aclose()


def sse(handler: Callable[[web.StreamResponse], Awaitable[None]]) -> Handler:
    async def route(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await handler(response)
        return response

    return route


def chunk(text: str) -> bytes:
    return b'data: {"choices":[{"delta":{"content":"' + text.encode() + b'"}}]}\n\n'


async def test_an_endless_stream_without_tokens_is_cut_at_the_byte_cap(serve: Any) -> None:
    async def endless(response: web.StreamResponse) -> None:
        while True:
            await response.write(b'data: {"choices":[{"delta":{}}]}\n\n' * 100)

    url = await serve({"POST /v1/chat/completions": sse(endless)})
    canary, _ = await run_canary(url)
    assert canary is not None and canary.error == "bad_response"
    assert str(MAX_STREAM_BYTES) in canary.extra["detail"]


async def test_an_endless_line_does_not_grow_memory(serve: Any) -> None:
    async def one_line(response: web.StreamResponse) -> None:
        while True:
            await response.write(b"data: " + b"x" * 65536)

    url = await serve({"POST /v1/chat/completions": sse(one_line)})
    canary, _ = await run_canary(url)
    assert canary is not None and canary.error == "bad_response"


async def test_a_slow_but_steady_stream_hits_the_total_deadline(serve: Any) -> None:
    async def slow(response: web.StreamResponse) -> None:
        for _ in range(100):
            await response.write(chunk("x"))
            await asyncio.sleep(0.3)  # each token within stall_timeout, the whole too long

    url = await serve({"POST /v1/chat/completions": sse(slow)})
    began = time.monotonic()
    canary, _ = await run_canary(url, max_tokens=100, timeout="2s")
    assert canary is not None and (canary.error, canary.extra["phase"]) == ("timeout", "total")
    assert canary.tokens >= 5 and canary.ttft_s is not None and 1.9 < time.monotonic() - began < 6.0


async def test_headers_at_once_then_nothing_is_a_first_token_timeout(serve: Any) -> None:
    async def silent(response: web.StreamResponse) -> None:
        await asyncio.sleep(30)

    url = await serve({"POST /v1/chat/completions": sse(silent)})
    canary, _ = await run_canary(url)
    assert canary is not None and (canary.error, canary.extra["phase"], canary.tokens) == ("timeout", "first_token", 0)


async def test_a_base_model_without_chat_falls_back_to_completions(serve: Any) -> None:
    calls: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        calls.append("chat")
        return web.json_response({"object": "error", "message": "no chat template"}, status=400)

    async def complete(response: web.StreamResponse) -> None:
        calls.append("completions")
        for text in ("O", "K"):
            await response.write(b'data: {"choices":[{"text":"' + text.encode() + b'"}]}\n\n')
        await response.write(b"data: [DONE]\n\n")

    url = await serve({"POST /v1/chat/completions": chat, "POST /v1/completions": sse(complete)})
    settings = target(url)
    adapter = make_adapter(settings, time.monotonic)
    probe = CanaryProbe(adapter, settings.canary, time.monotonic, lambda r: None)
    try:
        first = await probe.round(force=True)
        second = await probe.round(force=True)
    finally:
        await adapter.aclose()
    assert first is not None and first.ok and first.tokens == 2
    assert second is not None and second.ok
    assert calls == ["chat", "completions", "completions"]  # remembered: no second try of chat


async def test_a_model_the_server_rejects_gets_no_more_canaries_for_a_while(serve: Any) -> None:
    async def reject(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "model 'm' does not exist"}}, status=404)

    url = await serve({"POST /v1/chat/completions": reject, "POST /v1/completions": reject})
    canary, probe = await run_canary(url)
    assert canary is not None and not canary.ok and canary.error.startswith("http_404")
    assert await probe.round(force=True) is None
    assert "rejected canaries to m" in probe.last_skip


async def test_a_trickling_status_body_is_cut_at_the_request_deadline(serve: Any) -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"data": [')
        for _ in range(100):
            await response.write(b" ")
            await asyncio.sleep(0.2)  # under httpx's read timeout each time, forever in total
        return response

    url = await serve({"GET /v1/models": trickle})
    adapter = make_adapter(target(url), time.monotonic)
    began = time.monotonic()
    try:
        poll: ServerPoll = await adapter.poll()
    finally:
        await adapter.aclose()
    assert (poll.state, poll.error) == ("error", "timeout") and time.monotonic() - began < 5.0  # not 30 s


async def test_nothing_listening_is_refused() -> None:
    canary, _ = await run_canary("http://127.0.0.1:9")
    assert canary is not None and (canary.ok, canary.error, canary.ttft_s) == (False, "refused", None)


async def test_llamacpp_canary_takes_the_rate_the_server_measured(serve: Any) -> None:
    # A real llama-server sends a canary's 4 tokens about 2 ms apart: they often arrive in
    # one read, and a rate timed on our side swings from hundreds to tens of thousands of
    # tokens per second. Its last event carries the rate it measured itself.
    final = (b'data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],'
             b'"timings":{"predicted_n":4,"predicted_ms":24.0,"predicted_per_second":166.5}}\n\n')

    async def burst(response: web.StreamResponse) -> None:
        await response.write(chunk("a") + chunk("b") + chunk("c") + chunk("d") + final + b"data: [DONE]\n\n")

    url = await serve({"POST /v1/chat/completions": sse(burst)})
    canary, _ = await run_canary(url, kind="llamacpp")
    assert canary is not None and canary.ok, canary
    assert canary.tokens == 4 and canary.tokens_per_s == 166.5

    # Without timings (another OpenAI-compatible server) the rate is our own measure again.
    async def plain(response: web.StreamResponse) -> None:
        for text in "abcd":
            await response.write(chunk(text))
            await asyncio.sleep(0.05)
        await response.write(b"data: [DONE]\n\n")

    url = await serve({"POST /v1/chat/completions": sse(plain)})
    canary, _ = await run_canary(url, kind="llamacpp")
    assert canary is not None and canary.ok and canary.tokens == 4, canary
    assert canary.tokens_per_s is not None and canary.tokens_per_s != 166.5
