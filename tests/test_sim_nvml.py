"""SimNvml's reading rules (docs/sim-gpu.md) over hand-written state files, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pynvml
import pytest

from watchdog.sim.nvml import SimNvml

MIB = 1024 * 1024


@pytest.fixture
def child():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write(d: Path, name: str, *, writer: int, devices: list[dict], procs=(), xids=(), age: float = 0.0,
          **extra) -> None:
    d.mkdir(exist_ok=True)
    base = {"index": 0, "name": "Simulated NVIDIA A10G", "uuid": "GPU-sim-0", "mem_total_mib": 23028,
            "base_used_mib": 300, "util": 0, "temp_c": 40, "power_w": 60, "lost": False}
    data = {"version": 1, "writer_pid": writer, "updated": time.time() - age,
            "devices": [{**base, **dev} for dev in devices], "procs": list(procs), "xids": list(xids),
            **extra}
    (d / f"{name}.json").write_text(json.dumps(data))


def init(d: Path) -> SimNvml:
    nvml = SimNvml(d, cache_s=0)
    nvml.nvmlInit()
    return nvml


def test_devices_shared_by_two_writers_add_up(tmp_path, child):
    write(tmp_path, "a", writer=os.getpid(), devices=[{"util": 70}], procs=[{"index": 0, "pid": child, "mem_mib": 1000}])
    write(tmp_path, "b", writer=child, devices=[{"util": 60, "name": "other name", "base_used_mib": 0}],
          procs=[{"index": 0, "pid": os.getpid(), "mem_mib": 500}])
    nvml = init(tmp_path)
    assert nvml.nvmlDeviceGetCount() == 1
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetName(h) == "Simulated NVIDIA A10G"
    mem = nvml.nvmlDeviceGetMemoryInfo(h)
    assert mem.used == (300 + 1000 + 500) * MIB and mem.total == 23028 * MIB and mem.free == mem.total - mem.used
    assert nvml.nvmlDeviceGetUtilizationRates(h).gpu == 100  # 70 + 60, capped
    procs = {p.pid: p.usedGpuMemory for p in nvml.nvmlDeviceGetComputeRunningProcesses(h)}
    assert procs == {child: 1000 * MIB, os.getpid(): 500 * MIB}


def test_dead_processes_and_dead_writers_hold_nothing(tmp_path, child, dead_pid):
    write(tmp_path, "a", writer=os.getpid(), devices=[{}],
          procs=[{"index": 0, "pid": dead_pid, "mem_mib": 4000}, {"index": 0, "pid": child, "mem_mib": 100}])
    write(tmp_path, "gone", writer=dead_pid, devices=[{"util": 90, "base_used_mib": 999}],
          procs=[{"index": 0, "pid": child, "mem_mib": 7000}])
    nvml = init(tmp_path)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetMemoryInfo(h).used == (300 + 100) * MIB
    assert nvml.nvmlDeviceGetUtilizationRates(h).gpu == 0
    assert [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(h)] == [child]


def test_a_stale_file_reads_idle_with_memory_held(tmp_path, child):
    write(tmp_path, "a", writer=os.getpid(), devices=[{"util": 95}], procs=[{"index": 0, "pid": child, "mem_mib": 800, "util": 95}],
          age=2.0)
    nvml = init(tmp_path)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetUtilizationRates(h).gpu == 0
    assert nvml.nvmlDeviceGetMemoryInfo(h).used == 1100 * MIB
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetProcessUtilization(h, 0)


def test_process_utilisation_samples_when_busy(tmp_path, child):
    write(tmp_path, "a", writer=os.getpid(), devices=[{"util": 95}],
          procs=[{"index": 0, "pid": child, "mem_mib": 800, "util": 95},
                 {"index": 0, "pid": os.getpid(), "mem_mib": 10, "util": 0}])
    nvml = init(tmp_path)
    samples = nvml.nvmlDeviceGetProcessUtilization(nvml.nvmlDeviceGetHandleByIndex(0), 0)
    assert [(s.pid, s.smUtil) for s in samples] == [(child, 95)]


def test_device_seen_once_stays_after_its_writer_is_gone(tmp_path, child):
    write(tmp_path, "a", writer=child, devices=[{"index": 1, "util": 50}])
    nvml = init(tmp_path)
    assert nvml.nvmlDeviceGetCount() == 2  # index 0 is an idle GPU like index 1
    assert nvml.nvmlDeviceGetUtilizationRates(nvml.nvmlDeviceGetHandleByIndex(1)).gpu == 50
    os.kill(child, 9)
    os.waitpid(child, 0)
    h = nvml.nvmlDeviceGetHandleByIndex(1)
    assert nvml.nvmlDeviceGetUtilizationRates(h).gpu == 0
    assert nvml.nvmlDeviceGetMemoryInfo(h).used == 0


def test_errors_have_the_real_nvml_codes(tmp_path):
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        SimNvml(tmp_path / "missing").nvmlInit()
    nvml = SimNvml(tmp_path, cache_s=0)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    write(tmp_path, "a", writer=os.getpid(), devices=[{"lost": True}])
    nvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_GpuIsLost) as lost:
        nvml.nvmlDeviceGetHandleByIndex(0)
    assert lost.value.value == pynvml.NVML_ERROR_GPU_IS_LOST and str(lost.value) == "GPU is lost"
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetHandleByIndex(5)
    write(tmp_path, "a", writer=os.getpid(), devices=[{}])
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetMigMode(h)
    assert nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU) == 40
    assert nvml.nvmlDeviceGetPowerUsage(h) == 60000
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons(h) == pynvml.nvmlClocksEventReasonGpuIdle
    assert nvml.nvmlDeviceGetRemappedRows(h) == (0, 0, 0, 0)
    assert nvml.nvmlDeviceGetTotalEccErrors(h, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC) == 0
    assert isinstance(nvml.nvmlSystemGetDriverVersion(), str)
    write(tmp_path, "a", writer=os.getpid(), devices=[{}], driver_mismatch=True)
    with pytest.raises(pynvml.NVMLError_LibRmVersionMismatch):
        SimNvml(tmp_path).nvmlInit()


def test_xid_events_after_registration_only(tmp_path):
    old = [{"seq": 1, "index": 0, "xid": 13, "pid": None, "time": time.time()}]
    write(tmp_path, "a", writer=os.getpid(), devices=[{}], xids=old)
    nvml = init(tmp_path)
    events = nvml.nvmlEventSetCreate()
    nvml.nvmlDeviceRegisterEvents(nvml.nvmlDeviceGetHandleByIndex(0), nvml.nvmlEventTypeXidCriticalError, events)
    with pytest.raises(pynvml.NVMLError_Timeout):
        nvml.nvmlEventSetWait_v2(events, 100)
    timer = threading.Timer(0.1, write, args=(tmp_path, "a"),
                            kwargs={"writer": os.getpid(), "devices": [{}],
                                    "xids": old + [{"seq": 2, "index": 0, "xid": 79, "pid": None, "time": 0}]})
    timer.start()
    event = nvml.nvmlEventSetWait_v2(events, 2000)
    timer.join()
    assert (event.eventType, event.eventData, event.device.index) == (pynvml.nvmlEventTypeXidCriticalError, 79, 0)
    with pytest.raises(pynvml.NVMLError_Timeout):
        nvml.nvmlEventSetWait_v2(events, 50)
    nvml.nvmlEventSetFree(events)


def test_xid_events_across_rewrites_that_keep_them(tmp_path, child):
    """A simulator rewrites its file every 0.25 s with the same XIDs: that is no event, and the
    watcher skips parsing it (issue 15); a new XID after such rewrites still is one, and so is an
    XID a new writer of the same file reports."""
    old = [{"seq": 1, "index": 0, "xid": 13, "pid": None, "time": 0}]
    write(tmp_path, "a", writer=os.getpid(), devices=[{}], xids=old)
    nvml = init(tmp_path)
    events = nvml.nvmlEventSetCreate()
    nvml.nvmlDeviceRegisterEvents(nvml.nvmlDeviceGetHandleByIndex(0), nvml.nvmlEventTypeXidCriticalError, events)
    for util in (10, 20, 30):
        write(tmp_path, "a", writer=os.getpid(), devices=[{"util": util}], xids=old)
        os.utime(tmp_path / "a.json", ns=(util * 10**9, util * 10**9))  # a new stamp even on a coarse clock
        with pytest.raises(pynvml.NVMLError_Timeout):
            nvml.nvmlEventSetWait_v2(events, 0)
    both = old + [{"seq": 2, "index": 0, "xid": 48, "pid": None, "time": 0}]
    write(tmp_path, "a", writer=os.getpid(), devices=[{"util": 40}], xids=both)
    assert nvml.nvmlEventSetWait_v2(events, 1000).eventData == 48
    write(tmp_path, "a", writer=child, devices=[{}], xids=both)  # the same text, another writer: its own XIDs
    assert [nvml.nvmlEventSetWait_v2(events, 1000).eventData for _ in range(2)] == [13, 48]
    with pytest.raises(pynvml.NVMLError_Timeout):
        nvml.nvmlEventSetWait_v2(events, 0)
