"""HTTP to inference servers: bounded bodies, hard deadlines, failures named as the trace spec names them.

Every request has a total deadline (httpx's read timeout restarts with each
chunk, so a server trickling bytes would otherwise hold a probe forever) and a
cap on the bytes read (a server answering a huge body must not fill memory).
The cap applies to the *decoded* bytes: the body is read raw and inflated
here with a bound on the output (``zlib``'s ``max_length``), so a gzip bomb
(half a megabyte that inflates to half a gigabyte) costs no more memory than
the cap. Only gzip and deflate are offered to the server, since only those can
be inflated with such a bound.

Failures become :class:`HttpFailure` with a ``code`` the trace spec knows
(``refused``, ``timeout``, ``http_5xx``, ``bad_response``) and a short detail
that never contains headers, so an API key cannot leak into a record or a log.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import weakref
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from watchdog.config.secrets import SecretValue

DEFAULT_MAX_BODY = 4 * 1024 * 1024
LARGE_BODY = 256 * 1024
"""A body above this is large: status bodies of healthy servers are a few kilobytes."""
PIECE = 64 * 1024
"""Decoded bytes come in pieces of at most this size (a 64 KiB gzip chunk can inflate to 64 MiB)."""
LARGE_BODIES_AT_ONCE = 2
"""How many large bodies are read (and parsed) at once in the whole process. The per-request
cap bounds one body; this bounds them all, whatever the number of targets (45 hostile targets
each sending 4 MiB at the same second would otherwise hold hundreds of MiB). A request waiting
for its turn does so within its own deadline."""
ACCEPT_ENCODING = "gzip, deflate"
"""The encodings a body cap can be enforced on while inflating (not br, not zstd)."""
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


@functools.cache
def no_tls_context() -> ssl.SSLContext:
    """The context for a client of an ``http://`` server. httpx wants one either way; this one
    trusts no CA, so it could never complete a handshake (a client whose base URL is http, which
    follows no redirects, never attempts one). Loading the system's CA store for such clients
    cost the daemon 1.7 MB of memory (issue 15)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


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
    headers = {"User-Agent": "inference-watchdog", "Accept-Encoding": ACCEPT_ENCODING}
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
        verify=shared_ssl_context() if httpx.URL(base_url).scheme != "http" else no_tls_context(),
    )


_large_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
_urls: weakref.WeakKeyDictionary[httpx.AsyncClient, dict[str, httpx.URL]] = weakref.WeakKeyDictionary()
_MAX_URLS = 64


def client_url(client: httpx.AsyncClient, path: str) -> httpx.URL:
    """``path`` joined to the client's base URL, as httpx joins it, remembered per client: the
    polls ask for the same few paths forever, and parsing and joining them twice per request was
    a tenth of httpx's share of the daemon's CPU (issue 15)."""
    known = _urls.get(client)
    if known is None:
        known = _urls[client] = {}
    url = known.get(path)
    if url is None:
        url = client.build_request("GET", path).url
        if len(known) < _MAX_URLS:
            known[path] = url
    return url


class _LargeBodySlot:
    """One of the LARGE_BODIES_AT_ONCE turns, taken only once a body grows large."""

    def __init__(self) -> None:
        self._semaphore: asyncio.Semaphore | None = None

    async def take(self) -> None:
        if self._semaphore is not None:
            return
        loop = asyncio.get_running_loop()
        semaphore = _large_slots.get(loop)
        if semaphore is None:
            semaphore = _large_slots[loop] = asyncio.Semaphore(LARGE_BODIES_AT_ONCE)
        await semaphore.acquire()
        self._semaphore = semaphore

    def release(self) -> None:
        if self._semaphore is not None:
            self._semaphore.release()
            self._semaphore = None


