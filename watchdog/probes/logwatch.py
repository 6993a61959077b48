"""The log probe: follow a target's log and pass on the lines that matter as ``LogLine`` records.

Sources: a file (with rotation: rename-and-create and copytruncate), the
journal of a systemd unit (``journalctl -u UNIT -f -o json``), or a Docker
container's output (the Docker SDK). Every source starts at the *end* and
streams line by line with a cap on line length: nothing reads a whole
journal or file into memory. Which lines matter is decided by
:class:`watchdog.probes.logpatterns.LogFilter`.

The daemon runs :meth:`LogProbe.run` as a long-lived task (it reconnects by
itself when the source fails); ``watchdogctl probe`` calls
:meth:`LogProbe.recent` for the matching lines among the last few hundred.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from watchdog.config.model import TargetSettings
from watchdog.logs import LogOnce
from watchdog.probes.base import Clock, Emit
from watchdog.probes.blocking import BlockingRunner, DeadlineExceeded
from watchdog.probes.dockerapi import DockerAccess, DockerUnavailable
from watchdog.probes.lines import LineSplitter, strip_ansi
from watchdog.probes.logpatterns import LogFilter
from watchdog.trace.records import LogLine

MAX_LINE = 8192
CHUNK = 64 * 1024
JOURNAL_MAX_JSON = 256 * 1024
IDLE_POLL_S = 1.0
WATCH_S = 5.0  # the longest one look-until-news runs in the worker before it reports back
"""A file that stays quiet is looked at every ``poll_s``, doubling up to this; new data
brings it back to ``poll_s``. A log line that matters is seen within a second."""


class LogSourceError(Exception):
    """The log cannot be read right now; the probe tries again later."""


class LogSource(ABC):
    description: str
    ready: asyncio.Event
    """Set once following has begun: lines written from then on will be seen (tests wait on it)."""

    @abstractmethod
    def follow(self) -> AsyncIterator[str]:
        """New lines from now on, until cancelled; raises LogSourceError when reading fails."""

    @abstractmethod
    async def recent(self, max_lines: int) -> list[str]:
        """The last ``max_lines`` lines (or fewer)."""

    def close(self) -> None:  # noqa: B027 - most sources hold nothing: a no-op by default
        """Release what the source holds (threads); after the follower is cancelled."""


# --- a file -----------------------------------------------------------------------------------

class FileSource(LogSource):
    """Follows a file like ``tail -F``: from its end, across rotations and truncations.

    Polls (no inotify: it works on every filesystem and in containers), every ``poll_s``
    while lines come, backing off to ``idle_poll_s`` while the file is quiet."""

    def __init__(self, path: str | Path, *, poll_s: float = 0.25, idle_poll_s: float = IDLE_POLL_S,
                 max_line: int = MAX_LINE) -> None:
        self.path = Path(path)
        self.poll_s = poll_s
        self.idle_poll_s = idle_poll_s
        self.max_line = max_line
        self.description = f"file {self.path}"
        self.rotations = 0
        self.ready = asyncio.Event()
        self._runner = BlockingRunner(f"log-{self.path.name}")

    def close(self) -> None:
        self._runner.close()

    async def _io(self, fn: Any, *args: Any, timeout: float = 10.0) -> Any:
        try:
            return await self._runner.run(fn, *args, timeout=timeout)
        except DeadlineExceeded as exc:
            raise LogSourceError(f"{self.path}: {exc}") from None

    async def follow(self) -> AsyncIterator[str]:
        handle: BinaryIO | None = None
        splitter = LineSplitter(self.max_line)
        stop = threading.Event()
        try:
            handle = await self._io(self._open, True)
            self.ready.set()
            while handle is None:  # not there yet: wait for it, then read it from its start
                await asyncio.sleep(self.poll_s)
                handle = await self._io(self._open, False)
            wait = self.poll_s
            while True:
                data, change, wait = await self._io(self._watch, handle, wait, stop, timeout=WATCH_S + 10.0)
                if data:
                    wait = self.poll_s
                    for line in splitter.feed(data):
                        yield line
                    continue
                if change == "rotated":
                    # The old file is complete: finish it, then go on with the new one from its start.
                    while data := await self._io(handle.read, CHUNK):
                        for line in splitter.feed(data):
                            yield line
                    for line in splitter.flush():
                        yield line
                    new = await self._io(self._open, False)
                    if new is not None:
                        handle.close()
                        handle = new
                        self.rotations += 1
                        continue
                    await asyncio.sleep(wait)
                elif change == "truncated":
                    await self._io(handle.seek, 0)
                    splitter = LineSplitter(self.max_line)
                    self.rotations += 1
        finally:
            stop.set()  # a watch still running in the worker returns at once
            if handle is not None:
                handle.close()

    def _watch(self, handle: BinaryIO, wait: float, stop: threading.Event) -> tuple[bytes, str | None, float]:
        """In the worker: look, and while nothing is new look again after ``wait`` s (doubling up
        to ``idle_poll_s``: a quiet log is looked at less often), for up to WATCH_S. Returns the
        data or the change and the next wait. The looks are those the loop used to make, but only
        news hops onto the loop: one hop per look cost the loop more than the reading (issue 15)."""
        deadline = time.monotonic() + WATCH_S
        while True:
            try:
                data, change = self._step(handle)
            except ValueError:  # the follower stopped and closed the file under this look
                if stop.is_set():
                    return b"", None, wait
                raise
            if data or change is not None:
                return data, change, wait
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop.wait(min(wait, remaining)):
                return b"", None, wait
            wait = min(wait * 2, max(self.idle_poll_s, self.poll_s))

    def _open(self, at_end: bool) -> BinaryIO | None:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - closed by follow()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LogSourceError(f"{self.path}: {exc.strerror}") from None
        if at_end:
            handle.seek(0, os.SEEK_END)
        return handle

    def _step(self, handle: BinaryIO) -> tuple[bytes, str | None]:
        """Read on; at the end, whether the file was rotated or truncated. One thread hop per
        look instead of two (issue 15)."""
        data = handle.read(CHUNK)
        return (data, None) if data else (b"", self._changed(handle))

    def _changed(self, handle: BinaryIO) -> str | None:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return None  # renamed away, the new one not created yet: keep reading the old
        except OSError as exc:
            raise LogSourceError(f"{self.path}: {exc.strerror}") from None
        mine = os.fstat(handle.fileno())
        if (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
            return "rotated"
        if now.st_size < handle.tell():
            return "truncated"
        return None

    async def recent(self, max_lines: int) -> list[str]:
        # Its own thread: the follower's worker may be busy with the same file.
        try:
            async with asyncio.timeout(10.0):
                return await asyncio.to_thread(self._tail, max_lines)
        except TimeoutError:
            raise LogSourceError(f"{self.path}: no answer within 10s") from None

    def _tail(self, max_lines: int) -> list[str]:
        """The last lines, reading backwards from the end in chunks (never the whole file)."""
        try:
            with open(self.path, "rb") as handle:
                end = handle.seek(0, os.SEEK_END)
                budget = max(max_lines * self.max_line, CHUNK)
                start = max(0, end - budget)
                position, data = end, b""
                while position > start and data.count(b"\n") <= max_lines:
                    step = min(CHUNK, position - start)
                    position -= step
                    handle.seek(position)
                    data = handle.read(step) + data
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LogSourceError(f"{self.path}: {exc.strerror}") from None
        if position > 0:
            data = data.split(b"\n", 1)[1] if b"\n" in data else b""
        splitter = LineSplitter(self.max_line)
        lines = splitter.feed(data) + splitter.flush()
        return lines[-max_lines:]


# --- the journal ------------------------------------------------------------------------------

def journal_message(line: str, max_line: int = MAX_LINE) -> str | None:
    """MESSAGE of one ``journalctl -o json`` line (text, or bytes given as a list of numbers)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    message = entry.get("MESSAGE")
    if isinstance(message, list):
        try:
            message = bytes(message).decode("utf-8", "replace")
        except (TypeError, ValueError):
            return None
    if not isinstance(message, str):
        return None
    return message[:max_line]


