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

Records are kept packed (issue 15): the record's time as 8 bytes, then its
other fields as one ``marshal`` string (C, exact: floats bit for bit, int,
bool, list, tuple and dict kept apart). A GPU sample holds about 130 bytes
so instead of about 450 as objects (the record, its ``extra`` dict, its
``procs`` list and their objects), and a full 15-minute window at 8 GPUs and
4 targets about a third of the memory. :meth:`FlightRecorder.records` unpacks
them into equal, new records. A record that cannot be packed exactly (a value
of another type in ``extra``, a time that is not a float) is kept as it is.

:meth:`FlightRecorder.write` writes a window as a trace-v1 file with a header
made from the config and the GPUs seen, so an incident comes with its
evidence and can be replayed.
"""

from __future__ import annotations

import dataclasses
import heapq
import marshal
import struct
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from watchdog.trace.io import write_trace
from watchdog.trace.records import (
    Canary,
    Event,
    GpuDevice,
    GpuProc,
    GpuSample,
    Header,
    LoadedModel,
    LogLine,
    ProcessSample,
    Record,
    ServerPoll,
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


# --- packed records ------------------------------------------------------------------------

_PACKED_BASE = 64  # a bytes object's header and its place in the deque
_T = struct.Struct("<d")
_PACKED_CLASSES: tuple[type, ...] = (GpuSample, Xid, Canary, ServerPoll, ProcessSample, LogLine, Event)
_CODES = {cls: code for code, cls in enumerate(_PACKED_CLASSES)}
_FIELDS = tuple(tuple(f.name for f in dataclasses.fields(cls))[1:] for cls in _PACKED_CLASSES)  # all but t
assert all(dataclasses.fields(cls)[0].name == "t" for cls in _PACKED_CLASSES)
_PROC_FIELDS = tuple(f.name for f in dataclasses.fields(GpuProc))
_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(LoadedModel))
_NESTED = {"procs": (GpuProc, _PROC_FIELDS), "models": (LoadedModel, _MODEL_FIELDS)}

_NESTED_AT = tuple(tuple((at, _NESTED[name][0]) for at, name in enumerate(fields) if name in _NESTED)
                   for fields in _FIELDS)  # per class: where its lists of GpuProc / LoadedModel are
Entry = Any  # bytes (a packed record) or the record itself


def pack(record: Record) -> bytes | None:
    """The record as bytes, or None when it cannot be packed exactly (then it is kept as is)."""
    code = _CODES.get(type(record))
    t = record.t
    if code is None or type(t) is not float:
        return None
    values: list[Any] = [code]
    for name in _FIELDS[code]:
        value = getattr(record, name)
        nested = _NESTED.get(name)
        if nested is not None:
            cls, fields = nested
            if type(value) is not list or any(type(item) is not cls for item in value):
                return None
            value = tuple(tuple(getattr(item, f) for f in fields) for item in value)
        values.append(value)
    try:
        return _T.pack(t) + marshal.dumps(tuple(values))
    except ValueError:  # a value marshal cannot write exactly (an object in ``extra``)
        return None


def unpack(entry: Entry) -> Record:
    """The record an entry holds (a new, equal one when it was packed)."""
    if type(entry) is not bytes:
        return entry
    code, *values = marshal.loads(memoryview(entry)[_T.size:])
    for at, cls in _NESTED_AT[code]:
        values[at] = [cls(*item) for item in values[at]]
    return _PACKED_CLASSES[code](_T.unpack_from(entry)[0], *values)


def _entry_t(entry: Entry) -> float | None:
    return _T.unpack_from(entry)[0] if type(entry) is bytes else entry.t


def _entry_size(entry: Entry) -> int:
    """The bytes an entry holds: exact for a packed record, :func:`approx_size` for the others."""
    return _PACKED_BASE + len(entry) if type(entry) is bytes else approx_size(entry)


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
        self._streams: dict[StreamKey, deque[Entry]] = {}
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
        packed = pack(record)
        entry = record if packed is None else packed
        size = _entry_size(entry)
        with self._lock:
            stream = self._streams.get(key)
            if stream is None:
                stream = self._streams[key] = deque()
            stream.append(entry)
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
            while stream:
                t = _entry_t(stream[0])
                if t is not None and t >= oldest:
                    break
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
        self._account(key, -_entry_size(stream.popleft()))
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
            newest = self._newest
        low = newest - self.window_s if newest is not None else None
        if since is not None:
            low = since if low is None else max(low, since)
        timed = []
        for stream in streams:  # the times first: only the records asked for are unpacked
            pairs = [(_t_or_low(_entry_t(e)), e) for e in stream]
            timed.append(sorted(
                (p for p in pairs if (low is None or p[0] >= low) and (until is None or p[0] <= until)),
                key=_first))
        return [unpack(entry) for _, entry in heapq.merge(*timed, key=_first)]

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


def _t_or_low(t: float | None) -> float:
    return t if t is not None else float("-inf")


def _first(pair: tuple[float, Entry]) -> float:
    return pair[0]
