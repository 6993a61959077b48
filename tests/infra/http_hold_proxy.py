"""An HTTP reverse proxy on 127.0.0.1 that can hold generation requests only: a hang that ``/health`` misses.

``TcpProxy`` silences a whole API. Real hangs are often narrower: the engine is stuck,
so no completion ever comes back, while the HTTP layer still answers ``/health``,
``/metrics`` and ``/slots``. In front of a real server this proxy makes that kind:
while ``hold()`` is in force, requests to the generation paths are accepted and never
answered (until ``release()``, which answers them 503); every other request, and every
request when not holding, is forwarded with its response streamed back.

It runs its own asyncio loop in a thread::

    with HttpHoldProxy("http://127.0.0.1:8080") as proxy:
        proxy.url          # http://127.0.0.1:<its port>
        proxy.hold()       # generation hangs, /health still answers
        proxy.release()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Self

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from tests.infra.system import InfraError

#: llama.cpp's, OpenAI's and Ollama's generation routes.
GENERATION_PATHS = frozenset({
    "/completion", "/completions", "/chat/completions", "/v1/completions", "/v1/chat/completions",
    "/api/generate", "/api/chat",
})
HOP_BY_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


class HttpHoldProxy:
    def __init__(self, upstream: str, generation_paths: frozenset[str] = GENERATION_PATHS) -> None:
        self.upstream = upstream.rstrip("/")
        self.generation_paths = generation_paths
        self.port = 0
        self.forwarded = 0
        self.held = 0
        self._release: asyncio.Event | None = None
        self._holding = False
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="http-hold-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        except Exception as exc:
            self.close()
            raise InfraError(f"the HTTP proxy cannot listen: {exc}") from exc
        return self

    async def _start(self) -> None:
        self._release = asyncio.Event()
        self._session = ClientSession(timeout=ClientTimeout(total=None, sock_connect=5), auto_decompress=False)
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def hold(self) -> None:
        """New generation requests are accepted and never answered."""
        self._call(True)

    def release(self) -> None:
        """Forward again; the requests held meanwhile are answered 503."""
        self._call(False)

    def _call(self, holding: bool) -> None:
        def flip() -> None:
            assert self._release is not None
            self._holding = holding
            if holding:
                self._release.clear()
            else:
                self._release.set()

        self._loop.call_soon_threadsafe(flip)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop).result(10)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self._holding and request.path in self.generation_paths:
            assert self._release is not None
            self.held += 1
            await self._release.wait()
            return web.Response(status=503, text="held by the test's proxy")
        assert self._session is not None
        self.forwarded += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                             data=body or None, allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP})
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (OSError, ClientError) as exc:  # upstream down (before any answer): a proxy answers 502
            return web.Response(status=502, text=f"upstream: {exc}")

    def close(self) -> None:
        async def shutdown() -> None:
            if self._release is not None:
                self._release.set()
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(15)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
