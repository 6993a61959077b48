"""Real receivers for alert tests: an HTTP server standing in for Slack and webhooks, and an SMTP server.

Both listen on 127.0.0.1. :class:`Receiver` is an aiohttp server on the test's
own loop that answers from a script (``[(500, {}), (429, {"Retry-After": "1"})]``,
then 200 for the rest) and keeps every request it got. :func:`smtp_server` runs
aiosmtpd (its own thread) with STARTTLS from a throw-away CA and AUTH, and
keeps every message it accepted.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiohttp import web


def free_port() -> int:
    """A port nobody listens on (yet): connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    def json(self) -> Any:
        import json

        return json.loads(self.body)


@dataclass
class Receiver:
    port: int = 0
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    ok_body: str = "ok"

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if not self.port:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status, headers = self.script.pop(0) if self.script else (200, {})
        self.requests.append(Request(request.path, dict(request.headers), body, status, time.monotonic()))
        async with self._changed:
            self._changed.notify_all()
        text = self.ok_body if status < 300 else f"error {status}"
        return web.Response(status=status, text=text, headers=headers)

    @property
    def accepted(self) -> list[Request]:
        return [r for r in self.requests if r.status < 300]

    async def wait_accepted(self, count: int, timeout: float = 30.0) -> list[Request]:
        """Wait until ``count`` requests were answered 2xx (awaits the condition; no sleeping)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.accepted) >= count), timeout)
        return self.accepted

    async def wait_requests(self, count: int, timeout: float = 30.0) -> list[Request]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.requests) >= count), timeout)
        return self.requests


# --- SMTP --------------------------------------------------------------------------------------


@dataclass
class Mailbox:
    host: str
    port: int
    ca_file: str
    messages: list[EmailMessage] = field(default_factory=list)
    auth_failures: int = 0

    def parsed(self) -> list[EmailMessage]:
        return list(self.messages)


def make_ca(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the client trusts it through ``ca_file``)."""
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@contextmanager
def smtp_server(directory: Path, *, user: str = "watchdog", password: str = "s3cret-smtp-pass",
                port: int = 0, implicit_tls: bool = False) -> Iterator[Mailbox]:
    """aiosmtpd on 127.0.0.1 requiring STARTTLS (or, with ``implicit_tls``, TLS from the first byte)
    and AUTH (PLAIN/LOGIN) with ``user``/``password``."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    cert, key = make_ca(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    box = Mailbox("127.0.0.1", port or free_port(), str(cert))

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            box.messages.append(message_from_bytes(envelope.original_content, policy=policy.default))
            return "250 OK"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user and \
            auth_data.password.decode() == password
        if not ok:
            box.auth_failures += 1
        return AuthResult(success=ok, handled=False)

    if implicit_tls:
        # The whole session is TLS, but aiosmtpd only knows STARTTLS as "TLS": let it offer AUTH.
        controller = Controller(Handler(), hostname="127.0.0.1", port=box.port, ssl_context=context,
                                authenticator=authenticator, auth_required=True, auth_require_tls=False)
    else:
        controller = Controller(Handler(), hostname="127.0.0.1", port=box.port, tls_context=context,
                                require_starttls=True, authenticator=authenticator, auth_required=True)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


async def wait_until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll a cheap predicate (for state held in another thread, like aiosmtpd's mailbox)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
