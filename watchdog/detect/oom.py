"""OOM and fragmentation: out-of-memory errors in the server's log, told apart.

Fragmentation is an allocation that failed although enough memory was free in
total: PyTorch says how much it had "reserved but unallocated" and how much
was free; ggml says how much it tried to allocate, which NVML's free memory on
that device can be compared with. Anything else is a plain ``oom``. Both clear
after ``oom_clear_after`` without another, or when the server restarts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from watchdog.detect.base import TargetDetector, Verdict, clear, raise_
from watchdog.detect.view import gib, secs
from watchdog.trace.records import Event, GpuSample, LogLine, ProcessSample, Record

_OOM = re.compile(
    r"(CUDA out of memory|OutOfMemoryError|cudaMalloc failed|out of memory|unable to allocate CUDA\d* buffer"
    r"|failed to allocate .*(CUDA|GPU|device)|No available memory for the cache blocks)",
    re.I,
)
_NOT_OOM = re.compile(r"not enough KV cache space|preempted|swap space", re.I)
_SIZE = r"([\d.]+)\s*([KMGT]i?B)"
_TRIED = re.compile(r"Tried to allocate " + _SIZE, re.I)
_FREE = re.compile(r"of which " + _SIZE + r" is free", re.I)
_RESERVED = re.compile(_SIZE + r" is reserved by PyTorch but unallocated", re.I)
_GGML_ALLOC = re.compile(r"allocating " + _SIZE + r" on device (\d+)", re.I)
_GPU_INDEX = re.compile(r"GPU (\d+) has a total capacity", re.I)
_UNITS = {"k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0 * 1024}


def _mib(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit[0].lower()]


@dataclass(slots=True)
class OomReport:
    """What an out-of-memory log line says, in MiB where it says it."""

    tried: float | None = None
    free: float | None = None
    reserved_unallocated: float | None = None
    device: int | None = None


def parse_oom(line: str) -> OomReport | None:
    """The numbers in an out-of-memory line, or None if the line is not one."""
    if not _OOM.search(line) or _NOT_OOM.search(line):
        return None
    report = OomReport()
    if m := _TRIED.search(line):
        report.tried = _mib(*m.groups())
    if m := _FREE.search(line):
        report.free = _mib(*m.groups())
    if m := _RESERVED.search(line):
        report.reserved_unallocated = _mib(*m.groups())
    if m := _GGML_ALLOC.search(line):
        report.tried = report.tried or _mib(m.group(1), m.group(2))
        report.device = int(m.group(3))
    if m := _GPU_INDEX.search(line):
        report.device = int(m.group(1))
    return report


class _OomBase(TargetDetector):
    """Shared clearing: quiet for ``oom_clear_after``, or a restart."""

    wants = (GpuSample, LogLine, Event, ProcessSample)

    def __init__(self, view) -> None:  # type: ignore[no-untyped-def]
        super().__init__(view)
        self.last_t: float | None = None
        self.gpu_free: dict[int, float] = {}

    def observe(self, record: Record) -> Verdict | None:
        if isinstance(record, GpuSample) and record.mem_used_mib is not None:
            total = self.view.gpu_totals.get(record.index)
            if total is not None:
                self.gpu_free[record.index] = total - record.mem_used_mib
        if isinstance(record, LogLine):
            report = parse_oom(record.line)
            if report is not None and self.classify(report) == self.finding:
                first = not self.active
                self.last_t = record.t
                if first:
                    return raise_(self.describe(report, record.line), line=record.line[:500])
            return None
        if not self.active or self.last_t is None:
            return None
        restarted = (isinstance(record, Event) and record.event == "restart_finished") or (
            isinstance(record, ProcessSample) and self.view.pid_changed_t == record.t
        )
        if restarted:
            return clear("the server was restarted")
        quiet = self.view.now - self.last_t
        if quiet >= self.settings.oom_clear_after:
            return clear(f"no out-of-memory error for {secs(quiet)}")
        return None

    def classify(self, report: OomReport) -> str:
        """fragmentation when enough memory was free in total, else oom."""
        needed = report.tried
        if needed is not None:
            if report.reserved_unallocated is not None and report.reserved_unallocated >= needed:
                return "fragmentation"
            if report.free is not None and report.free >= needed:
                return "fragmentation"
            free = self._nvml_free(report.device)
            if report.free is None and report.reserved_unallocated is None and free is not None and free >= needed * 1.1:
                return "fragmentation"
        return "oom"

    def _nvml_free(self, device: int | None) -> float | None:
        if device is not None:
            return self.gpu_free.get(device)
        frees = [self.gpu_free[i] for i in self.view.gpus if i in self.gpu_free]
        return max(frees) if frees else None

    def describe(self, report: OomReport, line: str) -> str:
        parts = []
        if report.tried is not None:
            parts.append(f"tried to allocate {gib(report.tried)}")
        if report.reserved_unallocated is not None:
            parts.append(f"{gib(report.reserved_unallocated)} reserved but unallocated")
        if report.free is not None:
            parts.append(f"{gib(report.free)} free")
        elif report.tried is not None and (free := self._nvml_free(report.device)) is not None:
            parts.append(f"NVML shows {gib(free)} free")
        numbers = f" ({', '.join(parts)})" if parts else ""
        return f"{self.lead}{numbers}: {line.strip()[:160]}"

    lead = ""


class FragmentationDetector(_OomBase):
    finding = "fragmentation"
    lead = "an allocation failed although enough memory was free in total"


class OomDetector(_OomBase):
    finding = "oom"
    lead = "out of GPU memory"
