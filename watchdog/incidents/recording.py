"""Incident flight recordings: trace-v1 files in ``<state_dir>/recordings/``.

A recording starts with a header and the minutes of records before the
incident (written to a temporary file, fsynced and renamed, so it appears
whole), then grows line by line while the incident is open and for a while
after it closes. A crash can leave a torn last line; readers drop it, and
reopening a recording for appending cuts it off first, so a new line never
glues onto half an old one.

Times: a recording has its own zero, ``wall_start`` in the header (the Unix
time of t = 0). Records from a later run of the daemon, whose clock started
elsewhere, are shifted onto the recording's time line, so ``t`` keeps going
forward across restarts and the file replays as one trace.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from watchdog import __version__
from watchdog.redact import NO_SECRETS, Redactor
from watchdog.trace.io import decode_header, encode_header, encode_record, read_trace_lines
from watchdog.trace.records import GpuSample, Header, Record, UnknownRecord, Xid

RECORDINGS_DIR = "recordings"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_TAIL_CHUNK = 64 * 1024


def recording_name(incident_id: int) -> str:
    """The recording's path relative to the state dir (what the database stores)."""
    return f"{RECORDINGS_DIR}/incident-{incident_id}.trace.jsonl"


@dataclass(frozen=True, slots=True)
class Scope:
    """Which records belong to an incident's recording.

    A server's incident keeps its own records and those of its GPUs; a GPU's
    incident (``gpu:N``) keeps that GPU and the servers that use it. ``gpus``
    None means every GPU (the target's GPUs are not known).
    """

    targets: frozenset[str]
    gpus: frozenset[int] | None

    def covers(self, record: Record) -> bool:
        if isinstance(record, (GpuSample, Xid)):
            return self.gpus is None or record.index in self.gpus
        if isinstance(record, UnknownRecord):
            target = record.raw.get("target")
            return target is None or target in self.targets
        return record.target in self.targets

    def narrow(self, header: Header) -> Header:
        """The header with only this scope's targets and GPUs."""
        return Header(
            version=header.version,
            host=header.host,
            gpus=[g for g in header.gpus if self.gpus is None or g.index in self.gpus],
            targets=[t for t in header.targets if t.name in self.targets],
            extra=dict(header.extra),
        )


def scope_for(target: str, header: Header) -> Scope:
    if target.startswith("gpu:") and target[4:].isdigit():
        index = int(target[4:])
        users = frozenset(t.name for t in header.targets if index in t.gpus)
        return Scope(targets=users | {target}, gpus=frozenset({index}))
    known = header.target(target)
    gpus = frozenset(known.gpus) if known is not None and known.gpus else None
    return Scope(targets=frozenset({target}), gpus=gpus)


