"""The daemon's control API on its unix socket: a small asyncio server over ``h11``, serving JSON.

| request | answer |
| --- | --- |
| ``GET /status`` | the status snapshot (docs/status.schema.json) |
| ``GET /incidents?since=24h\\|ISO&limit=50&timeline=1`` | ``{"incidents": [...]}``, newest first (timelines when asked) |
| ``GET /incidents/{id}`` | the incident with its timeline |
| ``GET /incidents/{id}/trace`` | its flight recording, trace-v1 JSON Lines |
| ``POST /reload`` | ``{"at", "ok", "message"}``: the config reloaded, or why not (the old one stays) |
| ``POST /alerts/test {"sink": NAME or null, "timeout": S}`` | ``{"results": [{"sink", "kind", "delivered", "attempts", "error"}]}``: a test alert through the outbox to one sink or all (404: no such sink) |
| ``POST /targets/{name}/restart`` | ``{"target", "action", "result", "detail", "verified"}`` after the restart and its verification |
| ``POST /targets/{name}/unload {"model": M}`` | the same for a forced unload (``model`` optional: every loaded model) |
| ``POST /targets/{name}/pause {"seconds": N}`` | ``{"target", "paused", "until", "reason"}`` (no ``seconds``: until resumed) |
| ``POST /targets/{name}/resume`` | ``{"target", "paused": false}``; the restart budget starts afresh |
| ``POST /debug/wedge {"seconds": N}`` | blocks the daemon's loop for N s, only with ``[debug] allow_wedge`` (else 403) |

Errors are ``{"error": "..."}`` with 400, 403, 404, 405, 409 (an action refused: paused,
busy, budget spent, a model loading, mode observe), 413 or 500. The server knows
the daemon only through a :class:`ControlProvider`.

Bounded, because the socket shares the loop with the probes: a client must send
its whole request within ``IDLE_TIMEOUT_S`` and read the answer within
``WRITE_TIMEOUT_S``; at most ``MAX_CONNECTIONS`` are open at once (when full, the
oldest connection still waiting for its request is dropped, so ``status`` gets
through a crowd of idle clients); requests are at most ``MAX_REQUEST_BYTES``;
one connection serves one request. Running out of descriptors while accepting is
logged once (not once per attempt) and retried after a pause.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
from loguru import logger

from watchdog.control.params import parse_since
from watchdog.control.socket import ControlSocket, bind_control_socket
from watchdog.incidents.model import Incident
from watchdog.incidents.recording import complete_bytes
from watchdog.logs import LogOnce
from watchdog.status.model import ReloadStatus, StatusSnapshot

MAX_WEDGE_S = 3600.0
MAX_ALERT_TEST_S = 120.0
MAX_LIMIT = 1000
MAX_INCIDENT_ID = 2**63 - 1
"""SQLite's largest integer: a longer id cannot exist (and would overflow the query)."""
MAX_CONNECTIONS = 64
IDLE_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 30.0
MAX_REQUEST_BYTES = 64 * 1024
BACKLOG = 512
_ACCEPT_PAUSE_S = 0.2
_CHUNK = 256 * 1024
_INCIDENT = re.compile(r"^/incidents/(\d+)(/trace)?$")
_ACTION = re.compile(r"^/targets/([^/]+)/(restart|unload|pause|resume)$")
_log = logger.bind(component="control")


class ControlProvider(Protocol):
    """What the daemon gives the control server (all called on the daemon's loop)."""

    async def status(self) -> StatusSnapshot: ...

    async def incidents(self, since: float | None, limit: int, timeline: bool) -> list[Incident]: ...

    async def incident(self, incident_id: int) -> Incident | None: ...

    def recording_path(self, incident: Incident) -> Path | None: ...

    async def reload(self) -> ReloadStatus: ...

    async def alert_test(self, sink: str | None, timeout: float) -> list[dict[str, Any]]:
        """Send a test alert; raises KeyError for an unknown sink."""
        ...

    async def act(self, action: str, target: str, params: dict[str, Any]) -> dict[str, Any]:
        """A manual action (restart, unload, pause, resume). Raises LookupError (no such
        target: 404) or ActionRefused (409)."""
        ...

    def allow_wedge(self) -> bool: ...


class ActionRefused(Exception):
    """The policy refused a manual action; the message says why."""


