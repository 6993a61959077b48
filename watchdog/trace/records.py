"""The observation records of trace format v1 (see docs/trace-v1.md), and with them the schema.

Every probe emits these, the flight recorder stores them, the detectors and
``replay`` consume them. They are plain slotted dataclasses: cheap to build in
the sampling loop and to compare in tests. Unknown fields read from a file are
kept in ``extra`` so that reading and writing a trace loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

OMIT_NONE = {"omit_none": True}
"""Field metadata: the trace writer leaves the field out when it is None. The reader and the
writer (``trace/io.py``) take every record's fields, types, defaults and this mark from the
classes below: adding a field to a record is one line here."""

ServerState = Literal["ready", "loading", "down", "error"]
ProcessStatus = Literal["running", "sleeping", "stopped", "zombie", "gone"]
CanaryError = str  # None, "timeout", "stalled", "refused", "http_5xx", "bad_response", or a short text
EVENT_NAMES = ("unload_requested", "load_requested", "restart_started", "restart_finished")
SERVER_STATES = ("ready", "loading", "down", "error")
PROCESS_STATUSES = ("running", "sleeping", "stopped", "zombie", "gone")


@dataclass(slots=True)
class GpuDevice:
    """A device named in the header."""

    index: int
    name: str = ""
    mem_total_mib: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TraceTarget:
    """A supervised server named in the header."""

    name: str
    kind: str
    gpus: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Header:
    """The first line of a trace."""

    type: ClassVar[str] = "header"
    version: int = 1
    host: str = ""
    gpus: list[GpuDevice] = field(default_factory=list)
    targets: list[TraceTarget] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def target(self, name: str) -> TraceTarget | None:
        return next((t for t in self.targets if t.name == name), None)

    def gpu(self, index: int) -> GpuDevice | None:
        return next((g for g in self.gpus if g.index == index), None)


@dataclass(slots=True)
class GpuProc:
    """One process holding memory on a GPU, and the target it belongs to (or None)."""

    pid: int
    mem_mib: int | None
    target: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class LoadedModel:
    """A model a server reports as loaded."""

    name: str
    vram_mib: int | None = None
    expires_in_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class GpuSample:
    """One NVML sample of one device. ``error`` is set when the device did not answer."""

    type: ClassVar[str] = "gpu"
    t: float
    index: int
    util: float | None
    mem_used_mib: float | None  # MiB; any number (NVML gives whole MiB, a trace may not)
    procs: list[GpuProc] = field(default_factory=list)
    temp_c: float | None = field(default=None, metadata=OMIT_NONE)
    power_w: float | None = field(default=None, metadata=OMIT_NONE)
    error: str | None = field(default=None, metadata=OMIT_NONE)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Xid:
    """An NVML critical-error event (an XID) on one device."""

    type: ClassVar[str] = "xid"
    t: float
    index: int
    xid: int
    pid: int | None = field(default=None, metadata=OMIT_NONE)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Canary:
    """The outcome of one canary request, recorded when it ends."""

    type: ClassVar[str] = "canary"
    t: float
    target: str
    ok: bool
    model: str | None = None
    started: float | None = None
    error: CanaryError | None = None
    ttft_s: float | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def start(self) -> float:
        return self.t if self.started is None else self.started


@dataclass(slots=True)
class ServerPoll:
    """One poll of a server's own status endpoints."""

    type: ClassVar[str] = "server"
    t: float
    target: str
    state: ServerState
    models: list[LoadedModel] = field(default_factory=list)
    running: int | None = field(default=None, metadata=OMIT_NONE)
    waiting: int | None = field(default=None, metadata=OMIT_NONE)
    gen_tokens_total: float | None = field(default=None, metadata=OMIT_NONE)
    kv_cache_usage: float | None = field(default=None, metadata=OMIT_NONE)
    error: str | None = field(default=None, metadata=OMIT_NONE)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ProcessSample:
    """One look at a server's main process (CPU is over its whole process tree)."""

    type: ClassVar[str] = "process"
    t: float
    target: str
    status: ProcessStatus
    pid: int | None = None
    rss_mib: float | None = field(default=None, metadata=OMIT_NONE)
    cpu_percent: float | None = field(default=None, metadata=OMIT_NONE)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class LogLine:
    """One line from a server's log that matters."""

    type: ClassVar[str] = "log"
    t: float
    target: str
    line: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Event:
    """Something done to a server, by the watchdog or anyone."""

    type: ClassVar[str] = "event"
    t: float
    target: str
    event: str
    model: str | None = field(default=None, metadata=OMIT_NONE)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class UnknownRecord:
    """A record of a type this version does not know: kept, never interpreted."""

    t: float | None
    type: str
    raw: dict[str, Any] = field(default_factory=dict)


Record = Union[GpuSample, Xid, Canary, ServerPoll, ProcessSample, LogLine, Event, UnknownRecord]
TargetRecord = Union[Canary, ServerPoll, ProcessSample, LogLine, Event]