@dataclass
class RecordingFile:
    """One incident's recording, open for appending."""

    path: Path
    scope: Scope
    offset: float = 0.0
    last_t: float = float("-inf")
    max_bytes: int = DEFAULT_MAX_BYTES
    redactor: Redactor = NO_SECRETS
    size: int = 0
    full: bool = False
    _handle: IO[str] | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        path: Path,
        header: Header,
        scope: Scope,
        context: Iterable[Record],
        *,
        wall_start: float,
        incident_id: int,
        max_bytes: int = DEFAULT_MAX_BYTES,
        redactor: Redactor = NO_SECRETS,
    ) -> "RecordingFile":
        """Write the header and the context records, durably, and open the file for appending.

        The recording's zero is the daemon clock's zero (``wall_start``), so
        records of this run are written with their own ``t``.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        head = scope.narrow(header)
        head.extra.update(
            {"incident": incident_id, "wall_start": wall_start, "recorded_by": f"inference-watchdog {__version__}"}
        )
        recording = cls(path=path, scope=scope, max_bytes=max_bytes, redactor=redactor)
        tmp = path.with_name(f".{path.name}.tmp")
        with _private_writer(tmp) as handle:
            handle.write(_dumps(encode_header(head)) + "\n")
            recording._handle = handle
            recording.append(context)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        recording._handle = open(path, "a", encoding="utf-8")
        recording.size = path.stat().st_size
        return recording

    @classmethod
    def reopen(
        cls,
        path: Path,
        scope: Scope,
        *,
        wall_start: float,
        max_bytes: int = DEFAULT_MAX_BYTES,
        redactor: Redactor = NO_SECRETS,
    ) -> "RecordingFile":
        """Open an existing recording after a restart: cut a torn tail, continue its time line.

        ``wall_start`` is the zero of the new run's clock. Raises OSError or
        ValueError when the file is missing or has no usable header.
        """
        _cut_torn_tail(path)
        with open(path, encoding="utf-8") as handle:
            first = handle.readline()
            header = decode_header(json.loads(first))
            last_t = _last_t(path)
        started = header.extra.get("wall_start")
        offset = wall_start - started if isinstance(started, (int, float)) else 0.0
        recording = cls(path=path, scope=scope, max_bytes=max_bytes, redactor=redactor)
        if last_t is not None:
            recording.last_t = last_t
            # A wall clock set back between runs must not make t go backwards.
            offset = max(offset, last_t)
        recording.offset = offset
        recording.size = path.stat().st_size
        recording._handle = open(path, "a", encoding="utf-8")
        return recording

    def append(self, records: Iterable[Record]) -> int:
        """Append this scope's records (shifted onto the recording's time line). Returns how many.

        Stops at ``max_bytes`` (``full`` becomes True) so an incident left open
        for weeks cannot fill the disk.
        """
        if self._handle is None or self.full:
            return 0
        lines = []
        for record in records:
            if not self.scope.covers(record):
                continue
            data = self.redactor.data(encode_record(record))
            if record.t is not None:
                t = record.t + self.offset
                data["t"] = round(t, 3)
                self.last_t = max(self.last_t, t)
            lines.append(_dumps(data) + "\n")
        if not lines:
            return 0
        text = "".join(lines)
        size = len(text.encode("utf-8"))
        if self.size + size > self.max_bytes:
            self.full = True
            return 0
        self._handle.write(text)
        self._handle.flush()
        self.size += size
        return len(lines)

    def sync(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            try:
                self.sync()
            finally:
                self._handle.close()
                self._handle = None


def complete_bytes(path: Path) -> bytes:
    """The recording's whole lines (a torn last line left by a crash is dropped)."""
    data = path.read_bytes()
    end = data.rfind(b"\n")
    return data[: end + 1] if end >= 0 else b""


def read_recording(path: str | Path):  # -> watchdog.trace.Trace
    """Read a recording as a trace, ignoring a torn last line."""
    text = complete_bytes(Path(path)).decode("utf-8", errors="replace")
    return read_trace_lines(text.splitlines())


def _cut_torn_tail(path: Path) -> None:
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            raise ValueError(f"{path}: empty recording")
        position = size
        while position > 0:
            start = max(0, position - _TAIL_CHUNK)
            handle.seek(start)
            chunk = handle.read(position - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                if keep != size:
                    handle.truncate(keep)
                    handle.flush()
                    os.fsync(handle.fileno())
                return
            position = start
        raise ValueError(f"{path}: no complete line (not even the header)")


def _last_t(path: Path) -> float | None:
    """The ``t`` of the last record, read from the end of the file."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - _TAIL_CHUNK))
        tail = handle.read().splitlines()
    for line in reversed(tail):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("type") != "header" and isinstance(data.get("t"), (int, float)):
            return float(data["t"])
    return None


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


RECORDING_MODE = 0o640
"""Recordings hold server errors and log lines: readable by the watchdog's group, not by everyone,
whatever the umask (the unit sets one; a manual run may not)."""


def _private_writer(path: Path) -> IO[str]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, RECORDING_MODE)
    os.fchmod(fd, RECORDING_MODE)
    return open(fd, "w", encoding="utf-8")