async def fetch(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    deadline: float,
    max_bytes: int = DEFAULT_MAX_BODY,
    json_body: Any = None,
    ok_statuses: tuple[int, ...] = (),
    parse: Callable[[bytes], Any] | None = None,
) -> tuple[int, Any]:
    """One request with a total deadline and a body cap.

    Returns (status, body) for 2xx and for ``ok_statuses``; raises HttpFailure
    otherwise (5xx: http_5xx; 4xx: http_4xx; over the cap: bad_response). With
    ``parse``, the body is parsed while its large-body turn is held (parsing a large
    JSON body costs several times its size), and (status, parsed) is returned.
    """
    slot = _LargeBodySlot()
    failure: HttpFailure | None = None
    body = bytearray()
    chunk = b""
    try:
        async with asyncio.timeout(deadline):
            async with client.stream(method, client_url(client, path), json=json_body) as response:
                body = bytearray()
                async for chunk in iter_decoded(response, max_bytes):
                    body += chunk
                    if len(body) > LARGE_BODY:
                        await slot.take()
                status = response.status_code
            data = bytes(body)
            body = bytearray()
            ok = 200 <= status < 300 or status in ok_statuses
            if ok and parse is not None:
                return status, parse(data)
    except HttpFailure as exc:
        failure = HttpFailure(exc.code, exc.detail, exc.status)
    except Exception as exc:  # noqa: BLE001 - every transport failure becomes an observation
        failure = classify(exc)
        if failure is exc:
            failure = HttpFailure(exc.code, exc.detail, exc.status)  # type: ignore[attr-defined]
    finally:
        slot.release()
    if failure is not None:
        # A fresh exception, raised from here with the buffers dropped: the one caught carries a
        # traceback whose frames hold the body read so far (up to the cap), and an exception kept
        # for a while (asyncio.gather's results, a reference cycle) would keep that alive.
        body, chunk = bytearray(), b""  # noqa: F841 - dropped, not used
        raise failure
    if ok:
        return status, data
    raise status_failure(status, data)


class CappedDecoder:
    """Inflates a body chunk by chunk and refuses to produce more than ``max_bytes`` in all.

    ``zlib``'s ``max_length`` bounds each step's output, so a bomb is refused after
    ``max_bytes`` of output, not after it was inflated whole.
    """

    def __init__(self, content_encoding: str, max_bytes: int) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 1:
            raise HttpFailure(BAD_RESPONSE, "more than one content-encoding")
        self.coding = codings[0] if codings else ""
        if self.coding not in ("", "gzip", "x-gzip", "deflate"):
            raise HttpFailure(BAD_RESPONSE, f"content-encoding {self.coding[:20]!r} was not asked for")
        self.max_bytes = max_bytes
        self.produced = 0
        self._raw_deflate = False
        self._inflater = self._new_inflater()

    def _new_inflater(self) -> Any:
        if self.coding in ("gzip", "x-gzip"):
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self.coding == "deflate":
            return zlib.decompressobj(-zlib.MAX_WBITS if self._raw_deflate else zlib.MAX_WBITS)
        return None

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """The decoded bytes of a raw chunk, in pieces of at most PIECE bytes (so a reader that
        must wait for a large-body turn holds little): HttpFailure once over ``max_bytes``."""
        if self._inflater is None:
            yield self._count(chunk)
            return
        data, first = chunk, self.produced == 0
        while True:
            limit = min(PIECE, self.max_bytes - self.produced + 1)
            try:
                out = self._inflater.decompress(data, limit)
            except zlib.error:
                if self.coding == "deflate" and not self._raw_deflate and first and self.produced == 0:
                    # Some servers send raw deflate (no zlib header), as httpx also allows.
                    self._raw_deflate = True
                    self._inflater = self._new_inflater()
                    data = chunk
                    continue
                raise HttpFailure(BAD_RESPONSE, f"undecodable {self.coding} body") from None
            if out:
                yield self._count(out)
            data = self._inflater.unconsumed_tail
            if not data and len(out) < limit:
                return

    def _count(self, out: bytes) -> bytes:
        self.produced += len(out)
        if self.produced > self.max_bytes:
            raise HttpFailure(BAD_RESPONSE, f"body larger than {self.max_bytes} bytes")
        return out


async def iter_decoded(response: httpx.Response, max_bytes: int) -> AsyncIterator[bytes]:
    """The response body, decoded, in chunks; HttpFailure once more than ``max_bytes`` came out."""
    decoder = CappedDecoder(response.headers.get("content-encoding", ""), max_bytes)
    async for raw in response.aiter_raw():
        for out in decoder.feed(raw):
            yield out


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
    except RecursionError:
        raise HttpFailure(BAD_RESPONSE, f"{what}: JSON nested too deeply") from None
