"""The writing side of the simulated GPU: one state file per simulator (docs/sim-gpu.md).

The engine says what it holds and how busy it is (:class:`GpuSnapshot`); this
module turns that into what a GPU would show (temperature and power follow
utilisation) and writes it atomically at least every 0.5 s and on every change.
The XIDs also go to a small file of their own (``<instance>.xids``), rewritten only
when one is injected, so the simulated NVML's event watcher can stat it instead of
reading the state file four times a second (issue 15).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.sim.config import GpuDevice

WRITE_INTERVAL_S = 0.25
THROTTLE_GPU_IDLE = 0x1  # nvmlClocksEventReasonGpuIdle
THROTTLE_SW_THERMAL = 0x20  # nvmlClocksEventReasonSwThermalSlowdown
#: The ``slow`` fault's ``cause`` parameter: the clock event reason the GPU reports with it.
SLOW_CAUSES = {
    "thermal": THROTTLE_SW_THERMAL,
    "hw_thermal": 0x40,  # nvmlClocksEventReasonHwThermalSlowdown
    "power_brake": 0x80,  # nvmlClocksEventReasonHwPowerBrakeSlowdown
    "hw_slowdown": 0x8,  # nvmlClocksEventReasonHwSlowdown
    "power_cap": 0x4,  # nvmlClocksEventReasonSwPowerCap
    "none": 0,
}
SM_CLOCK_MAX_MHZ = 1980
SM_CLOCK_IDLE_MHZ = 210


@dataclass(frozen=True)
class ProcUse:
    index: int
    pid: int
    mem_mib: float
    util: int = 0


@dataclass
class GpuSnapshot:
    """What the simulated server does to its GPU(s) right now."""

    util: dict[int, int] = field(default_factory=dict)
    procs: list[ProcUse] = field(default_factory=list)
    slow: bool = False
    slow_cause: str = "thermal"


class GpuStateWriter:
    """Owns the device list, the XID history and the lost flags; writes the state file."""

    def __init__(self, path: Path, devices: list[GpuDevice], snapshot: Callable[[], GpuSnapshot]):
        self.path = path
        self.xids_path = xids_path_for(path)
        self.devices = devices
        self._snapshot = snapshot
        self.xids: list[dict[str, object]] = []
        self.lost: set[int] = set()
        self.driver_mismatch = False
        self.ecc_dbe: dict[int, int] = {}
        self._changed = asyncio.Event()
        self._rng = random.Random(os.getpid())
        path.parent.mkdir(parents=True, exist_ok=True)

    def add_xid(self, index: int, xid: int, pid: int | None = None) -> dict[str, object]:
        event = {"seq": len(self.xids) + 1, "index": index, "xid": xid, "pid": pid,
                 "time": round(time.time(), 3)}
        self.xids.append(event)
        if xid == 48:  # double-bit ECC error
            self.ecc_dbe[index] = self.ecc_dbe.get(index, 0) + 1
        if xid == 79:  # fallen off the bus
            self.lost.add(index)
        self.write_xids()
        self.write_now()
        return event

    def state(self) -> dict[str, object]:
        snap = self._snapshot()
        devices = []
        for dev in self.devices:
            util = max(0, min(100, snap.util.get(dev.index, 0)))
            if snap.slow:
                throttle = SLOW_CAUSES.get(snap.slow_cause, THROTTLE_SW_THERMAL)
                clock = SM_CLOCK_MAX_MHZ * 0.35 if throttle else SM_CLOCK_MAX_MHZ * 0.95
            else:
                throttle = THROTTLE_GPU_IDLE if util == 0 else 0
                clock = SM_CLOCK_MAX_MHZ * 0.95 if util > 0 else SM_CLOCK_IDLE_MHZ
            devices.append({
                "index": dev.index, "name": dev.name, "uuid": dev.uuid,
                "mem_total_mib": dev.mem_total_mib, "base_used_mib": dev.base_used_mib,
                "util": util,
                "temp_c": round((86.0 if snap.slow else 34.0 + 0.45 * util) + self._rng.uniform(-0.5, 0.5), 1),
                "power_w": round(24.0 + 1.25 * util + self._rng.uniform(-1, 1), 1),
                "lost": dev.index in self.lost,
                "throttle_reasons": throttle,
                "sm_clock_mhz": int(clock),
                "sm_clock_max_mhz": SM_CLOCK_MAX_MHZ,
                "ecc_dbe": self.ecc_dbe.get(dev.index, 0),
            })
        return {
            "version": 1,
            "writer_pid": os.getpid(),
            "updated": round(time.time(), 3),
            "driver_mismatch": self.driver_mismatch,
            "devices": devices,
            "procs": [{"index": p.index, "pid": p.pid, "mem_mib": round(p.mem_mib, 1), "util": p.util}
                      for p in snap.procs if p.mem_mib > 0],
            "xids": self.xids,
        }

    def write_now(self) -> None:
        _write_atomic(self.path, json.dumps(self.state(), separators=(",", ":")))

    def write_xids(self) -> None:
        """The XID file, written before the state file that also carries the XIDs. If it cannot
        be written it is removed, so the reader falls back to the state file and misses nothing."""
        data = json.dumps({"version": 1, "writer_pid": os.getpid(), "xids": self.xids}, separators=(",", ":"))
        if not _write_atomic(self.xids_path, data):
            try:
                self.xids_path.unlink()
            except OSError:
                pass

    async def run(self) -> None:
        self.write_xids()
        while True:
            self.write_now()
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), WRITE_INTERVAL_S)
                await asyncio.sleep(0.01)  # coalesce a burst of changes into one write
            except asyncio.TimeoutError:
                pass

    def remove(self) -> None:
        """On a clean shutdown the GPU is given back: the files go."""
        for path in (self.path, self.xids_path):
            try:
                path.unlink()
            except OSError:
                pass


def xids_path_for(state_path: Path) -> Path:
    """``<instance>.xids`` beside ``<instance>.json`` (not ``.json``: state-file readers skip it)."""
    return state_path.with_suffix(".xids")


def _write_atomic(path: Path, data: str) -> bool:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
        return True
    except OSError:
        return False  # the next tick tries again; a full disk must not stop the server
