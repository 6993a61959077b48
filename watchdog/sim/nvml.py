"""The reading side of the simulated GPU: a ``pynvml``-compatible object (docs/sim-gpu.md).

``SimNvml(state_dir)`` has the subset of ``pynvml``'s functions the GPU probe
calls, returns ``pynvml``'s own structures where the real library does, and
raises ``pynvml.NVMLError`` subclasses with the real error codes, so the probe
runs the same code against a simulator as against a GPU. Reading rules:

- devices with the same index in several files are one device: memory and
  utilisation add up (utilisation capped at 100), processes are listed together;
- a process whose pid no longer exists is dropped (the driver frees it);
- a file not updated for 1.5 s reads as utilisation 0 (its writer is frozen);
- a file whose writer is gone contributes nothing;
- a device seen once stays (idle, empty) after its writers are gone.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml
from pynvml import (  # noqa: F401 - re-exported: the probe takes constants from its NVML object
    NVML_AGGREGATE_ECC,
    NVML_CLOCK_SM,
    NVML_MEMORY_ERROR_TYPE_CORRECTED,
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
    NVML_TEMPERATURE_GPU,
    NVML_VOLATILE_ECC,
    NVMLError,
    NVMLError_DriverNotLoaded,
    NVMLError_GpuIsLost,
    NVMLError_InvalidArgument,
    NVMLError_LibRmVersionMismatch,
    NVMLError_NotFound,
    NVMLError_NotSupported,
    NVMLError_Timeout,
    NVMLError_Uninitialized,
    nvmlClocksEventReasonGpuIdle,
    nvmlClocksEventReasonNone,
    nvmlClocksEventReasonSwThermalSlowdown,
    nvmlClocksThrottleReasonGpuIdle,
    nvmlClocksThrottleReasonNone,
    nvmlEventTypeNone,
    nvmlEventTypeXidCriticalError,
)

STALE_AFTER_S = 1.5
CACHE_S = 0.05
XID_POLL_S = 0.25  # how often a waiting event set looks for new XIDs (real NVML blocks in the driver)
XIDS_SUFFIX = ".xids"  # a simulator's XID file beside its state file (watchdog/sim/gpu.py)
MIB = 1024 * 1024
DRIVER_VERSION = "580.95.05"
NVML_VERSION = "13.580.95.05"
NO_INSTANCE = 0xFFFFFFFF


@dataclass
class _Device:
    index: int
    name: str
    uuid: str
    mem_total_mib: float
    used_mib: float = 0.0
    util: int = 0
    temp_c: float = 30.0
    power_w: float = 20.0
    lost: bool = False
    throttle: int = nvmlClocksEventReasonGpuIdle
    sm_clock_mhz: int = 210
    sm_clock_max_mhz: int = 1980
    ecc_dbe: int = 0
    procs: list[tuple[int, float, int]] = field(default_factory=list)  # pid, mem_mib, util


@dataclass(frozen=True)
class SimDeviceHandle:
    """What ``nvmlDeviceGetHandleByIndex`` returns here (the real one is an opaque pointer)."""

    index: int


@dataclass
class SimEventData:
    """``c_nvmlEventData_t``'s fields: device is the handle, eventData the XID."""

    device: SimDeviceHandle
    eventType: int
    eventData: int
    gpuInstanceId: int = NO_INSTANCE
    computeInstanceId: int = NO_INSTANCE


