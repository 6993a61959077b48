"""The one place a detection engine is built: for a config (daemon, ``check``) or a trace (``replay``).

Pure like the rest of ``detect/``: it reads a config and a trace header, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from watchdog.config.model import Config, DetectSettings
from watchdog.detect.engine import DetectionEngine
from watchdog.detect.profile import TargetProfile
from watchdog.trace.records import GpuDevice, Header


def gpu_totals(devices: Iterable[GpuDevice]) -> dict[int, float]:
    """{index: MiB} of the devices whose size is known."""
    return {d.index: float(d.mem_total_mib) for d in devices if d.mem_total_mib}


def make_engine(
    config: Config | None = None,
    *,
    header: Header | None = None,
    totals: dict[int, float] | None = None,
) -> DetectionEngine:
    """A detection engine.

    Without ``header``: one profile per enabled target of ``config``. With a trace
    ``header``: its targets (thresholds from ``config`` where it names them), then
    the configured targets the header lacks. GPU sizes: ``totals`` if given (shared,
    not copied: the daemon fills it in as it learns them), else the header's devices.
    """
    if header is None:
        if config is None:
            raise ValueError("make_engine needs a config or a header")
        profiles = [TargetProfile(t.name, t.kind, tuple(t.gpus_seen()), config.detect_for(t))
                    for t in config.targets if t.enabled]
        return DetectionEngine(profiles, config.detect, totals)
    defaults = config.detect if config is not None else DetectSettings()
    configured = {t.name: t for t in config.targets} if config is not None else {}
    profiles = []
    for target in header.targets:
        settings = config.detect_for(configured[target.name]) if config is not None and target.name in configured \
            else defaults
        profiles.append(TargetProfile(target.name, target.kind, tuple(target.gpus), settings))
    for name, settings_of in configured.items():
        if header.target(name) is None:
            profiles.append(TargetProfile(name, settings_of.kind, tuple(settings_of.gpus_seen()),
                                          config.detect_for(settings_of)))  # type: ignore[union-attr]
    return DetectionEngine(profiles, defaults, totals if totals is not None else gpu_totals(header.gpus))
