"""Talking to the daemon over its control socket (synchronous: ``watchdogctl`` is a short program).

HTTP/1.1 is spoken with ``h11``, the library the daemon's side of the socket uses: importing
the standard library's ``http.client`` (with ``email`` and ``ssl``, neither of any use on a
unix socket) cost ``watchdogctl status`` 20-35 ms of its 150 ms budget, h11 about 10 (issue 15).

Every way of not reaching the daemon becomes :class:`DaemonUnreachable` with a
message that says what to check; an error the daemon answered becomes
:class:`ControlError` with its status and message.
"""

from __future__ import annotations

import errno
import json as _jsonlib
import os
import socket
import stat
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, Self

import h11

from watchdog.config.paths import DEFAULT_CONTROL_SOCKET

if TYPE_CHECKING:  # imported where used: `watchdogctl status` imports no pydantic model (issue 15)
    from pathlib import Path

    from watchdog.incidents.model import Incident
    from watchdog.status.model import ReloadStatus, StatusSnapshot

SOCKET_ENV = "INFERENCE_WATCHDOG_SOCKET"


class DaemonUnreachable(Exception):
    """No daemon answers on the control socket."""


class ControlError(Exception):
    """The daemon answered with an error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ControlClient:
    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        self.path = os.fspath(path)  # a str: pathlib costs `status` an import (issue 15)
        self.timeout = timeout

    def status(self) -> StatusSnapshot:
        """The snapshot, validated into the pydantic models (for code that works with it)."""
        from watchdog.status.model import StatusSnapshot

        return StatusSnapshot.model_validate(self.status_data())

    def status_data(self) -> Any:
        """The snapshot as the daemon sent it, decoded JSON only: ``watchdogctl status`` shows it
        through :func:`watchdog.status.view.snapshot_view` without importing pydantic."""
        return self._json("GET", "/status")

    def incidents(self, since: str | None = None, limit: int = 50, timeline: bool = False) -> list[Incident]:
        params: dict[str, Any] = {"limit": limit, "timeline": int(timeline)}
        if since:
            params["since"] = since
        data = self._json("GET", "/incidents", params=params)
        from watchdog.incidents.model import Incident

        return [Incident.model_validate(item) for item in data.get("incidents", [])]

    def incident(self, incident_id: int) -> Incident:
        from watchdog.incidents.model import Incident

        return Incident.model_validate(self._json("GET", f"/incidents/{int(incident_id)}"))

    def trace(self, incident_id: int, out: BinaryIO) -> int:
        """Write the incident's recording (trace-v1) to ``out``; returns the bytes written."""
        written = 0
        with self._exchange("GET", f"/incidents/{int(incident_id)}/trace") as answer:
            if answer.status >= 400:
                raise ControlError(answer.status, _message(answer.status, answer.read(64 * 1024)))
            for chunk in answer.chunks():
                out.write(chunk)
                written += len(chunk)
        return written

    def save_trace(self, incident_id: int, path: str | Path) -> int:
        """Write the recording to ``path``, whole or not at all (a temporary file renamed into place)."""
        import tempfile  # here: `status` has no use for it

        handle = tempfile.NamedTemporaryFile("wb", dir=os.path.dirname(os.path.abspath(path)), prefix=".trace-",
                                             delete=False)
        try:
            with handle:
                size = self.trace(incident_id, handle)
            os.replace(handle.name, path)
        except BaseException:
            os.unlink(handle.name)
            raise
        return size

    def reload(self) -> ReloadStatus:
        from watchdog.status.model import ReloadStatus

        return ReloadStatus.model_validate(self._json("POST", "/reload"))

    def alert_test(self, sink: str | None = None, timeout: float = 20.0) -> list[dict[str, Any]]:
        """A test alert through the daemon's real path; one result per sink."""
        saved = self.timeout
        self.timeout = max(saved, timeout + 10.0)  # the daemon waits up to ``timeout`` for deliveries
        try:
            return self._json("POST", "/alerts/test", json={"sink": sink, "timeout": timeout})["results"]
        finally:
            self.timeout = saved
    def act(self, action: str, target: str, **params: Any) -> dict[str, Any]:
        """restart, unload (model=...), pause (seconds=...), resume: through the daemon's policy."""
        body = {k: v for k, v in params.items() if v is not None}
        return self._json("POST", f"/targets/{target}/{action}", json=body)

    def wedge(self, seconds: float) -> dict[str, Any]:
        return self._json("POST", "/debug/wedge", json={"seconds": seconds})

    # --- plumbing -----------------------------------------------------------------------------

    def _exchange(self, method: str, url: str, body: bytes | None = None) -> _Answer:
        """Send one request; the answer's status is read, its body is the caller's to read.
        Every way of not reaching the daemon raises DaemonUnreachable."""
        self._check_socket()
        headers = [("Host", "watchdog"), ("Connection", "close")]
        if body is not None:
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        sock = None
        try:
            sock = _connect(str(self.path), self.timeout)
            h = h11.Connection(h11.CLIENT)
            data = h.send(h11.Request(method=method, target=url, headers=headers))
            if body:
                data += h.send(h11.Data(data=body))
            sock.sendall(data + h.send(h11.EndOfMessage()))
            answer = _Answer(self, sock, h)
            answer.start()
        except (OSError, h11.ProtocolError) as exc:
            if sock is not None:
                sock.close()
            raise self._unreachable(exc) from None
        return answer

    def _json(self, method: str, url: str, params: dict[str, Any] | None = None, json: Any = None) -> Any:
        """A request with an optional JSON body (``json``, as httpx names it), answered with JSON."""
        if params:
            from urllib.parse import urlencode

            url += "?" + urlencode(params)
        body = None if json is None else _jsonlib.dumps(json).encode()
        with self._exchange(method, url, body) as answer:
            status, data = answer.status, answer.read()
        if status >= 400:
            raise ControlError(status, _message(status, data))
        try:
            return _jsonlib.loads(data)
        except (ValueError, RecursionError):
            raise ControlError(status, "the daemon answered something that is not JSON") from None

    def _check_socket(self) -> None:
        try:
            mode = os.stat(self.path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise DaemonUnreachable(
                f"no daemon: {self.path} does not exist (is inference-watchdog running? "
                "`systemctl status inference-watchdog`)"
            ) from None
        except OSError as exc:
            raise self._unreachable(exc) from None
        if not stat.S_ISSOCK(mode):
            raise DaemonUnreachable(f"{self.path} is not a socket (wrong control_socket?)")
        if not os.access(self.path, os.R_OK | os.W_OK):
            raise DaemonUnreachable(_permission(self.path))

    def _unreachable(self, exc: BaseException) -> DaemonUnreachable:
        if isinstance(exc, TimeoutError):
            return DaemonUnreachable(
                f"the daemon did not answer on {self.path} within {self.timeout:g} s: it may be wedged "
                "(systemd restarts it when WatchdogSec is set)"
            )
        cause = _os_error(exc)
        if cause is not None and cause.errno == errno.ECONNREFUSED:
            return DaemonUnreachable(f"nobody listens on {self.path}: a stale socket from a daemon that stopped")
        if cause is not None and cause.errno in (errno.EACCES, errno.EPERM):
            return DaemonUnreachable(_permission(self.path))
        if cause is not None and cause.errno == errno.ENOENT:
            return DaemonUnreachable(f"no daemon: {self.path} does not exist")
        if cause is not None and cause.errno == errno.EAGAIN:
            return DaemonUnreachable(f"the daemon on {self.path} is too busy to accept a connection; try again")
        return DaemonUnreachable(f"cannot talk to the daemon on {self.path}: {type(exc).__name__}: {exc}")


class _Answer:
    """The daemon's answer to one request: its status, then its body read in chunks.
    A context manager: the connection is closed when done (the daemon serves one request per
    connection)."""

    def __init__(self, client: ControlClient, sock: socket.socket, h: h11.Connection) -> None:
        self._client, self._sock, self._h = client, sock, h
        self.status = 0

    def start(self) -> None:
        event = self._event()
        while isinstance(event, h11.InformationalResponse):
            event = self._event()
        if not isinstance(event, h11.Response):
            raise h11.RemoteProtocolError(f"expected an answer, got {type(event).__name__}")
        self.status = event.status_code

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives; DaemonUnreachable if the connection fails or ends early."""
        try:
            while True:
                event = self._event()
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return
        except (OSError, h11.ProtocolError) as exc:
            raise self._client._unreachable(exc) from None

    def read(self, limit: int | None = None) -> bytes:
        """The body (its first ``limit`` bytes, if given)."""
        data = bytearray()
        for chunk in self.chunks():
            data += chunk
            if limit is not None and len(data) >= limit:
                return bytes(data[:limit])
        return bytes(data)

    def _event(self) -> Any:
        while True:
            event = self._h.next_event()
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.ConnectionClosed):
                    raise h11.RemoteProtocolError("the daemon closed the connection before answering in full")
                return event
            self._h.receive_data(self._sock.recv(256 * 1024))  # b"": the daemon closed its end

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def _connect(path: str, timeout: float) -> socket.socket:
    """A connected unix socket, retrying while the daemon's backlog is full (EAGAIN on a unix
    socket) until the timeout: a crowd of other clients delays ``status``, it does not fail it."""
    deadline = time.monotonic() + (timeout or 10.0)
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except BlockingIOError:
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
            continue
        except BaseException:
            sock.close()
            raise
        return sock


def _os_error(exc: BaseException) -> OSError | None:
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _permission(path: str) -> str:
    return (
        f"permission denied on {path}: run as root or as a member of the socket's group "
        "([watchdog] control_group)"
    )


def _message(status: int, body: bytes) -> str:
    try:
        data = _jsonlib.loads(body)
    except (ValueError, RecursionError):
        return body.decode("utf-8", "replace").strip()[:200] or f"HTTP {status}"
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    return f"HTTP {status}"


def resolve_socket_path(option: str | None, config_path: str, config_explicit: bool, validate: bool = True) -> str:
    """Where the daemon's socket is: ``--socket``, else ``$INFERENCE_WATCHDOG_SOCKET``, else the config's
    ``control_socket``, else the default.

    A config named explicitly (``--config``) must be readable TOML with a usable
    ``control_socket`` (ConfigError otherwise) and, with ``validate``, valid as a
    whole. ``status`` passes ``validate=False``: it reads that one key without the
    pydantic models (issue 15), and must reach a daemon still running on an older
    config while a broken edit waits. The default config is used when readable and
    skipped otherwise: ``status`` must work for an operator who may not read
    /etc/inference-watchdog.
    """
    from watchdog.config.read import ConfigError, control_socket_in

    if option:
        return option
    if os.environ.get(SOCKET_ENV):
        return os.environ[SOCKET_ENV]
    if config_explicit and validate:
        from watchdog.config import load_config

        return load_config(config_path).watchdog.control_socket
    try:
        return control_socket_in(config_path)
    except ConfigError:
        if config_explicit:
            raise
        return DEFAULT_CONTROL_SOCKET


def socket_from_config(option: str | None, config_explicit: bool) -> bool:
    """Whether :func:`resolve_socket_path` takes the socket from a config named with ``--config``."""
    return not option and not os.environ.get(SOCKET_ENV) and config_explicit