@dataclass
class SimEventSet:
    devices: dict[int, int] = field(default_factory=dict)  # index -> event type mask
    seen: dict[str, int] = field(default_factory=dict)  # file key -> last seq reported
    pending: list[SimEventData] = field(default_factory=list)
    freed: bool = False
    stamps: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (inode, mtime_ns, size) read


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie holds no GPU memory: the driver freed it when the process exited
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read_bytes(path: str, size_hint: int) -> bytes:
    """A whole file, without the buffered file object ``open`` builds (four times a second per
    simulated server, that object was a good part of the watcher's cost)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        step = max(size_hint, 4096) + 1
        chunks = []
        while True:
            chunk = os.read(fd, step)
            chunks.append(chunk)
            if len(chunk) < step:  # a regular file reads short only at its end
                return b"".join(chunks)
    finally:
        os.close(fd)


def read_state_files(state_dir: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """Every readable state file as ``(key, data)``; files of dead writers are left out."""
    result = []
    try:
        entries = sorted(os.scandir(state_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.name.endswith(".json") or entry.name.startswith("."):
            continue
        try:
            with open(entry.path, encoding="utf-8") as fh:
                data = json.load(fh)
            writer = int(data["writer_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written by a foreign tool, or not ours: ignore
        if not pid_alive(writer):
            continue
        result.append((f"{entry.name}:{writer}", data))
    return result


def device_usage(state_dir: str | Path, index: int, exclude_pid: int | None = None) -> float:
    """MiB used on device ``index`` by every writer except ``exclude_pid`` (for load decisions)."""
    used = 0.0
    for _key, data in read_state_files(state_dir):
        if data.get("writer_pid") == exclude_pid:
            continue
        for dev in data.get("devices", []):
            if dev.get("index") == index:
                used += float(dev.get("base_used_mib", 0))
        for proc in data.get("procs", []):
            if proc.get("index") == index and pid_alive(int(proc["pid"])):
                used += float(proc.get("mem_mib", 0))
    return used


class SimNvml:
    """The ``pynvml`` subset the GPU probe uses, over a directory of simulator state files."""

    NVMLError = NVMLError

    def __init__(self, state_dir: str | Path, cache_s: float = CACHE_S) -> None:
        self.state_dir = Path(state_dir)
        self.cache_s = cache_s
        self._initialised = 0
        self._known: dict[int, _Device] = {}
        self._cache: tuple[float, dict[int, _Device], bool] | None = None
        self._parsed: dict[str, tuple[tuple[int, int, int], int, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        """Constants and error classes not defined here come from pynvml itself."""
        if name.startswith(("NVML", "nvmlClocks", "nvmlEventType", "NVMLError")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    # -- life cycle ---------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        if not self.state_dir.is_dir():
            raise NVMLError_DriverNotLoaded(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        _devices, mismatch = self._read(force=True)
        if mismatch:
            raise NVMLError_LibRmVersionMismatch(pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)
        self._initialised += 1

    def nvmlShutdown(self) -> None:
        self._check()
        self._initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return DRIVER_VERSION

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._check()
        return NVML_VERSION

    # -- devices ------------------------------------------------------------------------------
    def nvmlDeviceGetCount(self) -> int:
        self._check()
        devices, _ = self._read()
        return max(devices) + 1 if devices else 0

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimDeviceHandle:
        self._device(SimDeviceHandle(int(index)))
        return SimDeviceHandle(int(index))

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> SimDeviceHandle:
        self._check()
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for dev in self._read()[0].values():
            if dev.uuid == uuid:
                return self.nvmlDeviceGetHandleByIndex(dev.index)
        raise NVMLError_NotFound(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetIndex(self, handle: SimDeviceHandle) -> int:
        return self._device(handle).index

    def nvmlDeviceGetName(self, handle: SimDeviceHandle) -> str:
        return self._device(handle).name

    def nvmlDeviceGetUUID(self, handle: SimDeviceHandle) -> str:
        return self._device(handle).uuid

    def nvmlDeviceGetMemoryInfo(self, handle: SimDeviceHandle, version: int | None = None) -> Any:
        dev = self._device(handle)
        mem = pynvml.c_nvmlMemory_t()
        total = int(dev.mem_total_mib * MIB)
        used = min(int(dev.used_mib * MIB), total)
        mem.total, mem.used, mem.free = total, used, total - used
        return mem

    def nvmlDeviceGetUtilizationRates(self, handle: SimDeviceHandle) -> Any:
        dev = self._device(handle)
        rates = pynvml.c_nvmlUtilization_t()
        rates.gpu, rates.memory = dev.util, int(dev.util * 0.6)
        return rates

    def nvmlDeviceGetTemperature(self, handle: SimDeviceHandle, sensor: int) -> int:
        dev = self._device(handle)
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError_InvalidArgument(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return int(round(dev.temp_c))

    def nvmlDeviceGetPowerUsage(self, handle: SimDeviceHandle) -> int:
        return int(self._device(handle).power_w * 1000)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: SimDeviceHandle) -> int:
        return self._device(handle).throttle

    nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons

    def nvmlDeviceGetClockInfo(self, handle: SimDeviceHandle, clock_type: int) -> int:
        dev = self._device(handle)
        if clock_type != NVML_CLOCK_SM:
            raise NVMLError_NotSupported(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return dev.sm_clock_mhz

    def nvmlDeviceGetMaxClockInfo(self, handle: SimDeviceHandle, clock_type: int) -> int:
        dev = self._device(handle)
        if clock_type != NVML_CLOCK_SM:
            raise NVMLError_NotSupported(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return dev.sm_clock_max_mhz

    def nvmlDeviceGetTotalEccErrors(self, handle: SimDeviceHandle, error_type: int, counter_type: int) -> int:
        dev = self._device(handle)
        return dev.ecc_dbe if error_type == NVML_MEMORY_ERROR_TYPE_UNCORRECTED else 0

    def nvmlDeviceGetRemappedRows(self, handle: SimDeviceHandle) -> tuple[int, int, int, int]:
        dev = self._device(handle)
        return (0, dev.ecc_dbe, 1 if dev.ecc_dbe else 0, 0)

    def nvmlDeviceGetMigMode(self, handle: SimDeviceHandle) -> list[int]:
        self._device(handle)
        raise NVMLError_NotSupported(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: SimDeviceHandle) -> list[Any]:
        dev = self._device(handle)
        result = []
        for pid, mem_mib, _util in dev.procs:
            info = pynvml.c_nvmlProcessInfo_t()
            info.pid, info.usedGpuMemory = pid, int(mem_mib * MIB)
            info.gpuInstanceId = info.computeInstanceId = NO_INSTANCE
            result.append(info)
        return result

    nvmlDeviceGetComputeRunningProcesses_v3 = nvmlDeviceGetComputeRunningProcesses

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: SimDeviceHandle) -> list[Any]:
        self._device(handle)
        return []

    def nvmlDeviceGetProcessUtilization(self, handle: SimDeviceHandle, last_seen_us: int) -> list[Any]:
        """Samples of busy processes; NOT_FOUND when none, as the driver answers when idle."""
        dev = self._device(handle)
        now_us = int(time.time() * 1e6)
        samples = []
        if now_us > last_seen_us:
            for pid, _mem, util in dev.procs:
                if util > 0:
                    sample = pynvml.c_nvmlProcessUtilizationSample_t()
                    sample.pid, sample.timeStamp = pid, now_us
                    sample.smUtil, sample.memUtil = util, int(util * 0.6)
                    sample.encUtil = sample.decUtil = 0
                    samples.append(sample)
        if not samples:
            raise NVMLError_NotFound(pynvml.NVML_ERROR_NOT_FOUND)
        return samples

    # -- XID events ---------------------------------------------------------------------------
    def nvmlEventSetCreate(self) -> SimEventSet:
        self._check()
        return SimEventSet()

    def nvmlDeviceRegisterEvents(self, handle: SimDeviceHandle, event_types: int, event_set: SimEventSet) -> None:
        dev = self._device(handle)
        if not event_types & nvmlEventTypeXidCriticalError:
            raise NVMLError_NotSupported(pynvml.NVML_ERROR_NOT_SUPPORTED)
        event_set.devices[dev.index] = event_set.devices.get(dev.index, 0) | int(event_types)
        for key, data in self._changed_files(event_set):  # only events after registration count
            event_set.seen[key] = max([int(x.get("seq", 0)) for x in data.get("xids", [])], default=0)

    def nvmlEventSetWait_v2(self, event_set: SimEventSet, timeout_ms: int) -> SimEventData:
        """The next XID on a registered device, or ``NVMLError_Timeout`` after ``timeout_ms``."""
        self._check()
        deadline = time.monotonic() + max(timeout_ms, 0) / 1000.0
        while True:
            if event_set.freed:
                raise NVMLError_InvalidArgument(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            if not event_set.pending:
                self._collect_events(event_set)
            if event_set.pending:
                return event_set.pending.pop(0)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NVMLError_Timeout(pynvml.NVML_ERROR_TIMEOUT)
            time.sleep(min(XID_POLL_S, remaining))

    nvmlEventSetWait = nvmlEventSetWait_v2

    def nvmlEventSetFree(self, event_set: SimEventSet) -> None:
        event_set.freed = True

    def _collect_events(self, event_set: SimEventSet) -> None:
        for key, data in self._changed_files(event_set):
            last = event_set.seen.get(key, 0)
            for xid in data.get("xids", []):
                seq, index = int(xid.get("seq", 0)), int(xid.get("index", -1))
                if seq <= last:
                    continue
                last = seq
                if event_set.devices.get(index, 0) & nvmlEventTypeXidCriticalError:
                    event_set.pending.append(SimEventData(
                        SimDeviceHandle(index), nvmlEventTypeXidCriticalError, int(xid.get("xid", 0))))
            event_set.seen[key] = last

    def _changed_files(self, event_set: SimEventSet) -> list[tuple[str, dict[str, Any]]]:
        """The files whose XIDs may have changed since the event set last looked. A simulator
        keeps its XIDs in ``<instance>.xids``, rewritten only when one is injected: a listing
        and a stat each per wait step, a read only when it changed. Reading the state file
        instead (rewritten every 0.25 s) cost the daemon a seventh of its CPU in the footprint
        benchmark (issue 15); a state file without an XID file beside it is still watched so."""
        changed = []
        try:
            entries = list(os.scandir(self.state_dir))
        except FileNotFoundError:
            return []
        names = {entry.name for entry in entries}
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.name.endswith(XIDS_SUFFIX):
                key = entry.name[: -len(XIDS_SUFFIX)] + ".json"  # the state file's key
            elif entry.name.endswith(".json") and entry.name[:-5] + XIDS_SUFFIX not in names:
                key = entry.name
            else:
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if event_set.stamps.get(entry.name) == stamp:
                continue
            try:
                raw = _read_bytes(entry.path, st.st_size)
            except OSError:
                continue
            try:
                data = json.loads(raw)
                writer = int(data["writer_pid"])
            except (ValueError, KeyError, TypeError):
                continue  # half-written: read it again next time
            event_set.stamps[entry.name] = stamp
            if pid_alive(writer):
                changed.append((f"{key}:{writer}", data))
        return changed

    # -- reading the files --------------------------------------------------------------------
    def _check(self) -> None:
        if self._initialised <= 0:
            raise NVMLError_Uninitialized(pynvml.NVML_ERROR_UNINITIALIZED)

    def _device(self, handle: SimDeviceHandle) -> _Device:
        self._check()
        devices, mismatch = self._read()
        if mismatch:
            raise NVMLError_LibRmVersionMismatch(pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)
        if not isinstance(handle, SimDeviceHandle) or handle.index not in devices:
            raise NVMLError_InvalidArgument(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        dev = devices[handle.index]
        if dev.lost:
            raise NVMLError_GpuIsLost(pynvml.NVML_ERROR_GPU_IS_LOST)
        return dev

    def _read(self, force: bool = False) -> tuple[dict[int, _Device], bool]:
        """The devices as the files say now (cached ``cache_s`` so one sampling round agrees)."""
        with self._lock:
            now = time.monotonic()
            if not force and self._cache and now - self._cache[0] < self.cache_s:
                return self._cache[1], self._cache[2]
            devices, mismatch = self._merge(self._state_files())
            self._cache = (now, devices, mismatch)
            return devices, mismatch

    def _state_files(self) -> list[tuple[str, dict[str, Any]]]:
        """As :func:`read_state_files`, parsing only the files written since the last look (a stat
        each otherwise): with 32 simulated servers, re-parsing every file for every sampling
        round made the simulated NVML miss the GPU probe's one-second deadline (issue 15)."""
        result = []
        try:
            entries = sorted(os.scandir(self.state_dir), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        parsed: dict[str, tuple[tuple[int, int, int], int, dict[str, Any]]] = {}
        for entry in entries:
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            known = self._parsed.get(entry.name)
            if known is None or known[0] != stamp:
                try:
                    with open(entry.path, encoding="utf-8") as fh:
                        data = json.load(fh)
                    known = (stamp, int(data["writer_pid"]), data)
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # half-written by a foreign tool, or not ours: ignore
            parsed[entry.name] = known
            if pid_alive(known[1]):
                result.append((f"{entry.name}:{known[1]}", known[2]))
        self._parsed = parsed
        return result

    def _merge(self, files: list[tuple[str, dict[str, Any]]]) -> tuple[dict[int, _Device], bool]:
        now = time.time()
        devices: dict[int, _Device] = {}
        busy: dict[int, bool] = {}
        mismatch = False
        for _key, data in files:
            mismatch = mismatch or bool(data.get("driver_mismatch"))
            fresh = now - float(data.get("updated", 0)) <= STALE_AFTER_S
            for raw in data.get("devices", []):
                index = int(raw["index"])
                dev = devices.get(index)
                if dev is None:
                    known = self._known.get(index)
                    dev = devices[index] = _Device(
                        index, known.name if known else str(raw.get("name", "Simulated GPU")),
                        known.uuid if known else str(raw.get("uuid", f"GPU-sim-{index}")),
                        known.mem_total_mib if known else float(raw.get("mem_total_mib", 0)))
                    self._known.setdefault(index, _Device(index, dev.name, dev.uuid, dev.mem_total_mib))
                dev.used_mib += float(raw.get("base_used_mib", 0))
                util = int(raw.get("util", 0)) if fresh else 0
                dev.util = min(100, dev.util + util)
                if fresh:
                    busy[index] = busy.get(index, False) or util > 0
                    dev.temp_c = max(dev.temp_c, float(raw.get("temp_c", 30)))
                    dev.power_w = max(dev.power_w, float(raw.get("power_w", 20)))
                dev.lost = dev.lost or bool(raw.get("lost"))
                dev.throttle |= int(raw.get("throttle_reasons", 0))
                if fresh and "sm_clock_mhz" in raw:
                    dev.sm_clock_mhz = max(dev.sm_clock_mhz, int(raw["sm_clock_mhz"]))
                if "sm_clock_max_mhz" in raw:
                    dev.sm_clock_max_mhz = int(raw["sm_clock_max_mhz"])
                dev.ecc_dbe += int(raw.get("ecc_dbe", 0))
            for proc in data.get("procs", []):
                index, pid = int(proc["index"]), int(proc["pid"])
                if index not in devices or not pid_alive(pid):
                    continue
                util = int(proc.get("util", 0)) if fresh else 0
                devices[index].procs.append((pid, float(proc.get("mem_mib", 0)), util))
                devices[index].used_mib += float(proc.get("mem_mib", 0))
        for index, dev in devices.items():
            if busy.get(index):
                dev.throttle &= ~nvmlClocksEventReasonGpuIdle
        for index, known in self._known.items():  # a GPU stays when its users are gone
            devices.setdefault(index, _Device(index, known.name, known.uuid, known.mem_total_mib))
        if devices:  # gaps in the numbering are idle GPUs like the lowest one
            lowest = devices[min(devices)]
            for index in range(max(devices)):
                devices.setdefault(index, _Device(index, lowest.name, f"GPU-sim-{index}",
                                                  lowest.mem_total_mib))
        return devices, mismatch
