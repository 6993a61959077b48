"""The process probe: each target's main process, its state, memory and CPU (psutil).

CPU is summed over the whole process tree, so a busy child (Ollama's runner,
vLLM's engine core) counts; RSS is the main process's own, with the tree's
total beside it (``extra.tree_rss_mib``). CPU percent needs two looks at a
process, so the first sample of a process has none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import psutil

from watchdog.logs import LogOnce
from watchdog.probes.attribution import Attributor, Located
from watchdog.probes.base import Clock, Emit
from watchdog.probes.blocking import BlockingRunner, Busy, DeadlineExceeded
from watchdog.trace.records import ProcessSample

MIB = 1024 * 1024

_STATUS = {
    psutil.STATUS_RUNNING: "running",
    psutil.STATUS_SLEEPING: "sleeping",
    psutil.STATUS_DISK_SLEEP: "sleeping",
    psutil.STATUS_IDLE: "sleeping",
    psutil.STATUS_WAKING: "sleeping",
    psutil.STATUS_PARKED: "sleeping",
    psutil.STATUS_STOPPED: "stopped",
    psutil.STATUS_TRACING_STOP: "stopped",
    psutil.STATUS_ZOMBIE: "zombie",
    psutil.STATUS_DEAD: "gone",
}


def map_status(status: str) -> str:
    """psutil's process status in the trace's words."""
    return _STATUS.get(status, "running")


class ProcessProbe:
    """One ``ProcessSample`` per observable target per :meth:`round`."""

    def __init__(
        self,
        targets: Sequence[str],
        attributor: Attributor,
        clock: Clock,
        emit: Emit,
        *,
        deadline: float = 3.0,
    ) -> None:
        self.targets = list(targets)
        self.attributor = attributor
        self.clock = clock
        self.emit = emit
        self.deadline = deadline
        self._procs: dict[tuple[int, float], psutil.Process] = {}
        self._last_pid: dict[str, int] = {}
        self._runner = BlockingRunner("processes")
        self._round_lock = asyncio.Lock()
        self._log = LogOnce("processes")
        self.located: dict[str, Located] = {}

    async def round(self) -> list[ProcessSample]:
        """Look at every target's process once; emit and return the samples. Never raises."""
        async with self._round_lock:
            return await self._round()

    async def _round(self) -> list[ProcessSample]:
        try:
            samples = await self._runner.run(self._look_all, timeout=self.deadline)
            self._log.ok("round")
        except (DeadlineExceeded, Busy) as exc:
            self._log.problem("round", f"process probe: {exc}")
            samples = []
        except Exception as exc:  # noqa: BLE001 - a probe never raises into the loop
            self._log.problem("round", f"process probe failed: {type(exc).__name__}: {exc}", level="ERROR")
            samples = []
        for sample in samples:
            self.emit(sample)
        return samples

    async def prime(self) -> None:
        """Take a first look without emitting, so the next round has CPU figures."""
        async with self._round_lock:
            try:
                await self._runner.run(self._look_all, timeout=self.deadline)
            except Exception:  # noqa: BLE001 - priming is best effort
                pass

    def close(self) -> None:
        self._runner.close()

    def _look_all(self) -> list[ProcessSample]:
        samples = []
        alive: set[tuple[int, float]] = set()
        table = _ProcessTable()  # one pass over /proc per round, shared by every target
        for name in self.targets:
            sample = self._look(name, alive, table)
            if sample is not None:
                samples.append(sample)
        for key in list(self._procs):
            if key not in alive:
                del self._procs[key]
        return samples

    def _look(self, name: str, alive: set[tuple[int, float]], table: _ProcessTable) -> ProcessSample | None:
        located = self.attributor.locate(name)
        self.located[name] = located
        t = self.clock()
        extra: dict[str, Any] = {"found_by": located.how}
        if located.state:
            extra["state"] = located.state
        if not located.observable:
            self._log.problem(f"unobservable:{name}",
                              f"{name}: its processes cannot be observed here ({located.detail})", level="INFO")
            return None
        if located.pid is None:
            last = self._last_pid.get(name)
            return ProcessSample(t=t, target=name, status="gone", pid=last, extra=extra)
        pid = located.pid
        self._last_pid[name] = pid
        try:
            main, new = self._process(pid, alive, table.create_time(pid))
            with main.oneshot():
                status = map_status(main.status())
                rss = main.memory_info().rss
                cpu = main.cpu_percent(None)
            tree_rss, tree_cpu = rss, cpu
            for child in table.descendants(pid):
                try:
                    proc, _ = self._process(child, alive, table.create_time(child))
                    tree_rss += proc.memory_info().rss
                    tree_cpu += proc.cpu_percent(None)  # 0.0 on a child's first look
                except psutil.Error:
                    continue
        except psutil.ZombieProcess:
            return ProcessSample(t=t, target=name, status="zombie", pid=pid, extra=extra)
        except psutil.NoSuchProcess:
            return ProcessSample(t=t, target=name, status="gone", pid=pid, extra=extra)
        except psutil.AccessDenied:
            self._log.problem(f"denied:{name}", f"{name}: no permission to read process {pid}")
            return ProcessSample(t=t, target=name, status="running", pid=pid, extra=extra)
        extra["tree_rss_mib"] = round(tree_rss / MIB, 1)
        return ProcessSample(
            t=t,
            target=name,
            status=status,  # type: ignore[arg-type]
            pid=pid,
            rss_mib=round(rss / MIB, 1),
            cpu_percent=None if new else round(tree_cpu, 1),
            extra=extra,
        )

    def _process(self, pid: int, alive: set[tuple[int, float]],
                 create_time: float | None = None) -> tuple[psutil.Process, bool]:
        """The cached psutil.Process, and whether it is new (CPU percent compares with the
        previous call on the same object, so a new one has no figure yet). With the pid's
        ``create_time`` from this round's table, a known process costs no /proc read here."""
        proc = None
        if create_time is None:
            proc = psutil.Process(pid)
            create_time = proc.create_time()
        key = (pid, create_time)
        alive.add(key)
        cached = self._procs.get(key)
        if cached is not None:
            return cached, False
        proc = proc or psutil.Process(pid)
        if proc.create_time() != create_time:  # the pid was reused since the table was read
            raise psutil.NoSuchProcess(pid)
        self._procs[key] = proc
        proc.cpu_percent(None)
        return proc, True


