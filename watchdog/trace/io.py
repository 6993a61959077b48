"""Reading and writing trace-v1 files (JSON Lines).

The reader is strict about required fields and lenient about everything else:
unknown fields are kept, unknown record types are passed through as
:class:`UnknownRecord`, and a broken line is reported with its line number and
skipped. It never raises for bad content, only for an unusable file (wrong
version, unreadable).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import re
import types
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Union, get_args, get_origin, get_type_hints

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

VERSION = 1


class TraceError(Exception):
    """A trace that cannot be read at all (not a bad line: those are problems)."""


class _Bad(Exception):
    """One line is unusable; the message says why."""


@dataclass(frozen=True, slots=True)
class TraceProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class Trace:
    header: Header
    records: list[Record] = field(default_factory=list)
    problems: list[TraceProblem] = field(default_factory=list)


# --- field decoders -------------------------------------------------------------------------

_NUMBERS = (int, float)


def _number(value: Any, name: str) -> float:
    if type(value) not in _NUMBERS:  # exact types: a bool is not a number here
        raise _Bad(f'field "{name}": expected a number, got {_brief(value)}')
    return value


def _integer(value: Any, name: str) -> int:
    kind = type(value)
    if kind is int:
        return value
    if kind is float and value.is_integer():
        return int(value)
    raise _Bad(f'field "{name}": expected an integer, got {_brief(value)}')


def _text(value: Any, name: str) -> str:
    if type(value) is not str:
        raise _Bad(f'field "{name}": expected a string, got {_brief(value)}')
    return value


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f'field "{name}": expected true or false, got {_brief(value)}')
    return value


def _procs(value: Any, name: str) -> list[GpuProc]:
    if not isinstance(value, list):
        raise _Bad(f'field "{name}": expected a list, got {_brief(value)}')
    out = []
    for item in value:
        if type(item) is not dict:
            raise _Bad(f'field "{name}": expected objects with pid and mem_mib')
        if "pid" not in item:
            raise _Bad('field "procs": an entry has no "pid"')
        mem = item.get("mem_mib")
        target = item.get("target")
        extra = {k: v for k, v in item.items() if k not in _PROC_KEYS} if len(item) > 3 else {}
        out.append(
            GpuProc(
                _integer(item["pid"], "procs[].pid"),
                None if mem is None else _number(mem, "procs[].mem_mib"),
                None if target is None else _text(target, "procs[].target"),
                extra,
            )
        )
    return out


_PROC_KEYS = frozenset({"pid", "mem_mib", "target"})


def _models(value: Any, name: str) -> list[LoadedModel]:
    if not isinstance(value, list):
        raise _Bad(f'field "{name}": expected a list, got {_brief(value)}')
    out = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _Bad(f'field "{name}": expected objects with a "name"')
        data = dict(item)
        model_name = data.pop("name")
        vram = data.pop("vram_mib", None)
        expires = data.pop("expires_in_s", None)
        out.append(
            LoadedModel(
                name=model_name,
                vram_mib=None if vram is None else _number(vram, "models[].vram_mib"),
                expires_in_s=None if expires is None else _number(expires, "models[].expires_in_s"),
                extra=data,
            )
        )
    return out


Decoder = Callable[[Any, str], Any]


@dataclass(frozen=True, slots=True)
class _Field:
    """How one field of a record is read and written, taken from the record class."""

    name: str
    decode: Decoder
    required: bool
    always: bool  # written even when None
    default: Callable[[], Any]


def _decoder(annotation: Any, where: str) -> Decoder:
    """The decoder for a field's type: int, float (any number), bool, str (and Literals of
    str), list[GpuProc], list[LoadedModel]; ``X | None`` as X."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Literal or annotation is str:
        return _text
    if get_origin(annotation) is list:
        item = get_args(annotation)[0]
        if item in _LIST_DECODERS:
            return _LIST_DECODERS[item]
    if annotation in _DECODERS:
        return _DECODERS[annotation]
    raise TypeError(f"trace schema: no decoder for {where}: {annotation!r}")


def _schema(cls: type) -> tuple[_Field, ...]:
    """The trace fields of a record class: every dataclass field but ``t`` and ``extra``, in order."""
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in ("t", "extra"):
            continue
        optional = type(None) in get_args(hints[f.name])
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        factory = f.default_factory if f.default_factory is not dataclasses.MISSING else (lambda: None)
        out.append(_Field(f.name, _decoder(hints[f.name], f"{cls.__name__}.{f.name}"),
                          required=not optional and not has_default, always=not f.metadata.get("omit_none"),
                          default=factory))
    return tuple(out)


