"""The trace header for a config: host, the GPUs seen, the targets with their GPUs.

Used by the daemon (recordings), ``watchdogctl check`` and ``watchdogctl probe``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from watchdog.config.model import Config
from watchdog.trace.records import GpuDevice, Header, TraceTarget


def build_header(
    config: Config,
    gpus: Iterable[GpuDevice] | Mapping[int, GpuDevice],
    *,
    target_gpus: Mapping[str, list[int]] | None = None,
    targets: Iterable[str] | None = None,
    wall_zero: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Header:
    """The trace header: host, the GPUs seen, the targets with their GPUs.

    ``target_gpus`` gives the GPUs found for targets with ``gpus = "auto"``;
    ``wall_zero`` is the Unix time of ``t = 0``, so a recording can be placed in
    real time.
    """
    devices = list(gpus.values()) if isinstance(gpus, Mapping) else list(gpus)
    names = set(targets) if targets is not None else None
    entries = []
    for target in config.targets:
        if not target.enabled or (names is not None and target.name not in names):
            continue
        used = target.gpus_seen((target_gpus or {}).get(target.name, []))
        entries.append(TraceTarget(name=target.name, kind=target.kind, gpus=used))
    header_extra: dict[str, Any] = {"recorder": "inference-watchdog"}
    if wall_zero is not None:
        header_extra["wall_zero"] = round(wall_zero, 3)
    header_extra.update(extra or {})
    return Header(
        host=config.watchdog.host or socket.gethostname() or os.uname().nodename,
        gpus=sorted(devices, key=lambda d: d.index),
        targets=entries,
        extra=header_extra,
    )