class HttpError(Exception):
    """An answer with an error status and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int
    body: bytes | Iterable[bytes]
    content_type: str = "application/json"
    length: int | None = None
    after: Any = None  # called once the answer is sent (the wedge)


@dataclass
class _Conn:
    sock: socket.socket
    opened: float
    task: asyncio.Task[None] | None = None
    waiting: bool = True  # still waiting for its request (may be dropped when full)


@dataclass
class ControlStats:
    """Counters for tests and the README's budgets."""

    accepted: int = 0
    dropped_idle: int = 0
    dropped_full: int = 0
    accept_errors: int = 0
    peak: int = 0
    open: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class ControlServer:
    """Serves a :class:`ControlProvider` on a unix socket. ``await start()``, ``await stop()``."""

    def __init__(
        self,
        path: str | Path,
        provider: ControlProvider,
        group: str = "",
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self.group = group
        self.provider = provider
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.stats = ControlStats()
        self._socket: ControlSocket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._conns: dict[int, _Conn] = {}
        self._log = LogOnce("control")

    async def start(self) -> None:
        """Bind the socket (see :mod:`watchdog.control.socket`) and serve. Raises ControlSocketError."""
        self._socket = bind_control_socket(self.path, self.group, backlog=BACKLOG)
        self._accepting = asyncio.create_task(self._accept_loop(self._socket.sock), name="control:accept")
        _log.info(f"control socket listening on {self.path}")

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        # Connections still waiting for their request are closed; one being answered is left to
        # finish on its own (a reload that moves the socket stops this server from inside the
        # very request that asked for it, whose answer must still go out).
        tasks = [c.task for c in self._conns.values() if c.task is not None and c.waiting]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if self._socket is not None:
            self._socket.remove()
            self._socket.sock.close()
            self._socket = None

    # --- connections ----------------------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS: free what we can, say so once, and pause instead of spinning
                # (and instead of a traceback per attempt).
                self.stats.accept_errors += 1
                self._log.problem("accept", f"control socket: cannot accept ({errno.errorcode.get(exc.errno or 0, exc)}"
                                  f": {exc.strerror}); dropping idle clients and retrying")
                self._drop_oldest_waiting()
                await asyncio.sleep(_ACCEPT_PAUSE_S)
                continue
            self._log.ok("accept", "control socket: accepting again")
            sock.setblocking(False)
            # sock_accept does not yield while connections are queued: give the loop (the probes)
            # a turn after every accept, so a flood of clients cannot starve them.
            await asyncio.sleep(0)
            if len(self._conns) >= self.max_connections and not self._drop_oldest_waiting():
                self.stats.dropped_full += 1
                sock.close()
                continue
            conn = _Conn(sock, time.monotonic())
            self._conns[id(conn)] = conn
            self.stats.accepted += 1
            self.stats.open = len(self._conns)
            self.stats.peak = max(self.stats.peak, self.stats.open)
            conn.task = asyncio.create_task(self._serve(conn), name="control:conn")

    def _drop_oldest_waiting(self) -> bool:
        waiting = [c for c in self._conns.values() if c.waiting and c.task is not None]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.opened)
        oldest.waiting = False
        assert oldest.task is not None
        oldest.task.cancel()  # its socket is closed as the task ends, at the loop's next turn
        self._conns.pop(id(oldest), None)
        self.stats.dropped_full += 1
        return True

    async def _serve(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    request = await _read_request(loop, conn.sock, h)
            except TimeoutError:
                self.stats.dropped_idle += 1
                return
            except HttpError as exc:
                conn.waiting = False
                await self._send(loop, conn.sock, h, Answer(exc.status, _error_body(exc.message)))
                return
            if request is None:
                return
            conn.waiting = False
            answer = await self._answer(request)
            try:
                await self._send(loop, conn.sock, h, answer)
            finally:
                if answer.after is not None:
                    answer.after()
        except asyncio.CancelledError:
            pass  # dropped (full, or stopping): just close
        except (OSError, h11.ProtocolError, TimeoutError):
            pass  # the client went away or stopped reading: nothing to tell it
        finally:
            self._conns.pop(id(conn), None)
            self.stats.open = len(self._conns)
            conn.sock.close()

    async def _send(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, h: h11.Connection,
                    answer: Answer) -> None:
        chunks = [answer.body] if isinstance(answer.body, bytes) else answer.body
        length = answer.length if answer.length is not None else (
            len(answer.body) if isinstance(answer.body, bytes) else None)
        headers = [("Content-Type", answer.content_type), ("Connection", "close")]
        if length is not None:
            headers.append(("Content-Length", str(length)))
        try:
            data = h.send(h11.Response(status_code=answer.status, headers=headers,
                                       reason=_REASONS.get(answer.status, ""))) or b""
        except h11.LocalProtocolError:
            # The request was unreadable: answer outside the state machine.
            body = answer.body if isinstance(answer.body, bytes) else b""
            data = (f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, '')}\r\n"
                    f"Content-Type: {answer.content_type}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode() + body
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await loop.sock_sendall(sock, data)
            return
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            for chunk in chunks:
                if chunk:
                    data += h.send(h11.Data(data=chunk)) or b""
                    if len(data) >= _CHUNK:
                        await loop.sock_sendall(sock, data)
                        data = b""
            data += h.send(h11.EndOfMessage()) or b""
            if data:
                await loop.sock_sendall(sock, data)

    # --- routes ---------------------------------------------------------------------------------

    async def _answer(self, request: Request) -> Answer:
        """The answer to one request; a failing handler is a JSON 500, never a dead daemon."""
        try:
            return await self._route(request)
        except HttpError as exc:
            return Answer(exc.status, _error_body(exc.message))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - answered, logged, and the daemon goes on
            _log.opt(exception=exc).error(f"control: {request.method} {request.path} failed: {exc!r}")
            return Answer(500, _error_body(f"internal error: {exc}"))

    async def _route(self, request: Request) -> Answer:
        path, method = request.path, request.method
        routes: dict[str, tuple[str, Any]] = {
            "/status": ("GET", self._status),
            "/incidents": ("GET", self._incidents),
            "/reload": ("POST", self._reload),
            "/alerts/test": ("POST", self._alert_test),
            "/debug/wedge": ("POST", self._wedge),
        }
        if path in routes:
            want, handler = routes[path]
        elif _ACTION.match(path) is not None:
            want = "POST"
            handler = self._act
        elif (match := _INCIDENT.match(path)) is not None:
            want = "GET"
            handler = self._trace if match.group(2) else self._incident
        else:
            raise HttpError(404, "Not Found")
        if method != want:
            raise HttpError(405, "Method Not Allowed")
        answer: Answer = await handler(request)
        return answer

    async def _status(self, request: Request) -> Answer:
        snapshot = await self.provider.status()
        return _json(snapshot.model_dump(mode="json"))

    async def _incidents(self, request: Request) -> Answer:
        since = None
        if request.query.get("since"):
            try:
                since = parse_since(request.query["since"], time.time())
            except ValueError as exc:
                raise HttpError(400, f"since: {exc}") from None
        limit = _int(request.query.get("limit", "50"), "limit", 1, MAX_LIMIT)
        timeline = request.query.get("timeline", "0").lower() in ("1", "true", "yes")
        incidents = await self.provider.incidents(since, limit, timeline)
        return _json({"incidents": [i.model_dump(mode="json") for i in incidents]})

    async def _incident(self, request: Request) -> Answer:
        return _json((await self._find(request)).model_dump(mode="json"))

    async def _trace(self, request: Request) -> Answer:
        incident = await self._find(request)
        path = self.provider.recording_path(incident)
        if path is None:
            raise HttpError(404, f"incident #{incident.id} has no flight recording")
        # Whole lines only: a line being appended right now is left for the next read.
        data = await asyncio.to_thread(complete_bytes, path)
        chunks = (data[start : start + _CHUNK] for start in range(0, len(data), _CHUNK))
        return Answer(200, chunks, "application/x-ndjson; charset=utf-8", length=len(data))

    async def _reload(self, request: Request) -> Answer:
        result = await self.provider.reload()
        return _json(result.model_dump(mode="json"))

    async def _alert_test(self, request: Request) -> Answer:
        try:
            body = json.loads(request.body) if request.body.strip() else {}
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise HttpError(400, 'expected a JSON body like {"sink": "ops-slack", "timeout": 20}') from None
        if not isinstance(body, dict):
            raise HttpError(400, 'expected a JSON object like {"sink": "ops-slack", "timeout": 20}')
        sink = body.get("sink")
        timeout = body.get("timeout", 20)
        if sink is not None and not isinstance(sink, str):
            raise HttpError(400, '"sink" must be a sink name or null (every sink)')
        if (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout)
                or not 0 < timeout <= MAX_ALERT_TEST_S):
            raise HttpError(400, f'"timeout" must be a number of seconds between 0 and {MAX_ALERT_TEST_S:g}')
        try:
            results = await self.provider.alert_test(sink, float(timeout))
        except KeyError as exc:
            raise HttpError(404, str(exc.args[0]) if exc.args else "no such alert sink") from None
        return _json({"results": results})

    async def _act(self, request: Request) -> Answer:
        match = _ACTION.match(request.path)
        assert match is not None
        params: dict[str, Any] = {}
        if request.body.strip():
            try:
                body = json.loads(request.body)
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise HttpError(400, "expected a JSON object as the body") from None
            if not isinstance(body, dict):
                raise HttpError(400, "expected a JSON object as the body")
            params = body
        seconds = params.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not math.isfinite(seconds) or seconds <= 0):
            raise HttpError(400, '"seconds" must be a positive number')
        model = params.get("model")
        if model is not None and (not isinstance(model, str) or not model or len(model) > 256):
            raise HttpError(400, '"model" must be a model name')
        try:
            result = await self.provider.act(match.group(2), unquote(match.group(1)), params)
        except LookupError as exc:
            raise HttpError(404, str(exc).strip("'\"")) from None
        except ActionRefused as exc:
            raise HttpError(409, str(exc)) from None
        return _json(result)

    async def _wedge(self, request: Request) -> Answer:
        if not self.provider.allow_wedge():
            raise HttpError(403, "wedging is disabled: set [debug] allow_wedge = true (tests of the watchdog only)")
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise HttpError(400, 'expected a JSON body like {"seconds": 30}') from None
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or not 0 < seconds <= MAX_WEDGE_S
        ):
            raise HttpError(400, f'"seconds" must be a number between 0 and {MAX_WEDGE_S:g}')
        _log.warning(f"debug: wedging the main loop for {seconds:g} s on request")
        answer = _json({"wedging_s": seconds})
        # Deliberately synchronous, after the answer is sent: the whole loop stops, as in a
        # real wedge, so that the progress-gated systemd watchdog pings stop too.
        answer.after = lambda: time.sleep(seconds)
        return answer

    async def _find(self, request: Request) -> Incident:
        match = _INCIDENT.match(request.path)
        assert match is not None
        text = match.group(1)
        if len(text) > 19 or int(text) > MAX_INCIDENT_ID:
            raise HttpError(404, f"no incident #{text[:30]}")
        incident_id = int(text)
        incident = await self.provider.incident(incident_id)
        if incident is None:
            raise HttpError(404, f"no incident #{incident_id}")
        return incident


