"""Trace format v1: the observation records (the schema, once), their reader/writer, the header.

May import ``config/`` (for the header) only; every other room imports it."""

from typing import TYPE_CHECKING

from watchdog.lazy import lazy_exports

if TYPE_CHECKING:
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

__getattr__ = lazy_exports(__name__, {
    "Trace": "io",
    "TraceError": "io",
    "TraceProblem": "io",
    "TraceWriter": "io",
    "dumps_record": "io",
    "iter_trace": "io",
    "read_trace": "io",
    "read_trace_lines": "io",
    "write_trace": "io",
    "Canary": "records",
    "Event": "records",
    "GpuDevice": "records",
    "GpuProc": "records",
    "GpuSample": "records",
    "Header": "records",
    "LoadedModel": "records",
    "LogLine": "records",
    "ProcessSample": "records",
    "Record": "records",
    "ServerPoll": "records",
    "TraceTarget": "records",
    "UnknownRecord": "records",
    "Xid": "records",
})

__all__ = [
    "Canary", "Event", "GpuDevice", "GpuProc", "GpuSample", "Header", "LoadedModel", "LogLine",
    "ProcessSample", "Record", "ServerPoll", "Trace", "TraceError", "TraceProblem", "TraceTarget",
    "TraceWriter", "UnknownRecord", "Xid", "dumps_record", "iter_trace", "read_trace",
    "read_trace_lines", "write_trace",
]