_DECODERS: dict[Any, Decoder] = {int: _integer, float: _number, bool: _boolean}
_LIST_DECODERS: dict[Any, Decoder] = {GpuProc: _procs, LoadedModel: _models}
_SPECS: dict[str, tuple[type, tuple[_Field, ...]]] = {
    cls.type: (cls, _schema(cls)) for cls in (GpuSample, Xid, Canary, ServerPoll, ProcessSample, LogLine, Event)
}
_CLASS_SPECS = {cls: (name, spec) for name, (cls, spec) in _SPECS.items()}
_KNOWN = {name: frozenset({"t", "type", *(f.name for f in spec)}) for name, (_, spec) in _SPECS.items()}


def decode_record(data: dict[str, Any]) -> Record:
    """One record from its JSON object. Raises _Bad with the reason."""
    kind = data.get("type")
    if not isinstance(kind, str):
        raise _Bad('no "type" field')
    t = data.get("t")
    if kind not in _SPECS:
        return UnknownRecord(t=t if isinstance(t, (int, float)) else None, type=kind, raw=dict(data))
    if "t" not in data:
        raise _Bad('no "t" field')
    cls, spec = _SPECS[kind]
    values: dict[str, Any] = {"t": _number(t, "t")}
    for spec_field in spec:
        name = spec_field.name
        value = data.get(name)
        if value is None:
            if spec_field.required:
                raise _Bad(f'{kind} record without "{name}"')
            values[name] = spec_field.default()
            continue
        values[name] = spec_field.decode(value, name)
    known = _KNOWN[kind]
    values["extra"] = {} if known.issuperset(data) else {k: v for k, v in data.items() if k not in known}
    return cls(**values)


def encode_record(record: Record) -> dict[str, Any]:
    """The JSON object for a record (inverse of decode_record)."""
    if isinstance(record, UnknownRecord):
        return dict(record.raw)
    kind, spec = _CLASS_SPECS[type(record)]
    out: dict[str, Any] = {"t": round(record.t, 3), "type": kind}
    for spec_field in spec:
        name = spec_field.name
        value = getattr(record, name)
        if value is None and not spec_field.always:
            continue
        if name == "procs":
            value = [_with_extra({"pid": p.pid, "mem_mib": p.mem_mib, "target": p.target}, p.extra) for p in value]
        elif name == "models":
            value = [_encode_model(m) for m in value]
        out[name] = value
    out.update(record.extra)
    return out


def _encode_model(model: LoadedModel) -> dict[str, Any]:
    out: dict[str, Any] = {"name": model.name, "vram_mib": model.vram_mib}
    if model.expires_in_s is not None:
        out["expires_in_s"] = model.expires_in_s
    return _with_extra(out, model.extra)


def _with_extra(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    if extra:
        base.update(extra)
    return base


def decode_header(data: dict[str, Any]) -> Header:
    if data.get("type") != "header":
        raise _Bad('expected the header record ({"type": "header", ...}) first')
    version = data.get("version")
    if version != VERSION:
        raise TraceError(f"unsupported trace version {version!r} (this reader knows version {VERSION})")
    gpus = []
    for item in data.get("gpus") or []:
        if not isinstance(item, dict) or "index" not in item:
            raise _Bad('header: every entry of "gpus" needs an "index"')
        rest = dict(item)
        gpus.append(
            GpuDevice(
                index=_integer(rest.pop("index"), "gpus[].index"),
                name=str(rest.pop("name", "")),
                mem_total_mib=rest.pop("mem_total_mib", None),
                extra=rest,
            )
        )
    targets = []
    for item in data.get("targets") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _Bad('header: every entry of "targets" needs a "name"')
        rest = dict(item)
        gpus_of = rest.pop("gpus", [])
        targets.append(
            TraceTarget(
                name=rest.pop("name"),
                kind=str(rest.pop("kind", "openai")),
                gpus=[_integer(g, "targets[].gpus[]") for g in gpus_of] if isinstance(gpus_of, list) else [],
                extra=rest,
            )
        )
    extra = {k: v for k, v in data.items() if k not in ("type", "version", "host", "gpus", "targets")}
    return Header(version=VERSION, host=str(data.get("host", "")), gpus=gpus, targets=targets, extra=extra)


def encode_header(header: Header) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "header",
        "version": header.version,
        "host": header.host,
        "gpus": [
            _with_extra({"index": g.index, "name": g.name, "mem_total_mib": g.mem_total_mib}, g.extra)
            for g in header.gpus
        ],
        "targets": [_with_extra({"name": t.name, "kind": t.kind, "gpus": t.gpus}, t.extra) for t in header.targets],
    }
    out.update(header.extra)
    return out