async def _read_request(loop: asyncio.AbstractEventLoop, sock: socket.socket, h: h11.Connection) -> Request | None:
    """One whole request (head and body), or None if the client closed first."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = h.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpError(max(exc.error_status_hint, 400),
                            "malformed request") from None
        if event is h11.NEED_DATA:
            data = await loop.sock_recv(sock, 65536)
            h.receive_data(data)
            if not data and head is None:
                return None
            continue
        if isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_REQUEST_BYTES:
                raise HttpError(413, f"request body larger than {MAX_REQUEST_BYTES} bytes")
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            target = urlsplit(head.target.decode("latin-1"))
            return Request(
                method=head.method.decode("ascii", "replace"),
                path=target.path,
                query=dict(parse_qsl(target.query)),
                body=bytes(body),
            )
        elif isinstance(event, h11.ConnectionClosed):
            return None


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error"}


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}, ensure_ascii=False).encode()


def _json(data: Any) -> Answer:
    return Answer(200, json.dumps(data, ensure_ascii=False).encode())


def _int(text: str, name: str, low: int, high: int) -> int:
    if len(text) > 12:
        raise HttpError(400, f"{name}: expected {low} to {high}, got {text[:20]!r}")
    try:
        value = int(text)
    except ValueError:
        raise HttpError(400, f"{name}: expected a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise HttpError(400, f"{name}: expected {low} to {high}, got {value}")
    return value
