"""The flight recorder: the last minutes of observations, in memory, ready to be written as a trace.

Every record the probes emit goes through :meth:`FlightRecorder.add`. It is
kept in a ring buffer per stream — one per (target, record type) and per
(GPU, record type) — bounded by time (``window_s`` behind the newest record)
and by count (``max_per_stream``). Separate streams mean a flood of one kind
(log lines) can never push out another (server polls). Time is the records'
own ``t``, so the recorder works the same under the daemon's clock, a test's
fake clock, or a replayed trace.

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


def stream_key(record: Record) -> StreamKey:
    if isinstance(record, (GpuSample, Xid)):
        return (f"gpu:{record.index}", record.type)
    if isinstance(record, UnknownRecord):
        return ("other", record.type)
    return (f"target:{record.target}", record.type)


class FlightRecorder:
    """Ring buffers of recent records. Thread-safe; ``add`` is cheap (an append, a few pops)."""

    def __init__(self, window_s: float = 900.0, max_per_stream: int = 20_000) -> None:
        if window_s <= 0 or max_per_stream <= 0:
            raise ValueError("window_s and max_per_stream must be positive")
        self.window_s = window_s
        self.max_per_stream = max_per_stream
        self._streams: dict[StreamKey, deque[Record]] = {}
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
        with self._lock:
            stream = self._streams.get(key)
            if stream is None:
                stream = self._streams[key] = deque(maxlen=self.max_per_stream)
            stream.append(record)
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
                stream.popleft()
            if not stream:
                del self._streams[key]

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
