"""The GPU probe: one ``GpuSample`` per device per round, read through NVML (or the simulator's copy).

Per device: utilisation, memory, temperature, power, clock event (throttle)
reasons, the SM clock and its maximum, and every so often ECC and remapped-row counts; per process: used
memory and, where the driver keeps samples, utilisation; each process tagged
with the target it belongs to (``attribute``). A background thread waits on
XID critical-error events (:class:`XidWatcher`).

Failure handling, the point of this module:

- no driver or no GPU: said once in the log, ``status`` tells, nothing is
  emitted, and the probe looks again now and then;
- a device that stops answering (``GPU is lost``, ``Unknown Error``) gives a
  ``GpuSample`` with ``error`` set and no readings, every round, while the
  other devices go on; after a while the library is initialised again;
- a library that stops answering as a whole (driver/library version mismatch
  after a driver update, uninitialised) gives error samples for every known
  device and is initialised again after ``retry_init_s``;
- a call that hangs in the driver: the round gives up at its deadline with
  ``nvml_hung`` samples, and no new call is made until the stuck one returns;
- MIG: memory per MIG instance (``extra.mig``), utilisation not supported.

Slow calls are kept out of the loop (PCIe throughput is never read) and every
call is timed (:meth:`GpuProbe.timings`).
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml

from watchdog.logs import LogOnce
from watchdog.probes.base import Clock, Emit
from watchdog.probes.blocking import BlockingRunner, Busy, DeadlineExceeded
from watchdog.probes.nvml import (
    LIBRARY_CODES,
    NO_DRIVER_CODES,
    NVMLError,
    TimedNvml,
    Unsupported,
    describe,
    error_code,
    error_name,
)
from watchdog.trace.records import GpuDevice, GpuProc, GpuSample, Xid

Attribute = Callable[[int, list[int]], dict[int, "str | None"]]
"""(device index, pids on it) -> {pid: target name or None}. Runs in the probe's worker thread."""

