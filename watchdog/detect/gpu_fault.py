"""GPU fault: a device reports a critical error (an XID), or stops answering NVML.

Findings are on ``gpu:N``, not on a server: several servers may share a GPU.
A fault clears once the device has answered normally, with no new XID, for
``oom_clear_after`` (the quiet period the OOM detectors use too).
"""

from __future__ import annotations

from dataclasses import dataclass

from watchdog.config.model import DetectSettings
from watchdog.detect.base import Verdict, clear, raise_
from watchdog.detect.view import secs
from watchdog.trace.records import GpuSample, Record, Xid

#: What common XIDs mean (NVIDIA's XID catalogue), for summaries.
XID_MEANING = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    32: "invalid or corrupted push buffer stream",
    43: "GPU stopped processing",
    45: "preemptive cleanup, due to previous errors",
    48: "double-bit ECC error",
    61: "internal micro-controller breakpoint/warning",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping recorded",
    64: "ECC page retirement or row remapping failure",
    68: "video processor exception",
    69: "graphics engine class error",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    109: "context switch timeout",
    119: "GSP RPC timeout",
    120: "GSP error",
    154: "GPU recovery action changed",
}
_ERROR_SAMPLES = 2


@dataclass(slots=True)
class _Device:
    active: bool = False
    fault_t: float | None = None
    errors: int = 0
    healthy_since: float | None = None


class GpuFaultDetector:
    """Per device; returns (target, verdict) pairs with target ``gpu:N``."""

    def __init__(self, settings: DetectSettings) -> None:
        self.settings = settings
        self.devices: dict[int, _Device] = {}

    def observe(self, record: Record) -> list[tuple[str, Verdict]]:
        if isinstance(record, Xid):
            return self._xid(record)
        if isinstance(record, GpuSample):
            return self._sample(record)
        return []

    def _xid(self, record: Xid) -> list[tuple[str, Verdict]]:
        if record.xid in self.settings.ignore_xids:
            return []
        device = self.devices.setdefault(record.index, _Device())
        device.fault_t = record.t
        device.healthy_since = None
        if device.active:
            return []
        device.active = True
        meaning = XID_MEANING.get(record.xid, "critical error")
        pid = f" (pid {record.pid})" if record.pid else ""
        return [(f"gpu:{record.index}", raise_(f"XID {record.xid} on GPU {record.index}: {meaning}{pid}",
                                                xid=record.xid, pid=record.pid, cause="xid"))]

    def _sample(self, record: GpuSample) -> list[tuple[str, Verdict]]:
        device = self.devices.setdefault(record.index, _Device())
        target = f"gpu:{record.index}"
        if record.error is not None:
            device.errors += 1
            device.healthy_since = None
            if not device.active and device.errors >= _ERROR_SAMPLES:
                device.active, device.fault_t = True, record.t
                return [(target, raise_(f"GPU {record.index} stopped answering NVML ({record.error})",
                                        error=record.error, cause="nvml"))]
            if device.active:
                device.fault_t = record.t
            return []
        device.errors = 0
        if not device.active:
            return []
        if device.healthy_since is None:
            device.healthy_since = record.t  # XIDs and errors reset this
        healthy_for = record.t - device.healthy_since
        if healthy_for >= self.settings.oom_clear_after:
            device.active = False
            device.healthy_since = None
            return [(target, clear(f"GPU {record.index} has answered normally for {secs(healthy_for)} "
                                   "with no new error"))]
        return []

    def active(self) -> list[int]:
        return [index for index, device in self.devices.items() if device.active]
