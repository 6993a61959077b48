"""CloudWatch Embedded Metric Format: the same metrics as JSON lines, for the CloudWatch agent.

No API calls and no credentials in the daemon: the agent (or Lambda, or Fluent Bit) reads
the lines and CloudWatch extracts the metrics. One line per dimension set (the host, each
target, each GPU), counters as deltas since the last line, as in the CloudWatch exporter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from loguru import logger

from watchdog.config.model import EmfSettings
from watchdog.metrics.snapshot import Deltas, MetricsSnapshot, Sample

_log = logger.bind(component="metrics")


def emf_lines(samples: list[Sample], host: str, at_ms: int, namespace: str,
              high_resolution: bool = False) -> list[dict[str, Any]]:
    """One EMF document per dimension set (Host; Host+Target; Host+GPU)."""
    groups: dict[tuple[tuple[str, str], ...], list[Sample]] = {}
    for sample in samples:
        groups.setdefault(tuple(sample.dimensions(host).items()), []).append(sample)
    docs = []
    for dims, members in groups.items():
        definitions: list[dict[str, Any]] = []
        for sample in members:
            definition: dict[str, Any] = {"Name": sample.metric.name, "Unit": sample.metric.unit}
            if high_resolution:
                definition["StorageResolution"] = 1
            definitions.append(definition)
        doc: dict[str, Any] = {
            "_aws": {
                "Timestamp": at_ms,
                "CloudWatchMetrics": [
                    {"Namespace": namespace, "Dimensions": [[k for k, _ in dims]], "Metrics": definitions}
                ],
            },
            **dict(dims),
        }
        for sample in members:
            doc[sample.metric.name] = sample.value
        docs.append(doc)
    return docs


class EmfWriter:
    """Writes the snapshot as EMF lines every ``interval`` to a file (appended) or standard output."""

    def __init__(self, settings: EmfSettings, host: str,
                 snapshot: Callable[[], Awaitable[MetricsSnapshot]]) -> None:
        self.settings = settings
        self.host = host
        self._snapshot = snapshot
        self._deltas = Deltas()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        self._task.set_name("metrics:emf")
        _log.info(f"emf: writing metrics every {self.settings.interval:g} s to {self.settings.path or 'stdout'}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.write_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - metrics never stop the daemon
                _log.opt(exception=exc).error(f"emf: writer failed: {exc!r}")
            await asyncio.sleep(max(0.0, self.settings.interval - (time.monotonic() - started)))

    async def write_once(self) -> None:
        snapshot = await self._snapshot()
        docs = emf_lines(self._deltas.apply(snapshot), self.host, int(snapshot.at.timestamp() * 1000),
                         self.settings.namespace, self.settings.high_resolution)
        text = "".join(json.dumps(doc, separators=(",", ":")) + "\n" for doc in docs)
        if not self.settings.path:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        try:
            await asyncio.to_thread(_append, Path(self.settings.path), text)
        except OSError as exc:
            if not self._failing:
                _log.error(f"emf: cannot write {self.settings.path}: {exc}; metrics of this period lost")
            self._failing = True
            return
        if self._failing:
            _log.info(f"emf: writing {self.settings.path} again")
            self._failing = False


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
