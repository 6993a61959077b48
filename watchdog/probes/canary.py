"""Canary prompts: a tiny streamed request that proves a server still generates.

Three parts, from pure to I/O:

- :class:`CanaryPlanner` decides *when* (pure, time from the probe clock): a
  canary is due every ``interval`` after the last proof of life (a canary that
  worked, or the server's own token counter rising between two polls), and
  ``confirm_interval`` after a failed one; never while another canary to the
  same server is in flight, never while the server says it is loading.
- :func:`send_canary` sends one and times it, with separate deadlines: connect,
  first token, stall between tokens (a stream that stops mid-way is
  ``stalled``), and the whole request. It stops reading (and closes the
  stream) once ``max_tokens`` tokens came, whether or not the server ends the
  stream: a server that streams without end is generating, not hung.
- :class:`CanaryProbe` puts them together for one target and emits ``Canary``
  records.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

from watchdog.config.model import CanarySettings
from watchdog.logs import LogOnce
from watchdog.probes.adapters import (
    CanaryChoice,
    CanaryRequest,
    ServerAdapter,
    StreamFormatError,
)
from watchdog.probes.base import Clock, Emit
from watchdog.probes.http import (
    BAD_RESPONSE,
    HTTP_5XX,
    REFUSED,
    TIMEOUT,
    CappedDecoder,
    HttpFailure,
    classify,
    iter_decoded,
    read_capped,
)
from watchdog.probes.lines import LineSplitter
from watchdog.trace.records import Canary, ServerPoll

STALLED = "stalled"
MAX_STREAM_BYTES = 1024 * 1024
MAX_STREAM_LINE = 256 * 1024
MAX_TOKENS_TAIL_S = 2.0
"""After ``max_tokens`` tokens, how long the end of the answer (usage, timings, [DONE]) may take
before reading stops anyway; a token beyond ``max_tokens`` stops it at once."""
JITTER = 0.1
"""Each routine canary waits up to this share of ``interval`` longer, drawn anew every
time, so the canaries of many targets do not all go out in the same second (issue 15).
Re-checks after a failure are not delayed."""
REJECTED_FOR_S = 600.0
"""A model whose canary the server rejects (HTTP 4xx: an embedding model, a typo in
canary.models) gets no canary for this long, so one bad model does not flood the trace."""


# --- when --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Decision:
    send: bool
    reason: str
    confirm: bool = False  # a re-check after a failed canary


@dataclass
class CanaryPlanner:
    """When the next canary to one server is due. Pure: the caller passes the time."""

    interval: float
    confirm_interval: float
    enabled: bool = True
    in_flight: bool = False
    last_end: float | None = None
    last_ok: bool = True
    failures: int = 0
    last_progress: float | None = None
    server_state: str | None = None
    extra_wait: float = 0.0  # jitter added to ``interval`` (set per canary by the probe)
    _last_counter: float | None = field(default=None, repr=False)
    _own_tokens: int = field(default=0, repr=False)

    def note_poll(self, poll: ServerPoll) -> None:
        """A server poll: remember its state, and whether its token counter rose by more than
        our own canaries account for (their tokens are not someone else's traffic)."""
        self.server_state = poll.state
        counter = poll.gen_tokens_total
        if counter is None:
            return
        if self._last_counter is not None and counter - self._last_counter > self._own_tokens:
            self.last_progress = poll.t
        self._last_counter = counter
        self._own_tokens = 0

    def note_result(self, canary: Canary) -> None:
        self.last_end = canary.t
        self.last_ok = canary.ok
        self.failures = 0 if canary.ok else self.failures + 1
        self._own_tokens += canary.tokens or 0

    def decide(self, now: float) -> Decision:
        if not self.enabled:
            return Decision(False, "canaries are disabled")
        if self.in_flight:
            return Decision(False, "a canary to this server is still in flight")
        if self.server_state == "loading":
            return Decision(False, "the server is loading")
        if self.last_end is None:
            return Decision(True, "first canary")
        progress_since = self.last_progress is not None and self.last_progress > self.last_end
        if not self.last_ok and not progress_since:
            if now - self.last_end >= self.confirm_interval:
                return Decision(True, "re-checking after a failed canary", confirm=True)
            return Decision(False, "waiting to re-check a failed canary")
        proof = max(self.last_end, self.last_progress or self.last_end)
        if now - proof >= self.interval + self.extra_wait:
            return Decision(True, "due")
        if progress_since:
            return Decision(False, "real traffic shows progress")
        return Decision(False, "not due yet")


# --- how ---------------------------------------------------------------------------------------

@dataclass(slots=True)
class Deadlines:
    connect: float
    first_token: float
    stall: float
    total: float

    @classmethod
    def from_settings(cls, settings: CanarySettings) -> Deadlines:
        return cls(settings.connect_timeout, settings.first_token_timeout, settings.stall_timeout, settings.timeout)


@dataclass(slots=True)
class _Progress:
    t0: float
    tokens: int = 0
    usage: int | None = None
    first: float | None = None
    last: float | None = None
    done: bool = False
    server_rate: float | None = None
    max_tokens: int | None = None
    cut: str | None = None  # why reading stopped before the server ended the answer
    reached: float | None = None  # when max_tokens tokens had come


class _Fail(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


async def send_canary(
    adapter: ServerAdapter,
    request: CanaryRequest,
    deadlines: Deadlines,
    clock: Clock,
    *,
    model: str | None,
    monotonic: Clock = time.monotonic,
    max_tokens: int | None = None,
) -> Canary:
    """Send one canary request and describe how it went. Never raises.

    ``error``: None, ``timeout`` (no connection, or no first token, or the whole
    request too slow; ``extra.phase`` says which), ``stalled`` (tokens came, then
    stopped), ``refused``, ``http_5xx``, ``bad_response`` (not the stream this
    kind of server sends, or cut short), ``http_4xx: ...`` or a server's own
    error text.

    With ``max_tokens``, reading stops once that many tokens came (``extra.cut``
    says so): a stream that does not end by itself is still a working server.
    A stream larger than the byte cap after tokens came is cut there, too.
    """
    started = clock()
    progress = _Progress(t0=monotonic(), max_tokens=max_tokens)
    error: str | None = None
    extra: dict[str, Any] = {}
    try:
        await _stream(adapter, request, deadlines, progress, monotonic)
    except _Fail as fail:
        error, extra = fail.error, dict(fail.extra)
        if error == BAD_RESPONSE and fail.extra.get("oversize") and progress.tokens > 0:
            # Tokens came, then more bytes than we read: it generates; stop reading there.
            error, extra = None, {"cut": "byte_cap"}
        extra.pop("oversize", None)
    except HttpFailure as failure:  # e.g. the API key reference cannot be read
        error, extra = failure.code, {"detail": failure.detail} if failure.detail else {}
    except Exception as exc:  # noqa: BLE001 - a probe never raises into the loop
        error, extra = "error", {"detail": type(exc).__name__}
    if error is None and progress.cut is not None:
        extra["cut"] = progress.cut
    tokens = progress.usage if progress.usage is not None else progress.tokens
    ttft = None if progress.first is None else round(progress.first - progress.t0, 4)
    rate = None
    if progress.server_rate is not None and tokens >= 2:
        rate = round(progress.server_rate, 3)
    elif progress.first is not None and progress.last is not None and tokens >= 2:
        span = progress.last - progress.first
        if span > 0:
            rate = round((tokens - 1) / span, 3)
    return Canary(
        t=clock(),
        target=adapter.name,
        ok=error is None,
        model=model,
        started=round(started, 3),
        error=error,
        ttft_s=ttft,
        tokens=tokens,
        tokens_per_s=rate,
        extra=extra,
    )


async def _stream(
    adapter: ServerAdapter,
    request: CanaryRequest,
    deadlines: Deadlines,
    progress: _Progress,
    monotonic: Clock,
) -> None:
    loop = asyncio.get_running_loop()
    # Deadlines are kept on the loop's clock so asyncio.timeout_at can enforce them.
    offset = loop.time() - monotonic()
    total_at = progress.t0 + deadlines.total
    first_at = progress.t0 + deadlines.first_token

    def expired(phase: str) -> _Fail:
        if phase == STALLED:
            return _Fail(STALLED, phase="stream", after_tokens=progress.tokens)
        return _Fail(TIMEOUT, phase=phase)

    async with adapter.canary_session(connect_timeout=deadlines.connect) as client:
        http_request = client.build_request(request.method, request.path, json=request.body)
        phase = "first_token"
        try:
            async with asyncio.timeout_at(min(first_at, total_at) + offset):
                response = await client.send(http_request, stream=True)
        except TimeoutError:
            raise expired("first_token" if first_at <= total_at else "total") from None
        except Exception as exc:  # noqa: BLE001
            failure = classify(exc)
            if failure.code == TIMEOUT:
                raise _Fail(TIMEOUT, phase="connect") from None
            raise _Fail(failure.code, **({"detail": failure.detail} if failure.detail else {})) from None
        try:
            if response.status_code >= 300:
                await _fail_status(response, min(total_at, monotonic() + 2.0) + offset)
            splitter = LineSplitter(MAX_STREAM_LINE)
            decoder = CappedDecoder(response.headers.get("content-encoding", ""), MAX_STREAM_BYTES)
            chunks = response.aiter_raw().__aiter__()
            while not progress.done:
                if progress.first is None:
                    deadline, phase = min(first_at, total_at), "first_token" if first_at <= total_at else "total"
                else:
                    stall_at = (progress.last or progress.first) + deadlines.stall
                    deadline, phase = min(stall_at, total_at), STALLED if stall_at <= total_at else "total"
                    if progress.reached is not None and progress.reached + MAX_TOKENS_TAIL_S < deadline:
                        deadline, phase = progress.reached + MAX_TOKENS_TAIL_S, "tail"
                try:
                    async with asyncio.timeout_at(deadline + offset):
                        chunk = await chunks.__anext__()
                except TimeoutError:
                    if phase == "tail":
                        progress.done, progress.cut = True, "max_tokens"  # all asked for came; the end did not
                        return
                    raise expired(phase) from None
                except StopAsyncIteration:
                    for line in splitter.flush():
                        _take_line(adapter, request, line, progress, monotonic)
                    if not progress.done:
                        raise _Fail(BAD_RESPONSE, detail="the stream ended before the answer did") from None
                    return
                except Exception as exc:  # noqa: BLE001 - a cut connection, a protocol error
                    failure = classify(exc)
                    raise _Fail(
                        failure.code if failure.code != REFUSED else BAD_RESPONSE,
                        detail=failure.detail or "the stream broke off",
                    ) from None
                try:
                    for piece in decoder.feed(chunk):
                        for line in splitter.feed(piece):
                            _take_line(adapter, request, line, progress, monotonic)
                            if progress.done:
                                break
                        if progress.done:
                            break
                except HttpFailure as failure:
                    raise _Fail(BAD_RESPONSE, detail=f"stream larger than {MAX_STREAM_BYTES} bytes"
                                if failure.detail.startswith("body larger") else failure.detail,
                                oversize=failure.detail.startswith("body larger")) from None
        finally:
            await response.aclose()


def _take_line(
    adapter: ServerAdapter, request: CanaryRequest, line: str, progress: _Progress, monotonic: Clock
) -> None:
    try:
        step = adapter.parse_stream_line(line, request.stream_format)
    except StreamFormatError as exc:
        raise _Fail(BAD_RESPONSE, detail=str(exc)) from None
    if step is None:
        return
    if step.error is not None:
        raise _Fail(f"server error: {step.error}")
    if step.tokens:
        now = monotonic()
        if progress.first is None:
            progress.first = now
        progress.last = now
        progress.tokens += step.tokens
        if progress.max_tokens is not None and not step.done:
            if progress.tokens > progress.max_tokens:
                # More than asked for: a server that does not stop. Enough: stop reading (the
                # stream is closed on the way out).
                progress.done = True
                progress.cut = "max_tokens"
            elif progress.tokens == progress.max_tokens and progress.reached is None:
                progress.reached = now  # the end of the answer (usage, timings) should follow
    if step.usage_tokens is not None:
        progress.usage = step.usage_tokens
    if step.server_tokens_per_s is not None:
        progress.server_rate = step.server_tokens_per_s
    if step.done:
        progress.done = True


async def _fail_status(response: Any, deadline_at: float) -> None:
    status = response.status_code
    body = b""
    try:
        async with asyncio.timeout_at(deadline_at):
            body = await read_capped(iter_decoded(response, 4096), 4096)
    except Exception:  # noqa: BLE001 - the status says enough
        pass
    detail = " ".join(body[:200].decode("utf-8", "replace").split())
    if status >= 500:
        raise _Fail(HTTP_5XX, status=status, **({"detail": detail} if detail else {}))
    raise _Fail(f"http_{status}" + (f": {detail[:100]}" if detail else ""), status=status)


#: HTTP statuses that say "this request (route, model, body) is wrong": try the next form,
#: then leave the model alone for a while. 401/403 (a key), 408 and 429 (load) are failures
#: like any other and must not silence the canaries, which may be the only hang signal.
REJECTING_STATUSES = frozenset({400, 404, 405, 415, 422})


def _rejects_the_request(canary: Canary) -> bool:
    return not canary.ok and canary.extra.get("status") in REJECTING_STATUSES


# --- for one target ------------------------------------------------------------------------------

class CanaryProbe:
    """Canaries for one target: decides, sends (one at a time), emits ``Canary`` records.

    The daemon calls :meth:`note_poll` with every ``ServerPoll`` of the target and
    :meth:`round` as often as it likes (every second is fine): ``round`` sends
    only when a canary is due, and returns at once when one is already in flight.
    """

    def __init__(
        self,
        adapter: ServerAdapter,
        settings: CanarySettings,
        clock: Clock,
        emit: Emit,
        *,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.adapter = adapter
        self.settings = settings
        self.clock = clock
        self.emit = emit
        self.monotonic = monotonic
        self.planner = CanaryPlanner(settings.interval, settings.confirm_interval, enabled=settings.enabled)
        self.last_poll: ServerPoll | None = None
        self.last: Canary | None = None
        self.last_skip: str = ""
        self._turn = 0
        self._rng = random.Random()
        self._request_choice: dict[str | None, int] = {}
        self._rejected_until: dict[str | None, float] = {}
        self._log = LogOnce(f"canary.{adapter.name}")

    @property
    def name(self) -> str:
        return self.adapter.name

    @property
    def in_flight(self) -> bool:
        return self.planner.in_flight

    def note_poll(self, poll: ServerPoll) -> None:
        self.last_poll = poll
        self.planner.note_poll(poll)

    def decide(self) -> Decision:
        return self.planner.decide(self.clock())

    async def round(self, *, force: bool = False) -> Canary | None:
        """Send a canary if one is due (or ``force``), emit and return it; else None.

        Never waits behind another canary to the same server: if one is in
        flight, returns None at once, even with ``force``.
        """
        return await self.send(self.decide(), force=force)

    async def send(self, decision: Decision, *, force: bool = False) -> Canary | None:
        """Carry out a decision made by :meth:`decide` (made once: the daemon's tick decides,
        then sends). Returns None at once if the decision says no (unless ``force``) or a
        canary is already in flight."""
        now = self.clock()
        if self.planner.in_flight or (not decision.send and not force):
            self.last_skip = decision.reason
            return None
        choice, why = self._choose(now)
        if choice is None:
            self.last_skip = why
            return None
        self.planner.in_flight = True
        try:
            if not await self.adapter.still_loaded(choice.model):
                # Unloaded since the poll it was chosen from: a canary now would load it again.
                self.last_skip = f"{choice.model} was unloaded since the last poll"
                return None
            canary = await self._send(choice)
        finally:
            self.planner.in_flight = False
        self.planner.note_result(canary)
        self.planner.extra_wait = self._rng.uniform(0.0, JITTER * self.settings.interval)
        self.last = canary
        self.last_skip = ""
        self.emit(canary)
        return canary

    def _choose(self, now: float) -> tuple[CanaryChoice | None, str]:
        choices, why = self.adapter.canary_choices(self.last_poll, now, self.settings.models)
        usable = [c for c in choices if self._rejected_until.get(c.model, -1.0) <= now]
        if not usable:
            if choices:
                return None, "the server rejected canaries to " + ", ".join(str(c.model) for c in choices)
            return None, why or "no model to send a canary to"
        if self.last is not None and not self.last.ok:
            # Confirm on the model that failed, if it is still a choice.
            for choice in usable:
                if choice.model == self.last.model:
                    return choice, ""
        choice = usable[self._turn % len(usable)]
        self._turn += 1
        return choice, ""

    async def _send(self, choice: CanaryChoice) -> Canary:
        requests = self.adapter.canary_requests(choice, self.settings.prompt, self.settings.max_tokens)
        deadlines = Deadlines.from_settings(self.settings)
        start = self._request_choice.get(choice.model, 0)
        canary: Canary | None = None
        for index in range(start, len(requests)):
            canary = await send_canary(
                self.adapter, requests[index], deadlines, self.clock, model=choice.model, monotonic=self.monotonic,
                max_tokens=self.settings.max_tokens,
            )
            if not _rejects_the_request(canary):
                self._request_choice[choice.model] = index
                break
        assert canary is not None
        if _rejects_the_request(canary):
            self._rejected_until[choice.model] = canary.t + REJECTED_FOR_S
            self._log.problem(
                f"rejected:{choice.model}",
                f"{self.name}: the server rejects canaries to model {choice.model!r} ({canary.error}); "
                f"no canary to it for {REJECTED_FOR_S:.0f}s",
            )
        return canary
