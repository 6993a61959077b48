"""The daemon's control API on its unix socket (aiohttp), serving JSON.

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

Errors are ``{"error": "..."}`` with 400, 403, 404, 409 (an action refused: paused,
busy, budget spent, a model loading, mode observe) or 500. The server knows the
daemon only through a :class:`ControlProvider`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from loguru import logger

from watchdog.control.params import parse_since
from watchdog.control.socket import ControlSocket, bind_control_socket
from watchdog.incidents.model import Incident
from watchdog.incidents.recording import complete_bytes
from watchdog.status.model import ReloadStatus, StatusSnapshot

MAX_WEDGE_S = 3600.0
MAX_ALERT_TEST_S = 300.0
MAX_LIMIT = 1000
_CHUNK = 256 * 1024
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

    def allow_wedge(self) -> bool: ...

    async def act(self, action: str, target: str, params: dict[str, Any]) -> dict[str, Any]:
        """A manual action (restart, unload, pause, resume). Raises LookupError (no such
        target: 404) or ActionRefused (409)."""
        ...


class ActionRefused(Exception):
    """The policy refused a manual action; the message says why."""


class ControlServer:
    """Serves a :class:`ControlProvider` on a unix socket. ``await start()``, ``await stop()``."""

    def __init__(self, path: str | Path, provider: ControlProvider, group: str = "") -> None:
        self.path = Path(path)
        self.group = group
        self.provider = provider
        self._runner: web.AppRunner | None = None
        self._socket: ControlSocket | None = None

    async def start(self) -> None:
        """Bind the socket (see :mod:`watchdog.control.socket`) and serve. Raises ControlSocketError."""
        app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
        app.add_routes(
            [
                web.get("/status", self._status),
                web.get("/incidents", self._incidents),
                web.get(r"/incidents/{id:\d+}", self._incident),
                web.get(r"/incidents/{id:\d+}/trace", self._trace),
                web.post("/reload", self._reload),
                web.post("/alerts/test", self._alert_test),
                web.post(r"/targets/{name}/{action:restart|unload|pause|resume}", self._act),
                web.post("/debug/wedge", self._wedge),
            ]
        )
        self._socket = bind_control_socket(self.path, self.group)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket.sock).start()
        _log.info(f"control socket listening on {self.path}")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._socket is not None:
            self._socket.remove()
            self._socket.sock.close()
            self._socket = None

    # --- handlers -----------------------------------------------------------------------------

    async def _status(self, request: web.Request) -> web.Response:
        snapshot = await self.provider.status()
        return _json(snapshot.model_dump(mode="json"))

    async def _incidents(self, request: web.Request) -> web.Response:
        since = None
        if request.query.get("since"):
            try:
                since = parse_since(request.query["since"], time.time())
            except ValueError as exc:
                raise _error(400, f"since: {exc}") from None
        limit = _int(request.query.get("limit", "50"), "limit", 1, MAX_LIMIT)
        timeline = request.query.get("timeline", "0").lower() in ("1", "true", "yes")
        incidents = await self.provider.incidents(since, limit, timeline)
        return _json({"incidents": [i.model_dump(mode="json") for i in incidents]})

    async def _incident(self, request: web.Request) -> web.Response:
        return _json((await self._find(request)).model_dump(mode="json"))

    async def _trace(self, request: web.Request) -> web.StreamResponse:
        incident = await self._find(request)
        path = self.provider.recording_path(incident)
        if path is None:
            raise _error(404, f"incident #{incident.id} has no flight recording")
        # Whole lines only: a line being appended right now is left for the next read.
        data = await asyncio.to_thread(complete_bytes, path)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson; charset=utf-8"})
        response.content_length = len(data)
        await response.prepare(request)
        for start in range(0, len(data), _CHUNK):
            await response.write(data[start : start + _CHUNK])
        await response.write_eof()
        return response

    async def _reload(self, request: web.Request) -> web.Response:
        result = await self.provider.reload()
        return _json(result.model_dump(mode="json"))

    async def _alert_test(self, request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
        except (ValueError, UnicodeDecodeError):
            raise _error(400, 'expected a JSON body like {"sink": "ops-slack", "timeout": 20}') from None
        if not isinstance(body, dict):
            raise _error(400, 'expected a JSON object like {"sink": "ops-slack", "timeout": 20}')
        sink = body.get("sink")
        timeout = body.get("timeout", 20)
        if sink is not None and not isinstance(sink, str):
            raise _error(400, '"sink" must be a sink name or null (every sink)')
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_ALERT_TEST_S:
            raise _error(400, f'"timeout" must be a number of seconds between 0 and {MAX_ALERT_TEST_S:g}')
        try:
            results = await self.provider.alert_test(sink, float(timeout))
        except KeyError as exc:
            raise _error(404, str(exc.args[0]) if exc.args else "no such alert sink") from None
        return _json({"results": results})
    async def _act(self, request: web.Request) -> web.Response:
        params: dict[str, Any] = {}
        if request.can_read_body:
            try:
                body = await request.json()
            except (ValueError, UnicodeDecodeError):
                raise _error(400, "expected a JSON object as the body") from None
            if not isinstance(body, dict):
                raise _error(400, "expected a JSON object as the body")
            params = body
        seconds = params.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not math.isfinite(seconds) or seconds <= 0):
            raise _error(400, '"seconds" must be a positive number')
        model = params.get("model")
        if model is not None and (not isinstance(model, str) or not model or len(model) > 256):
            raise _error(400, '"model" must be a model name')
        try:
            result = await self.provider.act(request.match_info["action"], request.match_info["name"], params)
        except LookupError as exc:
            raise _error(404, str(exc).strip("'\"")) from None
        except ActionRefused as exc:
            raise _error(409, str(exc)) from None
        return _json(result)

    async def _wedge(self, request: web.Request) -> web.StreamResponse:
        if not self.provider.allow_wedge():
            raise _error(403, "wedging is disabled: set [debug] allow_wedge = true (tests of the watchdog only)")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise _error(400, 'expected a JSON body like {"seconds": 30}') from None
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or not 0 < seconds <= MAX_WEDGE_S
        ):
            raise _error(400, f'"seconds" must be a number between 0 and {MAX_WEDGE_S:g}')
        _log.warning(f"debug: wedging the main loop for {seconds:g} s on request")
        response = web.json_response({"wedging_s": seconds})
        await response.prepare(request)
        await response.write_eof()
        # Deliberately synchronous: the whole loop stops, as in a real wedge, so that
        # the progress-gated systemd watchdog pings stop too.
        time.sleep(seconds)
        return response

    async def _find(self, request: web.Request) -> Incident:
        incident_id = int(request.match_info["id"])
        incident = await self.provider.incident(incident_id)
        if incident is None:
            raise _error(404, f"no incident #{incident_id}")
        return incident


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error as JSON; a failing handler never takes the daemon down."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json":
            raise
        return web.json_response({"error": exc.reason}, status=exc.status)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - answered, logged, and the daemon goes on
        _log.opt(exception=exc).error(f"control: {request.method} {request.path} failed: {exc!r}")
        return web.json_response({"error": f"internal error: {exc}"}, status=500)


def _error(status: int, message: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 403: web.HTTPForbidden, 404: web.HTTPNotFound, 409: web.HTTPConflict}[status]
    return cls(text=json.dumps({"error": message}), content_type="application/json")


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(data, ensure_ascii=False), content_type="application/json")


def _int(text: str, name: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _error(400, f"{name}: expected a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise _error(400, f"{name}: expected {low} to {high}, got {value}")
    return value
