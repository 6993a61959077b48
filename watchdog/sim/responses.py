"""Writing HTTP answers the way a faulty server would: JSON bodies and streams.

Every flavour answers through these two helpers, so the ``garbage`` fault
(malformed JSON, cut-off bodies and streams, huge bodies) treats every route
the same way.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from watchdog.sim.faults import Faults

HUGE_BYTES = 20 * 1024 * 1024
FAULTS_KEY = web.AppKey("sim_faults", Faults)
GENERATION_KEY = web.AppKey("sim_generation_paths", frozenset)


def _faults(request: web.Request) -> Faults:
    return request.app[FAULTS_KEY]


def is_generation(request: web.Request) -> bool:
    return request.path in request.app[GENERATION_KEY]


def _garbage(request: web.Request) -> dict[str, Any] | None:
    fault = _faults(request).scoped("garbage", is_generation(request))
    return None if fault is None else fault.params


def mangle(data: bytes) -> bytes:
    """A chunk cut in half and closed with a stray brace: no JSON parser accepts it."""
    keep = max(len(data) // 2, 1)
    return data[:keep].rstrip(b"\n") + b"}}\x00" + (b"\n" if data.endswith(b"\n") else b"")


async def json_response(request: web.Request, obj: Any, status: int = 200,
                        content_type: str = "application/json") -> web.StreamResponse:
    body = json.dumps(obj, separators=(",", ":")).encode()
    garbage = _garbage(request)
    if garbage is None:
        return web.Response(body=body, status=status, content_type=content_type)
    mode = garbage["mode"]
    if mode == "json":
        return web.Response(body=mangle(body), status=status, content_type=content_type)
    if mode == "huge":
        pad = b'{"padding":"' + b"x" * HUGE_BYTES + b'","body":' + body + b"}"
        return web.Response(body=pad, status=status, content_type=content_type)
    # truncate: announce the whole length, send half, and hang up
    resp = web.StreamResponse(status=status, headers={"Content-Type": content_type})
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: max(len(body) // 2, 1)])
    _hang_up(request)
    return resp


def _hang_up(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


class Stream:
    """A chunked streaming answer (NDJSON or SSE) that honours the garbage fault.

    ``headers_now`` sends the status line at once (vLLM/FastAPI does); otherwise
    it goes with the first chunk (Ollama and llama.cpp), so a server that hangs
    before its first token sends nothing at all.
    """

    def __init__(self, request: web.Request, content_type: str, headers_now: bool = False,
                 extra_headers: dict[str, str] | None = None):
        self.request = request
        self.response = web.StreamResponse(
            status=200, headers={"Content-Type": content_type, **(extra_headers or {})})
        self.headers_now = headers_now
        self.chunks = 0
        self.cut = False
        self._garbage = _garbage(request)

    async def open(self) -> None:
        if self.headers_now:
            await self._prepare()

    async def _prepare(self) -> None:
        if not self.response.prepared:
            self.response.enable_chunked_encoding()
            await self.response.prepare(self.request)

    async def send(self, data: bytes) -> None:
        if self.cut:
            return
        await self._prepare()
        self.chunks += 1
        if self._garbage is not None:
            if self._garbage["mode"] == "truncate" and self.chunks > self._garbage["after_chunks"]:
                self.cut = True
                _hang_up(self.request)
                return
            if self._garbage["mode"] == "json":
                data = mangle(data)
        await self.response.write(data)

    async def close(self) -> web.StreamResponse:
        if not self.cut:
            await self._prepare()
            await self.response.write_eof()
        return self.response
