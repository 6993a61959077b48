"""Trace format v1: the observation records (the schema, once), their reader/writer, the header.

May import ``config/`` (for the header) only; every other room imports it."""

from watchdog.trace.io import (
    Trace,
    TraceError,
    TraceProblem,
    TraceWriter,
    dumps_record,
    iter_trace,
    read_trace,
    read_trace_lines,
    write_trace,
)
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
    TraceTarget,
    UnknownRecord,
    Xid,
)

__all__ = [
    "Canary", "Event", "GpuDevice", "GpuProc", "GpuSample", "Header", "LoadedModel", "LogLine",
    "ProcessSample", "Record", "ServerPoll", "Trace", "TraceError", "TraceProblem", "TraceTarget",
    "TraceWriter", "UnknownRecord", "Xid", "dumps_record", "iter_trace", "read_trace",
    "read_trace_lines", "write_trace",
]
