"""The GPU probe over a fake NVML function table: readings, and every way NVML fails.

The fake stands in for the NVIDIA driver (which this machine does not have),
not for our code: it has pynvml's function names, returns pynvml's own
structures, and raises ``pynvml.NVMLError`` with the driver's error codes.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import pynvml
import pytest

from tests.support import wait_for
from watchdog.probes.gpu import GpuProbe, throttle_names
from watchdog.trace.records import Xid

MIB = 1024 * 1024


@dataclass
class FakeMig:
    used_mib: int
    total_mib: int
    gi: int
    procs: list[tuple[int, int | None]] = field(default_factory=list)


@dataclass
class FakeDevice:
    name: str = "NVIDIA H100 80GB HBM3"
    total_mib: int = 81559
    used_mib: int = 480
    util: int = 0
    temp: int = 40
    power_mw: int = 75_000
    throttle: int = 0x1
    procs: list[tuple[int, int | None]] = field(default_factory=list)  # pid, bytes (None: not available)
    graphics: list[tuple[int, int | None]] = field(default_factory=list)
    proc_util: list[tuple[int, int, int]] = field(default_factory=list)  # pid, timestamp us, sm util
    ecc: int = 0
    rows: tuple[int, int, int, int] = (0, 0, 0, 0)
    mig: list[FakeMig] | None = None
    fail: dict[str, int] = field(default_factory=dict)  # function -> NVML error code
    block: threading.Event | None = None  # nvmlDeviceGetMemoryInfo waits on it (a wedged driver)


@dataclass(frozen=True)
class Handle:
    index: int
    mig: int | None = None


class FakeNvml:
    """pynvml's functions over FakeDevices."""

    NVMLError = pynvml.NVMLError

    def __init__(self, devices: list[FakeDevice]) -> None:
        self.devices = devices
        self.init_error: int | None = None
        self.library_error: int | None = None  # every call fails with this (driver update)
        self.inits = 0
        self.shutdowns = 0
        self.calls: dict[str, int] = {}
        self.events: list[tuple[int, int]] = []
        self.events_lock = threading.Lock()

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _dev(self, handle: Handle, name: str) -> FakeDevice | FakeMig:
        self._count(name)
        if self.library_error is not None:
            raise pynvml.NVMLError(self.library_error)
        if handle.index >= len(self.devices):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        device = self.devices[handle.index]
        if name in device.fail:
            raise pynvml.NVMLError(device.fail[name])
        if "*" in device.fail:
            raise pynvml.NVMLError(device.fail["*"])
        if handle.mig is not None:
            assert device.mig is not None
            return device.mig[handle.mig]
        return device

    def nvmlInit(self) -> None:
        self._count("nvmlInit")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"

    def nvmlSystemGetNVMLVersion(self) -> str:
        return "13.580.159.04"

    def nvmlDeviceGetCount(self) -> int:
        if self.library_error is not None:
            raise pynvml.NVMLError(self.library_error)
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:
        self._dev(Handle(index), "nvmlDeviceGetHandleByIndex")
        return Handle(index)

    def nvmlDeviceGetIndex(self, handle: Handle) -> int:
        return handle.index

    def nvmlDeviceGetName(self, handle: Handle) -> bytes:
        return self._dev(handle, "nvmlDeviceGetName").name.encode()  # old pynvml returned bytes

    def nvmlDeviceGetUUID(self, handle: Handle) -> str:
        return f"GPU-fake-{handle.index}"

    def nvmlDeviceGetMemoryInfo(self, handle: Handle) -> Any:
        device = self._dev(handle, "nvmlDeviceGetMemoryInfo")
        if isinstance(device, FakeDevice) and device.block is not None:
            device.block.wait()
        mem = pynvml.c_nvmlMemory_t()
        total = device.total_mib * MIB
        mem.total, mem.used, mem.free = total, device.used_mib * MIB, total - device.used_mib * MIB
        return mem

    def nvmlDeviceGetUtilizationRates(self, handle: Handle) -> Any:
        device = self._dev(handle, "nvmlDeviceGetUtilizationRates")
        if device.mig is not None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        rates = pynvml.c_nvmlUtilization_t()
        rates.gpu, rates.memory = device.util, device.util // 2
        return rates

    def nvmlDeviceGetTemperature(self, handle: Handle, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._dev(handle, "nvmlDeviceGetTemperature").temp

    def nvmlDeviceGetPowerUsage(self, handle: Handle) -> int:
        return self._dev(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Handle) -> int:
        return self._dev(handle, "nvmlDeviceGetCurrentClocksEventReasons").throttle

    def nvmlDeviceGetTotalEccErrors(self, handle: Handle, kind: int, counter: int) -> int:
        assert (kind, counter) == (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC)
        return self._dev(handle, "nvmlDeviceGetTotalEccErrors").ecc

    def nvmlDeviceGetRemappedRows(self, handle: Handle) -> tuple[int, int, int, int]:
        return self._dev(handle, "nvmlDeviceGetRemappedRows").rows

    def _procs(self, items: list[tuple[int, int | None]]) -> list[Any]:
        out = []
        for pid, used in items:
            info = pynvml.c_nvmlProcessInfo_t()
            info.pid = pid
            info.usedGpuMemory = 0
            obj = pynvml.nvmlStructToFriendlyObject(info)
            obj.usedGpuMemory = used  # pynvml sets None when the driver has no figure
            out.append(obj)
        return out

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Handle) -> list[Any]:
        return self._procs(self._dev(handle, "nvmlDeviceGetComputeRunningProcesses").procs)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Handle) -> list[Any]:
        device = self._dev(handle, "nvmlDeviceGetGraphicsRunningProcesses")
        return self._procs(getattr(device, "graphics", []))

    def nvmlDeviceGetProcessUtilization(self, handle: Handle, since_us: int) -> list[Any]:
        device = self._dev(handle, "nvmlDeviceGetProcessUtilization")
        samples = []
        for pid, ts, util in device.proc_util:
            if ts > since_us:
                sample = pynvml.c_nvmlProcessUtilizationSample_t()
                sample.pid, sample.timeStamp, sample.smUtil = pid, ts, util
                samples.append(sample)
        if not samples:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return samples

    def nvmlDeviceGetMigMode(self, handle: Handle) -> list[int]:
        device = self._dev(handle, "nvmlDeviceGetMigMode")
        if device.mig is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Handle) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Handle, slot: int) -> Handle:
        device = self.devices[handle.index]
        if device.mig is None or slot >= len(device.mig):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return Handle(handle.index, slot)

    def nvmlDeviceGetGpuInstanceId(self, handle: Handle) -> int:
        return self.devices[handle.index].mig[handle.mig].gi  # type: ignore[index]

    # XID events
    def nvmlEventSetCreate(self) -> object:
        return object()

    def nvmlDeviceRegisterEvents(self, handle: Handle, types: int, event_set: object) -> None:
        self._dev(handle, "nvmlDeviceRegisterEvents")
        assert types & pynvml.nvmlEventTypeXidCriticalError

    def nvmlEventSetWait_v2(self, event_set: object, timeout_ms: int) -> Any:
        self._count("nvmlEventSetWait_v2")
        deadline = threading.Event()
        for _ in range(max(1, timeout_ms // 10)):
            with self.events_lock:
                if self.events:
                    index, xid = self.events.pop(0)
                    data = pynvml.c_nvmlEventData_t()
                    data.eventType, data.eventData = pynvml.nvmlEventTypeXidCriticalError, xid
                    return _Event(Handle(index), data.eventType, data.eventData)
            deadline.wait(0.01)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, event_set: object) -> None:
        pass


@dataclass
class _Event:
    device: Handle
    eventType: int
    eventData: int


@pytest.fixture
def caplog_loguru() -> Any:
    from loguru import logger

    lines: list[str] = []
    handler = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(handler)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_probe(fake: FakeNvml, **kw: Any) -> tuple[GpuProbe, list[Any], Clock]:
    out: list[Any] = []
    clock = Clock()
    defaults: dict[str, Any] = {"retry_init_s": 10.0, "no_driver_retry_s": 300.0, "deadline": 1.0}
    defaults.update(kw)
    probe = GpuProbe(fake, clock, out.append, monotonic=clock, **defaults)
    return probe, out, clock


async def test_a_healthy_device_is_read_in_full() -> None:
    device = FakeDevice(used_mib=9000, util=87, temp=71, power_mw=312_400, throttle=0x1 | 0x4 | 0x20,
                        procs=[(4242, 8 * 1024 * MIB), (4300, None)], graphics=[(4400, 16 * MIB)],
                        proc_util=[(4242, 1_000, 50), (4242, 2_000, 91)], ecc=2, rows=(1, 3, 1, 0))
    fake = FakeNvml([device])
    owners = {4242: "vllm"}
    probe, out, clock = make_probe(fake, attribute=lambda index, pids: {p: owners.get(p) for p in pids})
    (sample,) = await probe.round()
    assert out == [sample]
    assert (sample.index, sample.util, sample.mem_used_mib, sample.temp_c, sample.power_w) == (0, 87.0, 9000, 71.0,
                                                                                              312.4)
    assert sample.error is None
    procs = {p.pid: p for p in sample.procs}
    assert procs[4242].mem_mib == 8192 and procs[4242].target == "vllm" and procs[4242].extra["util"] == 91
    assert procs[4300].mem_mib is None and procs[4300].target is None  # no memory figure, no owner
    assert procs[4400].mem_mib == 16  # a graphics context (Vulkan llama.cpp) counts too
    assert sample.extra["throttle"] == ["sw_power_cap", "sw_thermal"]
    assert sample.extra["ecc_uncorrected"] == 2
    assert sample.extra["remapped_rows"] == {"correctable": 1, "uncorrectable": 3, "pending": True, "failure": False}
    assert probe.devices[0].name == "NVIDIA H100 80GB HBM3" and probe.devices[0].mem_total_mib == 81559
    assert probe.status.startswith("ok: 1 GPU(s), driver 580.159.04")
    # Slow-changing counters are read every slow_every_s, not every round.
    clock.now = 1.0
    (second,) = await probe.round()
    assert "ecc_uncorrected" not in second.extra and fake.calls["nvmlDeviceGetTotalEccErrors"] == 1
    clock.now = 31.0
    (third,) = await probe.round()
    assert third.extra["ecc_uncorrected"] == 2
    # Process utilisation is asked from the last sample seen: no new samples means no figure.
    assert "util" not in {p.pid: p for p in second.procs}[4242].extra
    timings = probe.timings()
    assert timings["nvmlDeviceGetMemoryInfo"]["count"] >= 3
    assert "nvmlDeviceGetPcieThroughput" not in timings
    probe.close()


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED])
async def test_no_driver_is_reported_once_and_the_probe_keeps_going(code: int, caplog_loguru: list[str]) -> None:
    fake = FakeNvml([FakeDevice()])
    fake.init_error = code
    probe, out, clock = make_probe(fake)
    for t in (0.0, 2.0, 4.0):
        clock.now = t
        assert await probe.round() == []
    assert out == [] and "no NVIDIA driver" in probe.status
    assert fake.calls["nvmlInit"] == 1  # not asked again before no_driver_retry_s
    assert sum("no NVIDIA driver" in line for line in caplog_loguru) == 1
    fake.init_error = None  # a driver was installed
    clock.now = 301.0
    (sample,) = await probe.round()
    assert sample.error is None and probe.status.startswith("ok")
    probe.close()


