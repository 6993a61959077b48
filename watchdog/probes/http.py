"""HTTP to inference servers: bounded bodies, hard deadlines, failures named as the trace spec names them.

Every request has a total deadline (httpx's read timeout restarts with each
chunk, so a server trickling bytes would otherwise hold a probe forever) and a
cap on the bytes read (a server answering a huge body must not fill memory).
Failures become :class:`HttpFailure` with a ``code`` the trace spec knows
(``refused``, ``timeout``, ``http_5xx``, ``bad_response``) and a short detail
that never contains headers, so an API key cannot leak into a record or a log.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx

from watchdog.config.secrets import SecretValue

DEFAULT_MAX_BODY = 4 * 1024 * 1024
REFUSED = "refused"
TIMEOUT = "timeout"
HTTP_5XX = "http_5xx"
BAD_RESPONSE = "bad_response"


class HttpFailure(Exception):
    """A request that gave no usable answer.

    ``code``: refused, timeout, http_5xx, bad_response, http_4xx or error.
    ``detail``: a short human text (no headers, no secrets).
    """

    def __init__(self, code: str, detail: str = "", status: int | None = None) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
        self.status = status

    @property
    def text(self) -> str:
        """What goes in a record's ``error`` field."""
        if self.code in (HTTP_5XX, "http_4xx") and self.status is not None:
            return f"http_{self.status}" + (f": {self.detail}" if self.detail else "")
        return f"{self.code}: {self.detail}" if self.detail else self.code


def classify(exc: BaseException) -> HttpFailure:
    """The failure a transport exception stands for."""
    if isinstance(exc, HttpFailure):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, httpx.TimeoutException)):
        return HttpFailure(TIMEOUT)
    if isinstance(exc, httpx.ConnectError):
        return HttpFailure(REFUSED, _connect_detail(exc))
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return HttpFailure(BAD_RESPONSE, _short(_root_message(exc)) or type(exc).__name__)
    if isinstance(exc, httpx.DecodingError):
        return HttpFailure(BAD_RESPONSE, "undecodable body")
    if isinstance(exc, httpx.HTTPError):
        return HttpFailure("error", type(exc).__name__)
    return HttpFailure("error", f"{type(exc).__name__}")


def _connect_detail(exc: BaseException) -> str:
    """Nothing for a plain refusal; the reason otherwise (no route, name not known...)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return ""
        if isinstance(seen, OSError) and seen.errno is not None:
            return _short(seen.strerror or str(seen))
        seen = seen.__cause__ or seen.__context__
    return _short(_root_message(exc))


def _root_message(exc: BaseException) -> str:
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    while not text and cause is not None:
        text, cause = str(cause), cause.__cause__ or cause.__context__
    return text


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def status_failure(status: int, body: bytes = b"") -> HttpFailure:
    """The failure for a non-2xx status, with a little of the body for the reader."""
    detail = _short(body[:200].decode("utf-8", "replace")) if body else ""
    code = HTTP_5XX if status >= 500 else "http_4xx"
    return HttpFailure(code, detail, status=status)


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every client: httpx builds a new one (loading the CA bundle, tens of
    milliseconds on the loop) for each client otherwise, and canaries make a client each."""
    return ssl.create_default_context()


def make_client(
    base_url: str,
    *,
    api_key: SecretValue | None = None,
    connect_timeout: float = 3.0,
    read_timeout: float | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A client for one server. Proxies from the environment are ignored on purpose:
    the watchdog must see the server itself, not a proxy's view of it."""
    headers = {"User-Agent": "inference-watchdog"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key.reveal()}"
    timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout)
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=timeout,
        transport=transport,
        trust_env=False,
        follow_redirects=False,
        verify=shared_ssl_context(),
    )


async def fetch(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    deadline: float,
    max_bytes: int = DEFAULT_MAX_BODY,
    json_body: Any = None,
    ok_statuses: tuple[int, ...] = (),
) -> tuple[int, bytes]:
    """One request with a total deadline and a body cap.

    Returns (status, body) for 2xx and for ``ok_statuses``; raises HttpFailure
    otherwise (5xx: http_5xx; 4xx: http_4xx; over the cap: bad_response).
    """
    try:
        async with asyncio.timeout(deadline):
            async with client.stream(method, path, json=json_body) as response:
                body = await read_capped(response.aiter_bytes(), max_bytes)
                status = response.status_code
    except HttpFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - every transport failure becomes an observation
        raise classify(exc) from None
    if 200 <= status < 300 or status in ok_statuses:
        return status, body
    raise status_failure(status, body)


async def read_capped(chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            raise HttpFailure(BAD_RESPONSE, f"body larger than {max_bytes} bytes")
    return bytes(body)


def parse_json(body: bytes, what: str) -> Any:
    """JSON from a body, or bad_response naming the endpoint."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HttpFailure(BAD_RESPONSE, f"{what}: not JSON") from None
