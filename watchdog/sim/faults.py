"""The fault catalogue: names, their parameters with defaults, and the active set.

Pure data and validation, no I/O. The engine, the HTTP layer and the GPU
writer each ask :class:`Faults` what is active and behave accordingly, so every
generation path honours a fault the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

SCOPES = ("generation", "all")
SLOW_CAUSES = ("thermal", "hw_thermal", "power_brake", "hw_slowdown", "power_cap", "none")


@dataclass(frozen=True)
class FaultSpec:
    """One injectable fault: its parameters with defaults, and what it means."""

    name: str
    params: dict[str, Any]
    summary: str
    kinds: tuple[str, ...] = ("ollama", "vllm", "llamacpp")


CATALOGUE: dict[str, FaultSpec] = {
    spec.name: spec
    for spec in (
        FaultSpec("hang", {"after_tokens": 0, "scope": "generation"},
                  "generation stops making progress (after `after_tokens` tokens per request); "
                  "requests are accepted and never answered; GPU util 0% with memory held; "
                  "scope=all also stalls status routes"),
        FaultSpec("nccl_hang", {"timeout_s": 600.0, "abort": False},
                  "a stuck collective: no progress, util pinned at 100%; after `timeout_s` the "
                  "PyTorch NCCL watchdog line is logged (and the process exits if `abort`)"),
        FaultSpec("slow", {"factor": 0.1, "cause": "thermal"},
                  "prefill and decode run at `factor` of their normal rate; the GPU reports the "
                  "`cause` as its clock event reason (thermal, hw_thermal, power_brake, hw_slowdown, "
                  "power_cap, or none) and a lower SM clock"),
        FaultSpec("failed_unload", {"report_after_s": 5.0},
                  "unloads (keep_alive 0, expiry, eviction) drop the model from /api/ps but its "
                  "runner keeps running and keeps its GPU memory; after `report_after_s` (Ollama "
                  "waits 5 s) the log says the VRAM did not recover", kinds=("ollama",)),
        FaultSpec("leak", {"mib_per_load": 0.0, "mib_per_s": 0.0, "mib_per_request": 0.0},
                  "GPU memory grows: per load (kept by the server process), per second and per "
                  "request (kept by the model's holder process)"),
        FaultSpec("fragmentation", {"tried_mib": 2048.0},
                  "loads and requests fail with PyTorch's OOM text showing much memory "
                  "reserved by PyTorch but unallocated"),
        FaultSpec("oom", {"tried_mib": 2048.0},
                  "loads and requests fail with a plain out-of-memory (cudaMalloc failed / "
                  "torch OOM with little reserved)"),
        FaultSpec("crash", {"exit_code": 2, "delay_s": 0.05},
                  "the process exits; its runners die and their GPU memory goes away"),
        FaultSpec("http_5xx", {"status": 500, "scope": "generation"},
                  "generation routes (or all routes with scope=all) answer with an HTTP error"),
        FaultSpec("garbage", {"mode": "json", "after_chunks": 3, "scope": "all"},
                  "mode=json: malformed JSON bodies and stream chunks; mode=truncate: streams "
                  "and bodies cut off mid-way; mode=huge: a 20 MB body"),
        FaultSpec("xid", {"xid": 79},
                  "an XID critical-error event on the device (79, fallen off the bus, also "
                  "loses the GPU)"),
        FaultSpec("gpu_lost", {},
                  "the device answers NVML with `GPU is lost`; generation fails with a CUDA error"),
        FaultSpec("driver_mismatch", {},
                  "NVML cannot initialise: driver/library version mismatch (after a driver update)"),
        FaultSpec("recover", {},
                  "clears every fault: stuck requests resume, stuck runners and leaks are freed, "
                  "the GPU answers again"),
    )
}

#: Faults that are events rather than states: they act once and are not kept in the active set.
ONE_SHOT = frozenset({"crash", "xid", "recover"})


class FaultError(ValueError):
    """An unknown fault, a fault this flavour cannot have, or a bad parameter."""


def validate(name: str, params: dict[str, Any], kind: str) -> dict[str, Any]:
    """The fault's parameters with defaults filled in, converted to the default's type."""
    spec = CATALOGUE.get(name)
    if spec is None:
        raise FaultError(f"unknown fault {name!r}; known: {', '.join(sorted(CATALOGUE))}")
    if kind not in spec.kinds:
        raise FaultError(f"fault {name!r} does not apply to a {kind} server")
    unknown = set(params) - set(spec.params)
    if unknown:
        raise FaultError(f"fault {name!r} has no parameter(s) {sorted(unknown)}; "
                         f"it takes {sorted(spec.params) or 'none'}")
    merged = dict(spec.params)
    for key, value in params.items():
        default = spec.params[key]
        try:
            if isinstance(default, bool):
                merged[key] = _to_bool(value)
            elif isinstance(default, (int, float)):
                merged[key] = type(default)(value)
                if merged[key] < 0:
                    raise ValueError("must not be negative")
            else:
                merged[key] = str(value)
        except (TypeError, ValueError) as exc:
            raise FaultError(f"fault {name!r}: bad {key}={value!r} ({exc})") from None
    if "scope" in merged and merged["scope"] not in SCOPES:
        raise FaultError(f"fault {name!r}: scope must be one of {SCOPES}")
    if name == "garbage" and merged["mode"] not in ("json", "truncate", "huge"):
        raise FaultError("fault 'garbage': mode must be json, truncate or huge")
    if name == "slow" and not 0 < merged["factor"] <= 1:
        raise FaultError("fault 'slow': factor must be in (0, 1]")
    if name == "slow" and merged["cause"] not in SLOW_CAUSES:
        raise FaultError(f"fault 'slow': cause must be one of {', '.join(SLOW_CAUSES)}")
    if name == "http_5xx" and not 500 <= merged["status"] <= 599:
        raise FaultError("fault 'http_5xx': status must be 500..599")
    return merged


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected a boolean")


def parse_cli_fault(text: str) -> tuple[str, dict[str, str]]:
    """``NAME`` or ``NAME:key=value,key=value`` (the ``--fault`` flag)."""
    name, _, rest = text.partition(":")
    params: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise FaultError(f"--fault {text!r}: expected key=value, got {item!r}")
        params[key.strip()] = value.strip()
    return name.strip(), params


@dataclass
class ActiveFault:
    name: str
    params: dict[str, Any]
    since: float = field(default_factory=time.time)


class Faults:
    """The faults active now. ``generation`` bumps on every change so waiters can wake."""

    def __init__(self) -> None:
        self._active: dict[str, ActiveFault] = {}
        self.generation = 0

    def set(self, name: str, params: dict[str, Any]) -> ActiveFault:
        fault = ActiveFault(name, params)
        self._active[name] = fault
        self.generation += 1
        return fault

    def clear(self) -> None:
        self._active.clear()
        self.generation += 1

    def get(self, name: str) -> ActiveFault | None:
        return self._active.get(name)

    def param(self, name: str, key: str) -> Any:
        fault = self._active.get(name)
        return None if fault is None else fault.params[key]

    def active(self, name: str) -> bool:
        return name in self._active

    def scoped(self, name: str, generation_route: bool) -> ActiveFault | None:
        """The fault if it applies to this route (its scope covers it)."""
        fault = self._active.get(name)
        if fault is None:
            return None
        if fault.params.get("scope", "all") == "all" or generation_route:
            return fault
        return None

    def slow_factor(self) -> float:
        fault = self._active.get("slow")
        return 1.0 if fault is None else float(fault.params["factor"])

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: {**f.params, "since": f.since} for f in self._active.values()}