async def test_no_gpu_emits_nothing() -> None:
    probe, out, _ = make_probe(FakeNvml([]))
    assert await probe.round() == [] and probe.status == "no GPU found"
    probe.close()


async def test_a_lost_gpu_gives_error_samples_while_the_others_go_on() -> None:
    good, bad = FakeDevice(util=50), FakeDevice(util=10)
    fake = FakeNvml([good, bad])
    probe, out, clock = make_probe(fake)
    await probe.round()
    bad.fail = {"*": pynvml.NVML_ERROR_GPU_IS_LOST}
    clock.now = 1.0
    first, lost = await probe.round()
    assert first.error is None and first.util == 50.0
    assert (lost.index, lost.error, lost.util, lost.mem_used_mib) == (1, "gpu_lost", None, None)
    # Lost for retry_init_s: the library is started again (a reset GPU only comes back that way),
    # and the healthy device keeps its samples across it.
    clock.now = 12.0
    first, lost = await probe.round()
    assert fake.inits == 2 and first.error is None and lost.error == "gpu_lost"
    bad.fail = {}
    clock.now = 13.0
    first, back = await probe.round()
    assert back.error is None and back.util == 10.0
    probe.close()


@pytest.mark.parametrize("code,name", [(pynvml.NVML_ERROR_UNKNOWN, "nvml_unknown"),
                                       (pynvml.NVML_ERROR_TIMEOUT, "nvml_timeout"),
                                       (pynvml.NVML_ERROR_RESET_REQUIRED, "reset_required")])
