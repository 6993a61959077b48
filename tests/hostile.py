"""A hostile inference server: real sockets on 127.0.0.1, each port misbehaving in one way.

The servers run on their own asyncio loop in a background thread, so sync tests
(which wait on a daemon subprocess) and async tests (which run probes on their
own loop) can both use them. ``HostileHost.start(mode)`` gives a server; its
``mode`` may be changed while it runs (a healthy server that hangs later).

Modes, for the status endpoints (every GET):

| mode | what the server does |
| --- | --- |
| ``silent`` | accepts, reads the request, never answers |
| ``slow_headers`` | sends the status line, then one header byte every 0.5 s |
| ``trickle`` | sends headers, then the body one byte every 0.3 s |
| ``endless_body`` | a chunked body that never ends, as fast as it is read |
| ``big_body`` | a 10 MB JSON body |
| ``gzip_bomb`` | ``Content-Encoding: gzip``: 0.5 MB that inflates to 512 MB |
| ``invalid_json`` | 200 with a body that is not JSON |
| ``html_200`` | 200 with an HTML error page |
| ``html_500`` | 500 with an HTML error page |
| ``wrong_schema`` | 200 with JSON of the wrong shape |
| ``deep_json`` | 200 with JSON nested 200,000 deep |
| ``close`` | reads the request and closes the connection |
| ``reset`` | reads the request and resets the connection (RST) |
| ``garbage`` | answers bytes that are not HTTP |
| ``many_models`` | an Ollama ``/api/ps`` of 38,000 loaded models |
| ``hung`` | like ``silent``, for every request (canaries too): a hung server |
| ``endless_tokens`` | healthy status; canaries get tokens without end (~100/s) |
| ``healthy`` | a small healthy Ollama/OpenAI-compatible server (one model loaded) |

In every mode but ``hung`` and ``endless_tokens``, canary requests (POST) get
a short healthy answer, so a test sees the status endpoint's effect alone.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

STATUS_MODES = (
    "silent", "slow_headers", "trickle", "endless_body", "big_body", "gzip_bomb", "invalid_json", "html_200",
    "html_500", "wrong_schema", "deep_json", "close", "reset", "garbage", "many_models",
)
MODEL = "hostile:1b"
_FOREVER = "2318-01-01T00:00:00Z"


@cache
def gzip_bomb(inflated: int = 512 * 1024 * 1024) -> bytes:
    """A gzip stream of ``inflated`` zero bytes (about inflated / 1000 compressed)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    parts = [packer.compress(block) for _ in range(inflated // len(block))]
    parts.append(packer.flush())
    return b"".join(parts)


@cache
def big_body() -> bytes:
    return b'{"models": [], "pad": "' + b"a" * 10_000_000 + b'"}'


@cache
def deep_json() -> bytes:
    return b"[" * 200_000 + b"]" * 200_000


@cache
def many_models_body(count: int = 38_000) -> bytes:
    models = [{"name": f"m{i}:1b", "size": 1 << 30, "size_vram": 1 << 30, "expires_at": _FOREVER}
              for i in range(count)]
    return json.dumps({"models": models}, separators=(",", ":")).encode()  # 3.4 MB: under the 4 MiB cap


def _healthy_get(path: str) -> tuple[int, str, bytes]:
    if path.startswith("/api/ps"):
        body = {"models": [{"name": MODEL, "model": MODEL, "size": 1 << 30, "size_vram": 1 << 30,
                            "expires_at": _FOREVER}]}
    elif path.startswith("/api/version"):
        body = {"version": "0.6.0"}
    elif path.startswith("/api/tags"):
        body = {"models": [{"name": MODEL, "model": MODEL}]}
    elif path.startswith("/v1/models"):
        body = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "hostile"}]}
    elif path.startswith("/health"):
        body = {"status": "ok"}
    elif path.startswith("/metrics"):
        return 404, "text/plain", b"not found"
    else:
        return 404, "application/json", b'{"error": "not found"}'
    return 200, "application/json", json.dumps(body).encode()