MIB = 1024 * 1024
HUNG = "nvml_hung"
_THROTTLE_BITS = (
    (0x2, "applications_clocks"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal"),
    (0x40, "hw_thermal"),
    (0x80, "hw_power_brake"),
    (0x100, "display_clocks"),
)


def throttle_names(mask: int) -> list[str]:
    """Active clock event reasons, without "GPU idle" (which is not a slowdown)."""
    return [name for bit, name in _THROTTLE_BITS if mask & bit]


def _mib(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(round(int(value) / MIB))
    except (TypeError, ValueError):
        return None


FIRST_ROUND_DEADLINE_S = 10.0
"""The deadline of the rounds before the first answer (start-up: attribution from scratch)."""


@dataclass
class _Mig:
    handle: Any
    gpu_instance: int | None


@dataclass
class _Device:
    index: int
    handle: Any
    name: str
    uuid: str
    mem_total_mib: int | None
    mig: list[_Mig] = field(default_factory=list)
    last_proc_ts: int = 0
    failing_since: float | None = None
    next_slow: float = 0.0
    broken: int | None = None  # NVML error code when the device could not even be described


class _LibraryDown(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class GpuProbe:
    """Samples every device once per :meth:`round`; blocking NVML work runs in its own thread."""

    def __init__(
        self,
        table: Any | None,
        clock: Clock,
        emit: Emit,
        *,
        attribute: Attribute | None = None,
        deadline: float = 2.0,
        retry_init_s: float = 10.0,
        no_driver_retry_s: float = 300.0,
        slow_every_s: float = 30.0,
        required: bool = False,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.nvml = TimedNvml(table) if table is not None else None
        self.clock = clock
        self.emit = emit
        self.attribute = attribute
        self.deadline = deadline
        self._answered = False
        self.retry_init_s = retry_init_s
        self.no_driver_retry_s = no_driver_retry_s
        self.slow_every_s = slow_every_s
        self.required = required
        self.monotonic = monotonic
        self.status = "disabled (gpu_backend = none)" if table is None else "not started"
        self.driver_version: str | None = None
        self.nvml_version: str | None = None
        self.generation = 0  # bumps on every (re)initialisation; the XID thread follows it
        self._devices: list[_Device] = []
        self._initialised = False
        self._down_error = "nvml_uninitialized"
        self._last_reinit = 0.0
        self._next_init = 0.0
        self._runner = BlockingRunner("gpu")
        self._round_lock = asyncio.Lock()
        self._log = LogOnce("gpu")
        self._lock = threading.Lock()
        self.round_seconds: float | None = None
        self._xid: XidWatcher | None = None

    # --- what the daemon calls --------------------------------------------------------------

    @property
    def devices(self) -> list[GpuDevice]:
        """The devices seen (for trace headers)."""
        with self._lock:
            return [
                GpuDevice(index=d.index, name=d.name, mem_total_mib=d.mem_total_mib, extra={"uuid": d.uuid})
                for d in self._devices
            ]

    def timings(self) -> dict[str, dict[str, float | int]]:
        """Per NVML function: count, errors, mean/max/last microseconds."""
        return self.nvml.timings() if self.nvml is not None else {}

    async def round(self) -> list[GpuSample]:
        """Sample every device once, emit and return the samples. Never raises."""
        if self.nvml is None:
            return []
        async with self._round_lock:  # rounds never overlap (an overlap is not a hung driver)
            return self._emit_all(await self._take_round())

    async def _take_round(self) -> list[GpuSample]:
        assert self.nvml is not None
        t = self.clock()
        try:
            # The first round attributes every GPU process to its target from scratch (a socket
            # scan per target found by its port): at 32 targets on a busy host that took over
            # the 1 s deadline and raised a false nvml_hung on every GPU at start (issue 15).
            deadline = self.deadline if self._answered else max(self.deadline, FIRST_ROUND_DEADLINE_S)
            samples = await self._runner.run(self._sample_all, timeout=deadline)
            self._answered = True
        except (DeadlineExceeded, Busy) as exc:
            self._log.problem("hung", f"NVML did not answer: {exc}", level="ERROR")
            samples = self._error_samples(t, HUNG)
        except Exception as exc:  # noqa: BLE001 - a probe never raises into the loop
            self._log.problem("crash", f"GPU probe failed: {type(exc).__name__}: {exc}", level="ERROR")
            samples = self._error_samples(t, f"probe_error: {type(exc).__name__}")
        else:
            self._log.ok("hung", "NVML answers again")
        return samples

    def _emit_all(self, samples: list[GpuSample]) -> list[GpuSample]:
        for sample in samples:
            self.emit(sample)
        return samples

    def start_xid_watch(self, loop: asyncio.AbstractEventLoop | None = None, wait_ms: int = 1000) -> None:
        """Start the XID thread; its records reach ``emit`` on ``loop`` (default: the running loop)."""
        if self.nvml is None or self._xid is not None:
            return
        loop = loop or asyncio.get_running_loop()
        emit = self.emit

        def emit_threadsafe(record: Xid) -> None:
            loop.call_soon_threadsafe(emit, record)

        self._xid = XidWatcher(self, emit_threadsafe, wait_ms=wait_ms)
        self._xid.start()

    def close(self) -> None:
        """Stop the XID thread and the worker; shut NVML down if nothing is stuck."""
        if self._xid is not None:
            self._xid.stop()
            self._xid = None
        if not self._runner.stuck and self._initialised and self.nvml is not None:
            try:
                self._runner.submit(self._shutdown).result(timeout=self.deadline)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        self._runner.close()

    # --- the blocking part (worker thread) --------------------------------------------------

    def _sample_all(self) -> list[GpuSample]:
        start = time.perf_counter()
        try:
            return self._sample_all_inner()
        finally:
            self.round_seconds = time.perf_counter() - start

    def _sample_all_inner(self) -> list[GpuSample]:
        now = self.monotonic()
        if not self._initialised:
            if now < self._next_init:
                return self._error_samples(self.clock(), self._down_error)
            if not self._init(now):
                return self._error_samples(self.clock(), self._down_error)
        samples: list[GpuSample] = []
        devices = list(self._devices)
        for position, device in enumerate(devices):
            t = self.clock()
            try:
                samples.append(self._sample(device, t, now))
                if device.failing_since is not None:
                    self._log.ok(f"dev{device.index}", f"GPU {device.index} answers again")
                device.failing_since = None
            except _LibraryDown as down:
                self._library_lost(down.error, now)
                samples.append(_error_sample(t, device.index, down.error))
                samples.extend(_error_sample(t, d.index, down.error) for d in devices[position + 1 :])
                return samples
            except NVMLError as exc:
                samples.append(_error_sample(t, device.index, error_name(exc)))
                self._log.problem(f"dev{device.index}", f"GPU {device.index} does not answer: {describe(exc)}",
                                  level="ERROR")
                if device.failing_since is None:
                    device.failing_since = now
        failing_long = any(
            d.failing_since is not None and now - d.failing_since >= self.retry_init_s for d in devices
        )
        if failing_long and now - self._last_reinit >= self.retry_init_s:
            # A GPU that was reset comes back only after the library is started again. The
            # samples of this round are taken; the next round reads the new handles.
            self._last_reinit = now
            self._shutdown()
            self._initialised = False
            self._init(now)
        return samples

    def _init(self, now: float) -> bool:
        assert self.nvml is not None
        nvml = self.nvml
        try:
            nvml.call("nvmlInit")
            count = nvml.call("nvmlDeviceGetCount")
            devices = [self._describe_or_placeholder(i) for i in range(count)]
            with self._lock:
                known = list(self._devices)
            for old in known[count:]:
                # A GPU that fell off the bus: keep reporting it, as an error.
                self._log.problem(f"dev{old.index}", f"GPU {old.index} ({old.name}) is gone from NVML",
                                  level="ERROR")
                devices.append(_placeholder(old.index, old, pynvml.NVML_ERROR_GPU_NOT_FOUND))
        except NVMLError as exc:
            code = error_code(exc)
            self._initialised = False
            if code in NO_DRIVER_CODES and not self._devices:
                self.status = f"no NVIDIA driver ({describe(exc)})"
                self._log.problem("init", f"GPU probe: {self.status}; no GPU samples", level=self._quiet_level)
                self._next_init = now + self.no_driver_retry_s
            else:
                self.status = f"NVML unavailable: {describe(exc)}"
                self._log.problem("init", f"GPU probe: {self.status}", level="ERROR")
                self._next_init = now + self.retry_init_s
                self._down_error = error_name(exc)
            return False
        try:
            self.driver_version = _text(nvml.call("nvmlSystemGetDriverVersion"))
            self.nvml_version = _text(nvml.call("nvmlSystemGetNVMLVersion"))
        except NVMLError:
            pass
        with self._lock:
            self._devices = devices
        self._initialised = True
        self.generation += 1
        nvml.forget_unsupported()
        if not devices:
            self.status = "no GPU found"
            self._log.problem("init", "GPU probe: NVML found no GPU; no GPU samples", level=self._quiet_level)
            self._initialised = False
            self._next_init = now + self.no_driver_retry_s
            return False
        self.status = f"ok: {len(devices)} GPU(s), driver {self.driver_version}"
        self._log.ok("init", f"GPU probe: {self.status}")
        return True

    @property
    def _quiet_level(self) -> str:
        return "WARNING" if self.required else "INFO"

    def _describe_or_placeholder(self, index: int) -> _Device:
        try:
            return self._describe_device(index)
        except NVMLError as exc:
            if error_code(exc) in LIBRARY_CODES:
                raise
            with self._lock:
                old = next((d for d in self._devices if d.index == index), None)
            self._log.problem(f"dev{index}", f"GPU {index} does not answer: {describe(exc)}", level="ERROR")
            return _placeholder(index, old, error_code(exc) or pynvml.NVML_ERROR_UNKNOWN)

    def _describe_device(self, index: int) -> _Device:
        assert self.nvml is not None
        nvml = self.nvml
        handle = nvml.call("nvmlDeviceGetHandleByIndex", index)
        name = _text(nvml.call("nvmlDeviceGetName", handle))
        try:
            uuid = _text(nvml.call("nvmlDeviceGetUUID", handle))
        except NVMLError:
            uuid = ""
        try:
            total = _mib(nvml.call("nvmlDeviceGetMemoryInfo", handle).total)
        except NVMLError:
            total = None
        device = _Device(index=index, handle=handle, name=name, uuid=uuid, mem_total_mib=total)
        device.mig = self._mig_instances(device)
        return device

    def _mig_instances(self, device: _Device) -> list[_Mig]:
        assert self.nvml is not None
        nvml = self.nvml
        try:
            current, _pending = nvml.optional(device.index, "nvmlDeviceGetMigMode", device.handle)
        except Unsupported:
            return []
        if current != nvml.const("NVML_DEVICE_MIG_ENABLE", 1):
            return []
        instances = []
        try:
            slots = nvml.optional(device.index, "nvmlDeviceGetMaxMigDeviceCount", device.handle)
        except Unsupported:
            return []
        for slot in range(slots):
            try:
                handle = nvml.call("nvmlDeviceGetMigDeviceHandleByIndex", device.handle, slot)
            except NVMLError as exc:
                if error_code(exc) == pynvml.NVML_ERROR_NOT_FOUND:
                    continue
                raise
            try:
                gi = nvml.optional(device.index, "nvmlDeviceGetGpuInstanceId", handle)
            except Unsupported:
                gi = None
            instances.append(_Mig(handle=handle, gpu_instance=gi))
        return instances

    def _revive(self, placeholder: _Device) -> _Device:
        """A device that could not be described at init: try again (it may be back)."""
        try:
            device = self._describe_device(placeholder.index)
        except NVMLError as exc:
            if error_code(exc) in LIBRARY_CODES:
                raise _LibraryDown(error_name(exc)) from None
            raise NVMLError(placeholder.broken) from None  # still the first reason
        device.failing_since = placeholder.failing_since
        with self._lock:
            self._devices = [device if d is placeholder else d for d in self._devices]
        return device

    def _library_lost(self, error: str, now: float, log: bool = True) -> None:
        self._initialised = False
        self._down_error = error
        self._next_init = now + self.retry_init_s
        self.status = f"NVML lost: {error}; starting it again in {self.retry_init_s:g}s"
        if log:
            self._log.problem("library", f"GPU probe: {self.status}", level="ERROR")
        self._shutdown()

    def _shutdown(self) -> None:
        if self.nvml is None:
            return
        try:
            self.nvml.call("nvmlShutdown")
        except Exception:  # noqa: BLE001 - it is being restarted anyway
            pass

    def _error_samples(self, t: float, error: str) -> list[GpuSample]:
        with self._lock:
            return [_error_sample(t, d.index, error) for d in self._devices]

    def _sample(self, device: _Device, t: float, now: float) -> GpuSample:
        """One device. NVMLError for a device failure; _LibraryDown when the library is gone."""
        assert self.nvml is not None
        if device.broken is not None:
            device = self._revive(device)
        nvml, h, i = self.nvml, device.handle, device.index
        try:
            extra: dict[str, Any] = {}
            memory = _optional(nvml, i, "nvmlDeviceGetMemoryInfo", h)
            mem_used = _mib(memory.used) if memory is not None else None
            if memory is not None and device.mem_total_mib is None:
                device.mem_total_mib = _mib(memory.total)
            if device.mem_total_mib is not None:
                extra["mem_total_mib"] = device.mem_total_mib  # so every sample can be judged alone
            util_rates = _optional(nvml, i, "nvmlDeviceGetUtilizationRates", h)
            util = float(util_rates.gpu) if util_rates is not None else None
            temp = _optional(nvml, i, "nvmlDeviceGetTemperature", h, nvml.const("NVML_TEMPERATURE_GPU", 0))
            power_mw = _optional(nvml, i, "nvmlDeviceGetPowerUsage", h)
            reasons = _optional(nvml, i, "nvmlDeviceGetCurrentClocksEventReasons", h)
            if reasons is None and not nvml.has("nvmlDeviceGetCurrentClocksEventReasons"):
                reasons = _optional(nvml, i, "nvmlDeviceGetCurrentClocksThrottleReasons", h)
            if reasons:
                names = throttle_names(int(reasons))
                if names:
                    extra["throttle"] = names
            sm = nvml.const("NVML_CLOCK_SM", 1)
            clock = _optional(nvml, i, "nvmlDeviceGetClockInfo", h, sm)
            if clock is not None:
                extra["sm_clock_mhz"] = int(clock)
                clock_max = _optional(nvml, i, "nvmlDeviceGetMaxClockInfo", h, sm)
                if clock_max:
                    extra["sm_clock_max_mhz"] = int(clock_max)
            procs = self._processes(device, extra)
            if device.mig:
                extra["mig"] = self._mig_memory(device)
                if mem_used is None:
                    mem_used = sum(m.get("mem_used_mib") or 0 for m in extra["mig"])
            if memory is None and not device.mig:
                raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            if now >= device.next_slow:
                device.next_slow = now + self.slow_every_s
                extra.update(self._health_counters(device))
        except NVMLError as exc:
            if error_code(exc) in LIBRARY_CODES:
                raise _LibraryDown(error_name(exc)) from None
            raise
        if self.attribute is not None and procs:
            owners = self.attribute(i, [p.pid for p in procs])
            for proc in procs:
                proc.target = owners.get(proc.pid)
        return GpuSample(
            t=t,
            index=i,
            util=util,
            mem_used_mib=mem_used,
            procs=procs,
            temp_c=float(temp) if temp is not None else None,
            power_w=round(power_mw / 1000.0, 1) if power_mw is not None else None,
            extra=extra,
        )

    def _processes(self, device: _Device, extra: dict[str, Any]) -> list[GpuProc]:
        assert self.nvml is not None
        nvml = self.nvml
        handles = [m.handle for m in device.mig] or [device.handle]
        memory: dict[int, int | None] = {}
        for handle in handles:
            for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                for info in _optional(nvml, device.index, fn, handle) or ():
                    pid = int(info.pid)
                    mib = _mib(getattr(info, "usedGpuMemory", None))
                    if pid in memory and memory[pid] is not None:
                        mib = max(memory[pid] or 0, mib or 0)
                    memory[pid] = mib
        procs = [GpuProc(pid=pid, mem_mib=mib) for pid, mib in sorted(memory.items())]
        utils = self._process_utilisation(device)
        for proc in procs:
            if proc.pid in utils:
                proc.extra["util"] = utils[proc.pid]
        return procs

    def _process_utilisation(self, device: _Device) -> dict[int, float]:
        """Latest SM utilisation per pid since the last round; {} when the driver has no samples."""
        assert self.nvml is not None
        if device.mig:
            return {}
        samples = _optional(self.nvml, device.index, "nvmlDeviceGetProcessUtilization", device.handle,
                            device.last_proc_ts)
        latest: dict[int, tuple[int, float]] = {}
        for sample in samples or ():
            ts = int(getattr(sample, "timeStamp", 0))
            pid = int(sample.pid)
            if pid not in latest or ts >= latest[pid][0]:
                latest[pid] = (ts, float(sample.smUtil))
            device.last_proc_ts = max(device.last_proc_ts, ts)
        return {pid: util for pid, (_, util) in latest.items()}

    def _mig_memory(self, device: _Device) -> list[dict[str, Any]]:
        assert self.nvml is not None
        out = []
        for number, mig in enumerate(device.mig):
            memory = _optional(self.nvml, device.index * 1000 + number, "nvmlDeviceGetMemoryInfo", mig.handle)
            out.append(
                {
                    "gpu_instance": mig.gpu_instance,
                    "mem_used_mib": _mib(memory.used) if memory is not None else None,
                    "mem_total_mib": _mib(memory.total) if memory is not None else None,
                }
            )
        return out

    def _health_counters(self, device: _Device) -> dict[str, Any]:
        """ECC and remapped rows: slow to change, read every ``slow_every_s``."""
        assert self.nvml is not None
        nvml, out = self.nvml, {}
        ecc = _optional(
            nvml,
            device.index,
            "nvmlDeviceGetTotalEccErrors",
            device.handle,
            nvml.const("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
            nvml.const("NVML_VOLATILE_ECC", 0),
        )
        if ecc is not None:
            out["ecc_uncorrected"] = int(ecc)
        rows = _optional(nvml, device.index, "nvmlDeviceGetRemappedRows", device.handle)
        if rows is not None:
            corr, unc, pending, failure = (int(v) for v in tuple(rows)[:4])
            out["remapped_rows"] = {
                "correctable": corr,
                "uncorrectable": unc,
                "pending": bool(pending),
                "failure": bool(failure),
            }
        return out

    # --- for the XID thread -----------------------------------------------------------------

    def handles(self) -> tuple[int, list[tuple[int, Any]]]:
        """(generation, [(index, handle)]) of the current initialisation."""
        with self._lock:
            if not self._initialised:
                return self.generation, []
            return self.generation, [(d.index, d.handle) for d in self._devices if d.handle is not None]


def _placeholder(index: int, old: _Device | None, code: int) -> _Device:
    return _Device(
        index=index,
        handle=None,
        name=old.name if old else "",
        uuid=old.uuid if old else "",
        mem_total_mib=old.mem_total_mib if old else None,
        broken=code,
    )


def _optional(nvml: TimedNvml, device: int, name: str, *args: Any) -> Any:
    try:
        return nvml.optional(device, name, *args)
    except Unsupported:
        return None


def _error_sample(t: float, index: int, error: str) -> GpuSample:
    return GpuSample(t=t, index=index, util=None, mem_used_mib=None, error=error)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class XidWatcher:
    """A daemon thread that waits on NVML XID critical-error events and emits ``Xid`` records.

    ``nvmlEventSetWait_v2`` returns TIMEOUT when nothing happens, which lets
    the thread notice ``stop`` and a re-initialisation of the library (it
    then registers again on the new handles).
    """

    def __init__(self, probe: GpuProbe, emit: Emit, *, wait_ms: int = 1000) -> None:
        assert probe.nvml is not None
        self.probe = probe
        self.nvml = probe.nvml
        self.emit = emit
        self.wait_ms = wait_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="iw-xid", daemon=True)
        self._log = LogOnce("gpu.xid")
        self.registered: list[int] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout if timeout is not None else self.wait_ms / 1000.0 + 1.0)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        # A reference of its own on the library (NVML counts nvmlInit calls): the probe may
        # shut NVML down and start it again while this thread waits on an event set.
        try:
            self.nvml.call("nvmlInit")
            own_reference = True
        except Exception:  # noqa: BLE001 - the probe reports the library's state
            own_reference = False
        try:
            self._loop()
        finally:
            if own_reference:
                try:
                    self.nvml.call("nvmlShutdown")
                except Exception:  # noqa: BLE001 - best effort at exit
                    pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            generation, handles = self.probe.handles()
            if not handles:
                self._stop.wait(0.5)
                continue
            try:
                self._watch(generation, handles)
            except Exception as exc:  # noqa: BLE001 - keep watching after a failure
                self._log.problem("watch", f"XID events unavailable: {describe(exc)}", level="WARNING")
                self._stop.wait(min(self.probe.retry_init_s, 5.0))

    def _watch(self, generation: int, handles: list[tuple[int, Any]]) -> None:
        nvml = self.nvml
        xid_type = nvml.const("nvmlEventTypeXidCriticalError", 0x8)
        event_set = nvml.call("nvmlEventSetCreate")
        try:
            registered = []
            for index, handle in handles:
                try:
                    nvml.call("nvmlDeviceRegisterEvents", handle, xid_type, event_set)
                    registered.append(index)
                except NVMLError as exc:
                    self._log.problem(f"register{index}", f"GPU {index}: no XID events ({describe(exc)})",
                                      level="INFO")
            self.registered = registered
            if not registered:
                self._stop.wait(self.probe.no_driver_retry_s)
                return
            self._log.ok("watch", "XID events watched again")
            # Waited on directly, not through nvml.call: a wait that times out after
            # wait_ms would read as the slowest NVML call of all in the timings.
            wait = nvml.table.nvmlEventSetWait_v2
            while not self._stop.is_set() and self.probe.generation == generation:
                try:
                    data = wait(event_set, self.wait_ms)
                except NVMLError as exc:
                    if error_code(exc) == pynvml.NVML_ERROR_TIMEOUT:
                        continue
                    raise
                if int(getattr(data, "eventType", xid_type)) & xid_type == 0:
                    continue
                pid = getattr(data, "pid", None)
                for index, extra in self._indexes_of(data.device, handles, registered):
                    self.emit(Xid(t=self.probe.clock(), index=index, xid=int(data.eventData),
                                  pid=int(pid) if isinstance(pid, int) and pid > 0 else None, extra=extra))
        finally:
            try:
                nvml.call("nvmlEventSetFree", event_set)
            except Exception:  # noqa: BLE001
                pass

    def _indexes_of(self, handle: Any, handles: list[tuple[int, Any]],
                    registered: list[int]) -> list[tuple[int, dict[str, Any]]]:
        """The GPU an event came from. If NVML cannot say which, every watched GPU gets it
        (marked so): a critical error on an unknown GPU must not vanish."""
        try:
            return [(int(self.nvml.call("nvmlDeviceGetIndex", handle)), {})]
        except NVMLError:
            pass
        address = _address(handle)
        for index, known in handles:
            if address is not None and _address(known) == address:
                return [(index, {})]
        if len(registered) == 1:
            return [(registered[0], {})]
        self._log.problem("which", "an XID event from a GPU NVML cannot name: reported on every GPU",
                          level="WARNING")
        return [(index, {"device_unknown": True}) for index in registered]


def _address(handle: Any) -> int | None:
    """The address behind an NVML device handle (a ctypes pointer), to compare handles."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):  # not a ctypes handle (the simulator's)
        return None