async def test_device_errors_are_named(code: int, name: str) -> None:
    device = FakeDevice(fail={"nvmlDeviceGetUtilizationRates": code})
    probe, _, _ = make_probe(FakeNvml([device]))
    (sample,) = await probe.round()
    assert sample.error == name and sample.util is None
    probe.close()


async def test_driver_update_mismatch_errors_every_device_until_reinit_works() -> None:
    fake = FakeNvml([FakeDevice(), FakeDevice()])
    probe, out, clock = make_probe(fake)
    await probe.round()
    fake.library_error = pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH
    clock.now = 1.0
    samples = await probe.round()
    assert [(s.index, s.error) for s in samples] == [(0, "driver_mismatch"), (1, "driver_mismatch")]
    assert fake.shutdowns == 1 and "NVML lost" in probe.status
    # Until retry_init_s, rounds answer from what is known, without calling NVML.
    fake.init_error = pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH
    clock.now = 5.0
    calls = dict(fake.calls)
    assert [s.error for s in await probe.round()] == ["driver_mismatch", "driver_mismatch"]
    assert fake.calls == calls
    clock.now = 11.5
    assert [s.error for s in await probe.round()] == ["driver_mismatch", "driver_mismatch"]
    assert fake.calls["nvmlInit"] == calls["nvmlInit"] + 1
    # The node was rebooted into the new driver: init works again.
    fake.init_error = fake.library_error = None
    clock.now = 22.0
    assert [s.error for s in await probe.round()] == [None, None]
    probe.close()


