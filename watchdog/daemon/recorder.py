"""The flight recorder: the last minutes of observations, in memory, ready to be written as a trace.

Every record the probes emit goes through :meth:`FlightRecorder.add`. It is
kept in a ring buffer per stream — one per (target, record type) and per
(GPU, record type) — bounded by time (``window_s`` behind the newest record)
and by count (``max_per_stream``). Separate streams mean a flood of one kind
(log lines) can never push out another (server polls). Time is the records'
own ``t``, so the recorder works the same under the daemon's clock, a test's
fake clock, or a replayed trace.

Memory is bounded in bytes too (issue 11: an ``/api/ps`` of 38,000 models grew
the daemon by 650 MB): each record's size is estimated cheaply
(:func:`approx_size`), each owner (a target, a GPU) may hold ``max_owner_bytes``
and the whole recorder ``max_bytes``; past a budget, the oldest records of the
largest stream go first, so one noisy stream loses its own history, not the
others'.

:meth:`FlightRecorder.write` writes a window as a trace-v1 file with a header
made from the config and the GPUs seen, so an incident comes with its
evidence and can be replayed.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from watchdog.trace.io import write_trace
from watchdog.trace.records import (
    GpuDevice,
    GpuSample,
    Header,
    Record,
    UnknownRecord,
    Xid,
)

StreamKey = tuple[str, str]  # ("target:NAME" or "gpu:N" or "other", record type)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_OWNER_BYTES = 8 * 1024 * 1024
_BASE_SIZE = 200
_PER_ITEM = 120


def approx_size(record: Record) -> int:
    """About the bytes a record holds in memory: cheap (no serialising), and an upper-ish bound
    for the parts that can be large (log lines, model lists, GPU processes, extras)."""
    size = _BASE_SIZE
    line = getattr(record, "line", None)
    if isinstance(line, str):
        size += len(line)
    for name in ("models", "procs"):
        items = getattr(record, name, None)
        if items:
            size += _PER_ITEM * len(items)
    extra = getattr(record, "extra", None)
    if extra:
        size += _PER_ITEM * len(extra)
    error = getattr(record, "error", None)
    if isinstance(error, str):
        size += len(error)
    return size


def stream_key(record: Record) -> StreamKey:
    if isinstance(record, (GpuSample, Xid)):
        return (f"gpu:{record.index}", record.type)
    if isinstance(record, UnknownRecord):
        return ("other", record.type)
    return (f"target:{record.target}", record.type)


class FlightRecorder:
    """Ring buffers of recent records. Thread-safe; ``add`` is cheap (an append, a few pops)."""

    def __init__(
        self,
        window_s: float = 900.0,
        max_per_stream: int = 20_000,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_owner_bytes: int = DEFAULT_MAX_OWNER_BYTES,
    ) -> None:
        if window_s <= 0 or max_per_stream <= 0 or max_bytes <= 0 or max_owner_bytes <= 0:
            raise ValueError("window_s, max_per_stream and the byte budgets must be positive")
        self.window_s = window_s
        self.max_per_stream = max_per_stream
        self.max_bytes = max_bytes
        self.max_owner_bytes = min(max_owner_bytes, max_bytes)
        self._streams: dict[StreamKey, deque[Record]] = {}
        self._stream_bytes: dict[StreamKey, int] = {}
        self._owner_bytes: dict[str, int] = {}
        self.bytes = 0
        self.dropped_for_budget = 0
        self._newest: float | None = None
        self._evicted_at = float("-inf")
        self._lock = threading.Lock()
        self.gpus: dict[int, GpuDevice] = {}

    def __call__(self, record: Record) -> None:
        self.add(record)

    def add(self, record: Record) -> None:
        """Keep a record (the probes' ``emit``)."""
        t = record.t
        key = stream_key(record)
        size = approx_size(record)
        with self._lock:
            stream = self._streams.get(key)
            if stream is None:
                stream = self._streams[key] = deque()
            stream.append(record)
            self._account(key, size)
            if len(stream) > self.max_per_stream:
                self._pop(key)
            owner = key[0]
            while self._owner_bytes.get(owner, 0) > self.max_owner_bytes and self._pop(self._largest(owner)):
                self.dropped_for_budget += 1
            while self.bytes > self.max_bytes and self._pop(self._largest(None)):
                self.dropped_for_budget += 1
            if t is not None and (self._newest is None or t > self._newest):
                self._newest = t
                # Evict at most once per second of record time: the window is exact to 1 s and
                # adding stays cheap however many streams there are.
                if t - self._evicted_at >= 1.0:
                    self._evicted_at = t
                    self._evict(t - self.window_s)

    def _evict(self, oldest: float) -> None:
        for key in list(self._streams):
            stream = self._streams[key]
            while stream and (stream[0].t is None or stream[0].t < oldest):
                self._pop(key)
            if not stream:
                self._forget(key)

    def _account(self, key: StreamKey, size: int) -> None:
        self._stream_bytes[key] = self._stream_bytes.get(key, 0) + size
        self._owner_bytes[key[0]] = self._owner_bytes.get(key[0], 0) + size
        self.bytes += size

    def _pop(self, key: StreamKey | None) -> bool:
        """Drop the oldest record of a stream; False when there is nothing to drop."""
        stream = self._streams.get(key) if key is not None else None
        if not stream:
            return False
        assert key is not None
        self._account(key, -approx_size(stream.popleft()))
        if not stream:
            self._forget(key)
        return True

    def _forget(self, key: StreamKey) -> None:
        self._streams.pop(key, None)
        left = self._stream_bytes.pop(key, 0)
        if left:  # rounding cannot happen (sizes are recomputed exactly), but never go negative
            self._owner_bytes[key[0]] = self._owner_bytes.get(key[0], 0) - left
            self.bytes -= left
        if self._owner_bytes.get(key[0], 1) <= 0:
            self._owner_bytes.pop(key[0], None)

    def _largest(self, owner: str | None) -> StreamKey | None:
        """The stream holding the most bytes (of ``owner``, or of all)."""
        keys = [k for k in self._stream_bytes if owner is None or k[0] == owner]
        return max(keys, key=self._stream_bytes.__getitem__, default=None)

    def note_gpus(self, devices: Iterable[GpuDevice]) -> None:
        """Remember devices for headers (the GPU probe knows their names and sizes)."""
        with self._lock:
            for device in devices:
                self.gpus[device.index] = device

    @property
    def newest(self) -> float | None:
        return self._newest

    def __len__(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._streams.values())

    def _in_window(self, record: Record) -> bool:
        return self._newest is None or _t(record) >= self._newest - self.window_s

    def records(
        self,
        since: float | None = None,
        until: float | None = None,
        *,
        targets: Iterable[str] | None = None,
        gpus: Iterable[int] | None = None,
    ) -> list[Record]:
        """Records in time order, optionally for some targets and GPUs only.

        ``targets=None`` and ``gpus=None``: everything. Otherwise only the
        streams named (give both to get a target with its GPUs).
        """
        wanted: set[str] | None = None
        if targets is not None or gpus is not None:
            wanted = {f"target:{t}" for t in targets or ()} | {f"gpu:{g}" for g in gpus or ()}
        with self._lock:
            streams = [list(s) for (owner, _), s in self._streams.items() if wanted is None or owner in wanted]
        merged = heapq.merge(*(sorted(s, key=_t) for s in streams), key=_t)
        return [
            r for r in merged
            if self._in_window(r) and (since is None or _t(r) >= since) and (until is None or _t(r) <= until)
        ]

    def write(
        self,
        path: str | Path,
        header: Header,
        since: float | None = None,
        until: float | None = None,
        *,
        targets: Iterable[str] | None = None,
        gpus: Iterable[int] | None = None,
    ) -> int:
        """Write a window as a trace-v1 file (atomically); returns the number of records."""
        records = self.records(since, until, targets=targets, gpus=gpus)
        write_trace(path, header, records)
        return len(records)


def _t(record: Record) -> float:
    return record.t if record.t is not None else float("-inf")