class _ProcessTable:
    """Parent and start time of every process, read once per round on first use.

    ``Process.children(recursive=True)`` reads every process's parent from /proc on each
    call: once per target per round before (issue 15). psutil caches a process's start
    time, so after the first round only the parent is read per process."""

    def __init__(self) -> None:
        self._rows: dict[int, tuple[int, float | None]] | None = None
        self._kids: dict[int, list[int]] = {}

    def _load(self) -> dict[int, tuple[int, float | None]]:
        if self._rows is None:
            rows: dict[int, tuple[int, float | None]] = {}
            for proc in psutil.process_iter(["ppid", "create_time"]):
                info = proc.info
                if info.get("ppid") is None:
                    continue
                rows[proc.pid] = (info["ppid"], info.get("create_time"))
                self._kids.setdefault(info["ppid"], []).append(proc.pid)
            self._rows = rows
        return self._rows

    def create_time(self, pid: int) -> float | None:
        row = self._load().get(pid)
        return row[1] if row is not None else None

    def descendants(self, pid: int) -> list[int]:
        """Every process below ``pid``, as of this round's table."""
        self._load()
        found, todo, seen = [], list(self._kids.get(pid, [])), {pid}
        while todo:
            child = todo.pop()
            if child in seen:
                continue
            seen.add(child)
            found.append(child)
            todo.extend(self._kids.get(child, []))
        return found