async def test_unsupported_readings_are_none_and_not_asked_again() -> None:
    device = FakeDevice(fail={
        "nvmlDeviceGetTemperature": pynvml.NVML_ERROR_NOT_SUPPORTED,
        "nvmlDeviceGetPowerUsage": pynvml.NVML_ERROR_NO_PERMISSION,
        "nvmlDeviceGetTotalEccErrors": pynvml.NVML_ERROR_NOT_SUPPORTED,
        "nvmlDeviceGetRemappedRows": pynvml.NVML_ERROR_NOT_SUPPORTED,
    }, util=30)
    fake = FakeNvml([device])
    probe, _, clock = make_probe(fake, slow_every_s=0.0)
    for t in range(3):
        clock.now = float(t)
        (sample,) = await probe.round()
        assert sample.error is None and sample.util == 30.0
        assert sample.temp_c is None and sample.power_w is None and "ecc_uncorrected" not in sample.extra
    assert fake.calls["nvmlDeviceGetTemperature"] == 1 and fake.calls["nvmlDeviceGetPowerUsage"] == 1
    # NOT_FOUND from process utilisation means "no samples now": asked every round.
    assert fake.calls["nvmlDeviceGetProcessUtilization"] == 3
    probe.close()


async def test_mig_memory_per_instance_and_no_utilisation() -> None:
    device = FakeDevice(used_mib=20000, mig=[FakeMig(9000, 40000, gi=1, procs=[(10, 8000 * MIB)]),
                                             FakeMig(11000, 40000, gi=2, procs=[(11, 10000 * MIB)])])
    fake = FakeNvml([device])
    probe, _, _ = make_probe(fake)
    (sample,) = await probe.round()
    assert sample.error is None and sample.util is None and sample.mem_used_mib == 20000
    assert sample.extra["mig"] == [
        {"gpu_instance": 1, "mem_used_mib": 9000, "mem_total_mib": 40000},
        {"gpu_instance": 2, "mem_used_mib": 11000, "mem_total_mib": 40000},
    ]
    assert [(p.pid, p.mem_mib) for p in sample.procs] == [(10, 8000), (11, 10000)]
    probe.close()