class JournalSource(LogSource):
    """``journalctl -u UNIT -f -o json -n 0``: the unit's new journal entries, one by one.

    ``command`` is how to run journalctl (e.g. through ``docker exec`` into a
    container that runs systemd).
    """

    def __init__(self, unit: str, *, command: Sequence[str] = ("journalctl",), max_line: int = MAX_LINE) -> None:
        self.unit = unit
        self.command = list(command)
        self.max_line = max_line
        self.description = f"journal of {unit}"
        self.ready = asyncio.Event()

    async def follow(self) -> AsyncIterator[str]:
        args = [*self.command, "-u", self.unit, "-f", "-o", "json", "-n", "0", "--no-pager"]
        async for line in self._run(args, started=self.ready):
            yield line

    async def recent(self, max_lines: int) -> list[str]:
        args = [*self.command, "-u", self.unit, "-o", "json", "-n", str(max_lines), "--no-pager"]
        lines = []
        try:
            async with asyncio.timeout(15.0):
                async for line in self._run(args, follow=False):
                    lines.append(line)
        except TimeoutError:
            pass
        return lines[-max_lines:]

    async def _run(self, args: list[str], follow: bool = True,
                   started: asyncio.Event | None = None) -> AsyncIterator[str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise LogSourceError(f"cannot run {args[0]}: {exc.strerror}") from None
        assert proc.stdout is not None and proc.stderr is not None
        if started is not None:
            started.set()
        splitter = LineSplitter(JOURNAL_MAX_JSON)
        try:
            while True:
                chunk = await proc.stdout.read(CHUNK)
                if not chunk:
                    break
                for raw in splitter.feed(chunk):
                    message = journal_message(raw, self.max_line)
                    if message is not None:
                        yield message
            for raw in splitter.flush():
                message = journal_message(raw, self.max_line)
                if message is not None:
                    yield message
            err = (await proc.stderr.read(2000)).decode("utf-8", "replace").strip()
            code = await proc.wait()
            if follow or code != 0:
                raise LogSourceError(f"journalctl exited ({code}){': ' + err[:200] if err else ''}")
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    async with asyncio.timeout(2.0):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


# --- a Docker container -----------------------------------------------------------------------

class DockerSource(LogSource):
    """A container's stdout and stderr through the Docker SDK (a blocking stream in a thread)."""

    def __init__(self, container: str, docker: DockerAccess, *, max_line: int = MAX_LINE,
                 queue_lines: int = 10000) -> None:
        self.container = container
        self.docker = docker
        self.max_line = max_line
        self.queue_lines = queue_lines
        self.description = f"container {container}"
        self.dropped = 0
        self.ready = asyncio.Event()
        self._since: datetime | None = None

    async def follow(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue(self.queue_lines)
        since = self._since
        holder: dict[str, Any] = {}
        stop = threading.Event()

        def put(item: str | BaseException | None) -> None:
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                self.dropped += 1

        def pump() -> None:
            splitter = LineSplitter(self.max_line)
            try:
                client = self.docker.client()
                container = client.containers.get(self.container)
                kwargs: dict[str, Any] = {"stream": True, "follow": True, "stdout": True, "stderr": True}
                if since is None:
                    kwargs["tail"] = 0
                else:
                    kwargs["since"] = since
                stream = container.logs(**kwargs)
                holder["stream"] = stream
                loop.call_soon_threadsafe(self.ready.set)
                if stop.is_set():
                    stream.close()
                for chunk in stream:
                    for line in splitter.feed(chunk):
                        loop.call_soon_threadsafe(put, line)
                for line in splitter.flush():
                    loop.call_soon_threadsafe(put, line)
                loop.call_soon_threadsafe(put, None)
            except BaseException as exc:  # noqa: BLE001 - handed to the coroutine
                if not stop.is_set():
                    loop.call_soon_threadsafe(put, exc)

        self._since = datetime.now(UTC)
        thread = threading.Thread(target=pump, name=f"iw-dlog-{self.container}", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    raise LogSourceError(f"the log stream of container {self.container} ended")
                if isinstance(item, DockerUnavailable):
                    raise LogSourceError(str(item))
                if isinstance(item, BaseException):
                    raise LogSourceError(f"container {self.container}: {_brief(item)}")
                self._since = datetime.now(UTC)
                yield item
        finally:
            stop.set()
            stream = holder.get("stream")
            if stream is not None:
                try:
                    stream.close()
                except Exception:  # noqa: BLE001
                    pass

    async def recent(self, max_lines: int) -> list[str]:
        def tail() -> bytes:
            return self.docker.logs_tail(self.container, max_lines)

        try:
            async with asyncio.timeout(15.0):
                data = await asyncio.to_thread(tail)
        except DockerUnavailable as exc:
            raise LogSourceError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001
            raise LogSourceError(f"container {self.container}: {_brief(exc)}") from None
        splitter = LineSplitter(self.max_line)
        return (splitter.feed(data) + splitter.flush())[-max_lines:]


def _brief(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]


# --- the probe --------------------------------------------------------------------------------

def source_for(target: TargetSettings, docker: DockerAccess | None,
               journal_command: Sequence[str] = ("journalctl",)) -> LogSource | None:
    """Where a target's log is: its container, else its unit's journal, else ``log_file``."""
    if target.container and docker is not None:
        return DockerSource(target.container, docker)
    if target.unit:
        return JournalSource(target.unit, command=journal_command)
    if target.log_file:
        return FileSource(target.log_file)
    return None


class LogProbe:
    """Follows one target's log and emits the lines that matter."""

    def __init__(
        self,
        target: str,
        source: LogSource,
        clock: Clock,
        emit: Emit,
        *,
        retry_s: float = 5.0,
        burst: int = 50,
        burst_window_s: float = 10.0,
    ) -> None:
        self.target = target
        self.source = source
        self.clock = clock
        self.emit = emit
        self.retry_s = retry_s
        self.burst = burst
        self.burst_window_s = burst_window_s
        self.lines_seen = 0
        self.lines_passed = 0
        self.lines_dropped = 0
        self.following = False
        self._filter = LogFilter()
        self._window: list[float] = []
        self._log = LogOnce(f"logs.{target}")

    async def run(self) -> None:
        """Follow the log until cancelled; reconnect after failures."""
        while True:
            try:
                self.following = True
                async for line in self.source.follow():
                    self._take(line)
                raise LogSourceError(f"{self.source.description}: ended")
            except LogSourceError as exc:
                self.following = False
                self._log.problem("source", f"{self.target}: cannot follow its log: {exc}")
            except asyncio.CancelledError:
                self.following = False
                raise
            except Exception as exc:  # noqa: BLE001 - a probe never dies
                self.following = False
                self._log.problem("source", f"{self.target}: log probe failed: {type(exc).__name__}: {exc}",
                                  level="ERROR")
            await asyncio.sleep(self.retry_s)

    async def recent(self, max_lines: int = 500) -> list[LogLine]:
        """The lines that matter among the last ``max_lines`` (emitted too). Never raises."""
        try:
            lines = await self.source.recent(max_lines)
        except LogSourceError as exc:
            self._log.problem("recent", f"{self.target}: cannot read its log: {exc}")
            return []
        found = []
        probe_filter = LogFilter()
        for line in lines:
            match = probe_filter.feed(strip_ansi(line))
            if match is not None:
                record = LogLine(t=self.clock(), target=self.target, line=match.line,
                                 extra={"pattern": match.pattern})
                found.append(record)
                self.emit(record)
        return found

    def _take(self, line: str) -> None:
        self.lines_seen += 1
        self._log.ok("source", f"{self.target}: following {self.source.description}")
        match = self._filter.feed(strip_ansi(line))
        if match is None:
            return
        now = time.monotonic()
        self._window = [t for t in self._window if now - t < self.burst_window_s]
        if len(self._window) >= self.burst:
            self.lines_dropped += 1
            self._log.problem("burst", f"{self.target}: more than {self.burst} matching log lines in "
                              f"{self.burst_window_s:g}s; passing on the first ones only")
            return
        self._window.append(now)
        self.lines_passed += 1
        self.emit(LogLine(t=self.clock(), target=self.target, line=match.line, extra={"pattern": match.pattern}))
