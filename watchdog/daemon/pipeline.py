"""The observation pipeline: records in, findings and incidents out.

Probes call :meth:`Pipeline.emit` (on the daemon's loop; the XID thread hops
onto it first). Records queue up and one consumer task takes them in order:

    flight recorder → latest records (for status) → incident recordings
        → detection engine → incidents

so every record reaches every stage in the order it was made, and slow disk
I/O of the incident store never runs on the loop itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from loguru import logger

from watchdog.daemon.recorder import FlightRecorder
from watchdog.detect.engine import DetectionEngine
from watchdog.detect.finding import Finding
from watchdog.incidents import Incidents
from watchdog.status import LatestRecords
from watchdog.trace.records import Record

_log = logger.bind(component="pipeline")
_BATCH = 256


class Pipeline:
    """Moves records from the probes through recorder, engine and incidents."""

    def __init__(
        self,
        engine: DetectionEngine,
        recorder: FlightRecorder,
        latest: LatestRecords,
        incidents: Incidents,
        on_progress: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.recorder = recorder
        self.latest = latest
        self.incidents = incidents
        self.on_progress = on_progress
        self._queue: asyncio.Queue[Record] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def emit(self, record: Record) -> None:
        """Take a record from a probe (must be called on the loop's thread)."""
        self._queue.put_nowait(record)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._consume(), name="pipeline")

    async def stop(self) -> None:
        """Process what is queued, then stop."""
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def drain(self) -> None:
        await self._queue.join()

    async def _consume(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._process(batch)
            except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the pipeline
                _log.opt(exception=exc).error(f"pipeline: a batch of {len(batch)} record(s) failed: {exc!r}")
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _process(self, batch: list[Record]) -> None:
        for record in batch:
            self.recorder.add(record)
            self.latest.add(record)
        await self.incidents.on_records(batch)
        findings: list[Finding] = []
        for record in batch:
            findings.extend(self.engine.feed(record))
        if findings:
            for finding in findings:
                level = "WARNING" if finding.state == "raised" else "INFO"
                _log.log(level, f"{finding.finding} {finding.state} on {finding.target}: {finding.summary}")
            await self.incidents.on_findings(findings)
        self.on_progress()

    async def swap_engine(self, engine: DetectionEngine, history: Iterable[Record]) -> None:
        """Replace the engine (after a reload), warmed up on recent history.

        The new engine replays what the recorder holds, so detectors keep their
        memory; its conclusions are then reconciled with the open findings:
        what it no longer sees is cleared, what only it sees is raised.
        """
        await self.drain()
        for count, record in enumerate(history, start=1):
            target = getattr(record, "target", None)
            if target is None or target in engine.targets:  # forget targets the new config dropped
                engine.feed(record)
            if count % 2000 == 0:
                await asyncio.sleep(0)  # let the loop breathe: minutes of history take a while
        old = {(f.target, f.finding): f for f in self.engine.active()}
        new = {(f.target, f.finding): f for f in engine.active()}
        now = max(engine.now, self.engine.now)
        changes: list[Finding] = []
        for key, finding in old.items():
            if key not in new:
                changes.append(Finding(now, finding.target, finding.finding, "cleared",
                                       "no longer seen with the reloaded configuration"))
        for key, finding in new.items():
            if key not in old:
                changes.append(finding)
        self.engine = engine
        if changes:
            await self.incidents.on_findings(changes)