async def test_a_wedged_driver_call_costs_the_loop_only_its_deadline() -> None:
    block = threading.Event()
    device = FakeDevice()
    fake = FakeNvml([device])
    probe, out, clock = make_probe(fake, deadline=0.3)
    await probe.round()
    device.block = block
    loop = asyncio.get_running_loop()
    start = loop.time()
    (sample,) = await probe.round()
    assert sample.error == "nvml_hung" and loop.time() - start < 1.0
    # While the call is stuck, no new call is made: the next round answers at once.
    calls = fake.calls["nvmlDeviceGetMemoryInfo"]
    start = loop.time()
    (sample,) = await probe.round()
    assert sample.error == "nvml_hung" and loop.time() - start < 0.2
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == calls
    device.block = None
    block.set()
    wait_for(lambda: not probe._runner.stuck, 2.0, "the stuck call to return")
    (sample,) = await probe.round()
    assert sample.error is None
    probe.close()


async def test_xid_events_become_records_on_the_loop() -> None:
    fake = FakeNvml([FakeDevice(), FakeDevice()])
    probe, out, clock = make_probe(fake)
    await probe.round()
    clock.now = 42.0
    probe.start_xid_watch(wait_ms=50)
    try:
        with fake.events_lock:
            fake.events.append((1, 79))

        async def xids() -> list[Xid]:
            while not any(isinstance(r, Xid) for r in out):
                await asyncio.sleep(0.01)
            return [r for r in out if isinstance(r, Xid)]

        (xid,) = await asyncio.wait_for(xids(), 5.0)
        assert (xid.t, xid.index, xid.xid, xid.pid) == (42.0, 1, 79, None)
        # Quiet: the wait times out again and again (the thread keeps living).
        waits = fake.calls["nvmlEventSetWait_v2"]
        wait_for(lambda: fake.calls["nvmlEventSetWait_v2"] > waits + 2, 5, "more quiet waits")
        # Waiting is not a call that takes long: it stays out of the per-call timings.
        assert "nvmlEventSetWait_v2" not in probe.timings() and "nvmlDeviceRegisterEvents" in probe.timings()
    finally:
        watcher = probe._xid
        probe.close()
    assert watcher is not None and not watcher.alive


async def test_a_gpu_gone_from_the_bus_keeps_being_reported() -> None:
    fake = FakeNvml([FakeDevice(), FakeDevice()])
    probe, _, clock = make_probe(fake)
    await probe.round()
    fake.devices[1].fail = {"*": pynvml.NVML_ERROR_GPU_IS_LOST}
    for t in (1.0, 12.0):
        clock.now = t
        await probe.round()
    fake.devices.pop()  # after the re-init NVML counts one GPU only
    for t in (13.0, 24.0, 25.0):
        clock.now = t
        samples = await probe.round()
    assert [(s.index, s.error) for s in samples] == [(0, None), (1, "gpu_not_found")]
    probe.close()


def test_throttle_names_leave_out_idle() -> None:
    assert throttle_names(0x1) == [] and throttle_names(0x8 | 0x40) == ["hw_slowdown", "hw_thermal"]


async def test_backend_none_is_silent() -> None:
    probe = GpuProbe(None, lambda: 0.0, lambda r: None)
    assert await probe.round() == [] and probe.timings() == {} and "disabled" in probe.status
    probe.close()


async def test_overlapping_rounds_wait_for_each_other_rather_than_reading_as_hung() -> None:
    fake = FakeNvml([FakeDevice(util=5)])
    probe, out, _ = make_probe(fake)
    first, second = await asyncio.gather(probe.round(), probe.round())
    assert [s.error for s in first + second] == [None, None] and len(out) == 2
    probe.close()


async def test_an_xid_from_a_gpu_nvml_cannot_name_is_reported_on_every_gpu() -> None:
    class Unnamed(FakeNvml):
        def nvmlDeviceGetIndex(self, handle: Handle) -> int:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    fake = Unnamed([FakeDevice(), FakeDevice()])
    probe, out, clock = make_probe(fake)
    await probe.round()
    probe.start_xid_watch(wait_ms=50)
    try:
        with fake.events_lock:
            fake.events.append((1, 48))

        async def xids() -> list[Xid]:
            while sum(isinstance(r, Xid) for r in out) < 2:
                await asyncio.sleep(0.01)
            return [r for r in out if isinstance(r, Xid)]

        found = await asyncio.wait_for(xids(), 5.0)
        assert sorted(x.index for x in found) == [0, 1]
        assert all(x.xid == 48 and x.extra == {"device_unknown": True} for x in found)
    finally:
        probe.close()
    assert fake.inits == fake.shutdowns, "the XID thread takes and gives back its own reference to NVML"
