"""The process probe: each target's main process, its state, memory and CPU (psutil).

CPU is summed over the whole process tree, so a busy child (Ollama's runner,
vLLM's engine core) counts; RSS is the main process's own, with the tree's
total beside it (``extra.tree_rss_mib``). CPU percent needs two looks at a
process, so the first sample of a process has none.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
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
        table = _ProcessTable()  # children from the kernel's lists, or one scan shared by all targets
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
            main, new = self._process(pid, alive)
            with main.oneshot():
                status = map_status(main.status())
                rss = main.memory_info().rss
                cpu = main.cpu_percent(None)
            tree_rss, tree_cpu = rss, cpu
            for child in table.descendants(pid):
                try:
                    proc, _ = self._process(child, alive)
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

    def _process(self, pid: int, alive: set[tuple[int, float]]) -> tuple[psutil.Process, bool]:
        """The cached psutil.Process, and whether it is new (CPU percent compares with the
        previous call on the same object, so a new one has no figure yet)."""
        proc = psutil.Process(pid)
        key = (pid, proc.create_time())
        alive.add(key)
        cached = self._procs.get(key)
        if cached is not None:
            return cached, False
        self._procs[key] = proc
        proc.cpu_percent(None)
        return proc, True


@functools.cache
def _children_files() -> bool:
    """Whether the kernel lists each thread's children in /proc (CONFIG_PROC_CHILDREN)."""
    return os.path.exists(f"/proc/self/task/{threading.get_native_id()}/children")


class _ProcessTable:
    """The descendants of the targets' processes, for one round.

    ``Process.children(recursive=True)`` reads the parent of every process on the host, and
    did so once per target per round (issue 15). Here a tree is walked from the kernel's own
    lists of children (/proc/PID/task/TID/children): reads proportional to the tree, not to
    the host. Where the kernel has no such lists, every process is read once per round, and
    shared by all targets."""

    def __init__(self) -> None:
        self._kids: dict[int, list[int]] | None = None if _children_files() else self._scan()

    @staticmethod
    def _scan() -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {}
        for proc in psutil.process_iter(["ppid"]):
            ppid = proc.info.get("ppid")
            if ppid is not None:
                kids.setdefault(ppid, []).append(proc.pid)
        return kids

    def children(self, pid: int) -> list[int]:
        if self._kids is not None:
            return self._kids.get(pid, [])
        kids: list[int] = []
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return []
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                    kids.extend(int(k) for k in fh.read().split())
            except (OSError, ValueError):
                continue  # the thread ended meanwhile
        return kids

    def descendants(self, pid: int) -> list[int]:
        """Every process below ``pid`` now."""
        found, todo, seen = [], [pid], {pid}
        while todo:
            for child in self.children(todo.pop()):
                if child not in seen:
                    seen.add(child)
                    found.append(child)
                    todo.append(child)
        return found
