"""The NVML function table the GPU probe reads through, timed per call, and what its errors mean.

The table is the ``pynvml`` module itself, or the simulator's ``SimNvml``
(docs/sim-gpu.md): the same functions, raising ``pynvml.NVMLError`` with the
driver's error codes. Every call is timed, so a slow call (PCIe throughput
took 21 ms on an H100 where the others take 10-25 µs) shows up in
:meth:`TimedNvml.timings` instead of silently stretching the sampling loop.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pynvml

NVMLError = pynvml.NVMLError


class Unsupported(Exception):
    """The device or driver does not offer this reading (not an error of the device)."""


# Codes that mean "this reading is not available here", not "the device is failing".
OPTIONAL_CODES = frozenset(
    {
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_ERROR_NOT_FOUND,
        pynvml.NVML_ERROR_NO_PERMISSION,
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        pynvml.NVML_ERROR_INVALID_ARGUMENT,
        pynvml.NVML_ERROR_NO_DATA,
        pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
        pynvml.NVML_ERROR_DEPRECATED,
        pynvml.NVML_ERROR_INSUFFICIENT_SIZE,
    }
)
# Codes after which the library must be initialised again (a driver update, a shutdown).
LIBRARY_CODES = frozenset(
    {
        pynvml.NVML_ERROR_UNINITIALIZED,
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
    }
)
# Codes at init that mean "there is no NVIDIA driver here": report once, keep running.
NO_DRIVER_CODES = frozenset({pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED})

_NAMES = {
    pynvml.NVML_ERROR_GPU_IS_LOST: "gpu_lost",
    pynvml.NVML_ERROR_RESET_REQUIRED: "reset_required",
    pynvml.NVML_ERROR_UNKNOWN: "nvml_unknown",
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: "driver_mismatch",
    pynvml.NVML_ERROR_UNINITIALIZED: "nvml_uninitialized",
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "driver_not_loaded",
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "nvml_library_not_found",
    pynvml.NVML_ERROR_TIMEOUT: "nvml_timeout",
    pynvml.NVML_ERROR_NO_PERMISSION: "no_permission",
    pynvml.NVML_ERROR_IRQ_ISSUE: "irq_issue",
    pynvml.NVML_ERROR_CORRUPTED_INFOROM: "corrupted_inforom",
    pynvml.NVML_ERROR_MEMORY: "nvml_out_of_memory",
    pynvml.NVML_ERROR_OPERATING_SYSTEM: "os_blocked",
    pynvml.NVML_ERROR_GPU_NOT_FOUND: "gpu_not_found",
    pynvml.NVML_ERROR_NOT_READY: "not_ready",
    pynvml.NVML_ERROR_NOT_SUPPORTED: "not_supported",
    pynvml.NVML_ERROR_NOT_FOUND: "not_found",
}


def error_code(exc: BaseException) -> int | None:
    """The NVML error code of an exception, None if it is not an NVML error."""
    if isinstance(exc, NVMLError):
        value = getattr(exc, "value", None)
        return value if isinstance(value, int) else None
    return None


def error_name(exc: BaseException) -> str:
    """A short stable name for a record's ``error`` field (``gpu_lost``, ``driver_mismatch``...)."""
    code = error_code(exc)
    if code is None:
        return f"nvml_error: {type(exc).__name__}"
    return _NAMES.get(code, f"nvml_error_{code}")


def describe(exc: BaseException) -> str:
    """For log lines: the name and NVML's own text."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - pynvml's __str__ calls into the library
        text = ""
    return f"{error_name(exc)} ({text})" if text else error_name(exc)


@dataclass
class CallStats:
    count: int = 0
    errors: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    last_s: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        mean = self.total_s / self.count if self.count else 0.0
        return {
            "count": self.count,
            "errors": self.errors,
            "mean_us": round(mean * 1e6, 1),
            "max_us": round(self.max_s * 1e6, 1),
            "last_us": round(self.last_s * 1e6, 1),
        }


class TimedNvml:
    """Calls into a function table, with per-function timings and error mapping.

    ``call`` raises NVMLError as the table does; ``optional`` turns "not
    available here" codes (and functions the table lacks) into
    :class:`Unsupported`, and remembers them per (device, function) so the
    sampling loop stops asking.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self._stats: dict[str, CallStats] = {}
        self._lock = threading.Lock()
        self._unsupported: set[tuple[int, str]] = set()

    def const(self, name: str, default: Any = None) -> Any:
        return getattr(self.table, name, getattr(pynvml, name, default))

    def has(self, name: str) -> bool:
        return callable(getattr(self.table, name, None))

    def call(self, name: str, *args: Any) -> Any:
        fn = getattr(self.table, name, None)
        if fn is None:
            raise NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        start = time.perf_counter()
        failed = False
        try:
            return fn(*args)
        except BaseException:
            failed = True
            raise
        finally:
            self._record(name, time.perf_counter() - start, failed)

    def optional(self, device: int, name: str, *args: Any) -> Any:
        """Like call, but "not available" becomes Unsupported (and is not asked again)."""
        key = (device, name)
        if key in self._unsupported:
            raise Unsupported(name)
        try:
            return self.call(name, *args)
        except NVMLError as exc:
            code = error_code(exc)
            if code in OPTIONAL_CODES:
                if code != pynvml.NVML_ERROR_NOT_FOUND:  # NOT_FOUND is "no data now", ask again
                    self._unsupported.add(key)
                raise Unsupported(name) from None
            raise

    def forget_unsupported(self) -> None:
        self._unsupported.clear()

    def _record(self, name: str, elapsed: float, failed: bool) -> None:
        with self._lock:
            stats = self._stats.get(name)
            if stats is None:
                stats = self._stats[name] = CallStats()
            stats.count += 1
            stats.errors += failed
            stats.total_s += elapsed
            stats.last_s = elapsed
            stats.max_s = max(stats.max_s, elapsed)

    def timings(self) -> dict[str, dict[str, float | int]]:
        """Per function: count, errors, mean/max/last in microseconds."""
        with self._lock:
            return {name: stats.as_dict() for name, stats in sorted(self._stats.items())}


def load_table(backend: str) -> Any:
    """The function table for a real backend name: the pynvml module. (The simulator's
    table, for ``gpu_backend = "sim"``, is handed in by whoever builds the probe suite.)"""
    if backend in ("nvml", "auto"):
        return pynvml
    raise ValueError(f"no NVML table for gpu_backend {backend!r}")