# --- reading --------------------------------------------------------------------------------

def iter_trace(lines: Iterable[str]) -> Iterator[Header | Record | TraceProblem]:
    """Yield the header, then records and problems, in file order.

    If the first line is not a header, a problem is reported and an empty
    header is assumed, so the records can still be used.
    """
    header_seen = False
    last_t: float | None = None
    number = 0
    source = iter(lines)
    while True:
        try:
            line = next(source)
        except StopIteration:
            return
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
            # A corrupt or truncated .gz (or a file that cannot be read on): what came before is kept.
            yield TraceProblem(number + 1, f"the file cannot be read past here ({_unreadable(exc)}); the rest is lost")
            return
        number += 1
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            yield TraceProblem(number, f"line longer than {MAX_LINE_CHARS} characters; skipped")
            continue
        if _UNDECODABLE.search(line):
            yield TraceProblem(number, "not UTF-8 text; skipped")
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            yield TraceProblem(number, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:
            yield TraceProblem(number, "JSON nested too deeply; skipped")
            continue
        if not isinstance(data, dict):
            yield TraceProblem(number, "expected a JSON object")
            continue
        if not header_seen:
            header_seen = True
            try:
                yield decode_header(data)
                continue
            except _Bad as exc:
                yield TraceProblem(number, str(exc))
                yield Header()
        try:
            record = decode_record(data)
        except _Bad as exc:
            yield TraceProblem(number, str(exc))
            continue
        t = record.t
        if t is not None:
            if last_t is not None and t < last_t:
                yield TraceProblem(number, f"t goes backwards ({t} after {last_t}); kept")
            else:
                last_t = t
        yield record


MAX_LINE_CHARS = 4 * 1024 * 1024
"""A record is a few hundred bytes; a line this long is damage, not data."""
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _unreadable(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "compressed data ends early"
    if isinstance(exc, (zlib.error, gzip.BadGzipFile)):
        return "corrupt compressed data"
    return type(exc).__name__


def open_text(path: str | Path) -> IO[str]:
    """Open a trace for reading; ``.gz`` files are decompressed.

    Bytes that are not UTF-8 are kept as surrogates (``surrogateescape``), so one bad byte
    costs its line (reported and skipped by :func:`iter_trace`), not the whole replay.
    """
    if "\x00" in str(path):
        raise TraceError(f"{str(path)!r}: the path contains a NUL byte")
    path = Path(path)
    try:
        if path.suffix == ".gz":
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="surrogateescape")
        return open(path, encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror})") from None


def read_trace(path: str | Path) -> Trace:
    """The whole trace in memory, with every problem found."""
    with open_text(path) as handle:
        return read_trace_lines(handle)


def read_trace_lines(lines: Iterable[str]) -> Trace:
    trace = Trace(header=Header())
    for item in iter_trace(lines):
        if isinstance(item, Header):
            trace.header = item
        elif isinstance(item, TraceProblem):
            trace.problems.append(item)
        else:
            trace.records.append(item)
    return trace


# --- writing --------------------------------------------------------------------------------

def dumps_record(record: Record | Header) -> str:
    data = encode_header(record) if isinstance(record, Header) else encode_record(record)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


class TraceWriter:
    """Writes a header then records, one JSON object per line."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle

    def write_header(self, header: Header) -> None:
        self._handle.write(dumps_record(header) + "\n")

    def write(self, record: Record) -> None:
        self._handle.write(dumps_record(record) + "\n")

    def write_all(self, records: Iterable[Record]) -> None:
        self._handle.writelines(dumps_record(r) + "\n" for r in records)


def write_trace(path: str | Path, header: Header, records: Iterable[Record]) -> None:
    """Write a whole trace atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    opener = (lambda p: io.TextIOWrapper(gzip.open(p, "wb"), encoding="utf-8")) if path.suffix == ".gz" else (
        lambda p: open(p, "w", encoding="utf-8")
    )
    with opener(tmp) as handle:
        writer = TraceWriter(handle)
        writer.write_header(header)
        writer.write_all(records)
        handle.flush()
    os.replace(tmp, path)


def _brief(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 40 else text[:37] + "..."