@dataclass
class HostileServer:
    """One listening port. ``mode`` can be changed at any time; ``connections`` counts accepts."""

    mode: str
    port: int = 0
    connections: int = 0
    token_interval: float = 0.01
    server: asyncio.AbstractServer | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                method, path = request
                keep = await self._answer(method, path, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, OSError, asyncio.CancelledError):
            return  # the client left, or the host is closing
        finally:
            self.writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _answer(self, method: str, path: str, writer: asyncio.StreamWriter) -> bool:
        mode = self.mode
        if mode == "hung" or (mode == "silent" and method == "GET"):
            await asyncio.sleep(3600)
            return False
        if method == "POST":
            if mode == "endless_tokens":
                await self._endless_tokens(path, writer)
                return False
            await self._healthy_post(path, writer)
            return True
        if mode in ("healthy", "endless_tokens"):
            status, ctype, body = _healthy_get(path)
            await _send(writer, status, ctype, body)
            return True
        if mode == "slow_headers":
            writer.write(b"HTTP/1.1 200 OK\r\n")
            for byte in b"Content-Type: application/json\r\nX-Slow: " + b"x" * 10_000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.5)
            return False
        if mode == "trickle":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            for byte in b'{"models": [' + b" " * 100_000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.3)
            return False
        if mode == "endless_body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b" " * 65536
            frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            writer.write(b"5\r\n{\"a\":\r\n")
            while True:
                writer.write(frame)
                await writer.drain()
        if mode == "big_body":
            await _send(writer, 200, "application/json", big_body())
            return True
        if mode == "gzip_bomb":
            await _send(writer, 200, "application/json", gzip_bomb(), extra="Content-Encoding: gzip\r\n")
            return True
        if mode == "invalid_json":
            await _send(writer, 200, "application/json", b'{"models": [oops')
            return True
        if mode in ("html_200", "html_500"):
            page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
            await _send(writer, 200 if mode == "html_200" else 500, "text/html", page)
            return True
        if mode == "wrong_schema":
            await _send(writer, 200, "application/json", b'{"models": 5, "data": "x", "status": [1, 2]}')
            return True
        if mode == "deep_json":
            await _send(writer, 200, "application/json", deep_json())
            return True
        if mode == "close":
            return False
        if mode == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if mode == "garbage":
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe garbage \r\n\r\n")
            await writer.drain()
            return False
        if mode == "many_models":
            if path.startswith("/api/ps"):
                await _send(writer, 200, "application/json", many_models_body())
            else:
                status, ctype, body = _healthy_get(path)
                await _send(writer, status, ctype, body)
            return True
        raise ValueError(f"unknown mode {mode!r}")

    async def _healthy_post(self, path: str, writer: asyncio.StreamWriter) -> None:
        if path.startswith("/api/"):
            lines = [{"model": MODEL, "response": "ok", "done": False}] * 3
            lines.append({"model": MODEL, "response": "", "done": True, "eval_count": 3})
            await _send(writer, 200, "application/x-ndjson", b"".join(json.dumps(x).encode() + b"\n" for x in lines))
            return
        events = [{"choices": [{"index": 0, "delta": {"content": "ok"}, "text": "ok"}]}] * 3
        body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        await _send(writer, 200, "text/event-stream", body)

    async def _endless_tokens(self, path: str, writer: asyncio.StreamWriter) -> None:
        ndjson = path.startswith("/api/")
        ctype = "application/x-ndjson" if ndjson else "text/event-stream"
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        if ndjson:
            line = json.dumps({"model": MODEL, "response": " tok", "done": False}).encode() + b"\n"
        else:
            line = b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": " tok"}}]}).encode() + b"\n\n"
        frame = f"{len(line):x}\r\n".encode() + line + b"\r\n"
        while True:
            writer.write(frame)
            await writer.drain()
            await asyncio.sleep(self.token_interval)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = (lines[0].split(" ") + ["", ""])[:3]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip() or 0)
    if length:
        await reader.readexactly(length)
    return method, path


async def _send(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes, extra: str = "") -> None:
    reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}.get(status, "OK")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    writer.write(head.encode())
    view = memoryview(body)
    for start in range(0, len(body), 65536):  # in pieces: the server itself must not buffer 10 MB a client
        writer.write(view[start : start + 65536])
        await writer.drain()
    await writer.drain()


class HostileHost:
    """A background thread running an asyncio loop that serves any number of hostile servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hostile", daemon=True)
        self.thread.start()
        self.servers: list[HostileServer] = []

    def _call(self, coro: Any, timeout: float = 30.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def start(self, mode: str, **options: Any) -> HostileServer:
        server = HostileServer(mode, **options)

        async def listen() -> None:
            server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0, limit=1 << 20)
            server.port = server.server.sockets[0].getsockname()[1]

        self._call(listen())
        self.servers.append(server)
        return server

    def close(self) -> None:
        async def shut() -> None:
            for server in self.servers:
                if server.server is not None:
                    server.server.close()
                for writer in list(server.writers):
                    writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self._call(shut(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@contextmanager
def hostile_host() -> Iterator[HostileHost]:
    host = HostileHost()
    try:
        yield host
    finally:
        host.close()
