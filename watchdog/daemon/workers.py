"""Scheduling: one worker per target, plus the host-wide jobs (GPU, processes, housekeeping).

Modelled on kubelet's prober workers: each target's :class:`TargetWorker` owns
its jobs (status poll, canary tick, log follower), so a reload adds, removes or
replaces the workers of the targets that changed and leaves the others running.
APScheduler runs the periodic jobs (no overlapping runs, missed runs
coalesced); every job has a deadline and never raises into the scheduler. A
job's first run (the slow one) runs before its schedule starts, so a first run
longer than the interval delays the second run instead of losing a slot.

:class:`JobTimings` measures how late each periodic job starts against its plan
(lag) and how many planned runs never happened (skipped: coalesced, or the
previous run still going); a summary is logged every minute and at stop
(``scheduler: ... lag p99 ...``), which ``scripts/bench_scale.py`` reads.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from loguru import logger

from watchdog.config import Config
from watchdog.probes.suite import ProbeSuite, TargetProbes

_log = logger.bind(component="daemon")
CANARY_TICK_S = 1.0
CANARY_TICKS = "canary-ticks"
STAGGER_S = 2.0
HOUSEKEEPING_S = 5.0

Job = Callable[[], Awaitable[Any]]
SUMMARY_EVERY_S = 60.0


class JobTimings:
    """Lag (actual minus planned start) of every periodic job run, and planned runs skipped.

    Cheap on purpose: one monotonic read and a counter bump per run; lags are kept as a
    histogram in whole milliseconds, so memory stays flat however long the daemon runs.
    The plan of a job is its first run plus whole multiples of its interval (APScheduler's
    interval trigger)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic
        self.histogram: Counter[int] = Counter()
        self.runs = 0
        self.skipped = 0
        self.skipped_by_job: Counter[str] = Counter()
        self.worst: tuple[float, str] = (0.0, "")
        self._plans: dict[str, tuple[float, float]] = {}  # name -> (next planned start, interval)
        self._last_summary = monotonic()

    def plan(self, name: str, first: float, interval: float) -> None:
        self._plans[name] = (first, interval)

    def forget(self, name: str) -> None:
        self._plans.pop(name, None)

    def started(self, name: str) -> float | None:
        """Note a run of ``name`` starting now; returns its lag in seconds (None if unplanned)."""
        plan = self._plans.get(name)
        if plan is None:
            return None
        now = self.monotonic()
        planned, interval = plan
        lag = now - planned
        missed = max(0, math.floor(lag / interval)) if interval > 0 else 0
        if missed:  # the run for a later slot: the slots in between were skipped
            self.skipped += missed
            self.skipped_by_job[name] += missed
            lag -= missed * interval
        lag = max(lag, 0.0)  # a wall-clock scheduler may fire a hair early on the monotonic clock
        self._plans[name] = (planned + (missed + 1) * interval, interval)
        self.runs += 1
        self.histogram[round(lag * 1000)] += 1
        if lag > self.worst[0]:
            self.worst = (lag, name)
        return lag

    def percentile(self, q: float) -> float:
        """The q-th percentile lag in seconds (resolution 1 ms); 0 when nothing ran."""
        if not self.runs:
            return 0.0
        rank = max(1, math.ceil(q / 100 * self.runs))
        seen = 0
        for ms in sorted(self.histogram):
            seen += self.histogram[ms]
            if seen >= rank:
                return ms / 1000
        return max(self.histogram) / 1000

    def summary(self) -> dict[str, Any]:
        return {"runs": self.runs, "skipped": self.skipped, "lag_p50_ms": round(1000 * self.percentile(50)),
                "lag_p99_ms": round(1000 * self.percentile(99)), "lag_max_ms": round(1000 * self.worst[0]),
                "worst_job": self.worst[1], "skipped_by_job": dict(self.skipped_by_job)}

    def log_if_due(self, force: bool = False) -> None:
        now = self.monotonic()
        if not force and now - self._last_summary < SUMMARY_EVERY_S:
            return
        self._last_summary = now
        s = self.summary()
        _log.bind(scheduler=json.dumps(s)).info(
            f"scheduler: {s['runs']} runs, lag p50 {s['lag_p50_ms']} ms p99 {s['lag_p99_ms']} ms "
            f"max {s['lag_max_ms']} ms ({s['worst_job'] or '-'}), {s['skipped']} skipped (since start)")


class Scheduler:
    """Owns the APScheduler instance, the host-wide jobs and one worker per target.

    ``on_done(name)`` is called after every run of a job (progress for systemd's
    watchdog, the first-round bookkeeping for readiness).
    """

    def __init__(self, on_done: Callable[[str], None] = lambda name: None) -> None:
        self.on_done = on_done
        self.workers: dict[str, TargetWorker] = {}
        self._scheduler: AsyncIOScheduler | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._first_runs: dict[str, asyncio.Task[Any]] = {}  # name -> its first run, until it ends
        self.timings = JobTimings()

    @property
    def running(self) -> bool:
        return self._scheduler is not None

    def start(self) -> None:
        self._scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        )
        self._scheduler.start()

    async def stop(self) -> None:
        for name in list(self.workers):
            await self.remove_worker(name)
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.timings.log_if_due(force=True)

    # --- jobs ---------------------------------------------------------------------------------

    def every(self, name: str, seconds: float, job: Job, deadline: float, *, now: bool = True,
              delay: float = 0.0) -> None:
        """Run ``job`` every ``seconds`` (the first run at once if ``now``, or ``delay`` seconds from
        now); replaces a job of that name.

        With ``now``, the first run is a task of its own and the periodic schedule starts when it
        ends: at the slot ``seconds`` after the first run's start, or at once if the first run
        took longer. A first run is the slow one (the first GPU round attributes every process
        from scratch: 1.2 s at 32 targets, over a 1 s interval); started by APScheduler, the
        slot it overran was skipped (``max_instances = 1``) and counted as such (issue 15)."""
        assert self._scheduler is not None, "start() first"
        seconds = max(seconds, 0.1)
        self.cancel(name)
        run = self._timed(name, self.guarded(name, job, deadline))
        if not now:
            self.timings.plan(name, self.timings.monotonic() + seconds, seconds)
            self._scheduler.add_job(run, "interval", seconds=seconds, id=name, name=name, replace_existing=True)
            return
        first = self.timings.monotonic() + delay
        self.timings.plan(name, first, seconds)
        task = self.spawn(self._first_run(name, run, first, seconds, delay), f"first:{name}")
        self._first_runs[name] = task

    async def _first_run(self, name: str, run: Job, first: float, seconds: float, delay: float) -> None:
        """The first run of a periodic job, then its schedule: the next run at ``first + seconds``,
        or as soon as the first run ends if that is later (a delayed run, not a skipped one)."""
        if delay > 0:
            await asyncio.sleep(delay)
        await run()  # guarded: never raises; a cancel (stop, reload, cancel(name)) ends it quietly
        if self._first_runs.get(name) is not asyncio.current_task() or self._scheduler is None:
            return  # cancelled or replaced meanwhile: the schedule is no longer ours to start
        del self._first_runs[name]
        clock = self.timings.monotonic()
        wait = max(0.0, first + seconds - clock)
        if not wait:
            _log.info(f"job {name}: the first run took {clock - first:.2f} s, over its {seconds:g} s interval; "
                      "the next starts now")
        self.timings.plan(name, clock + wait, seconds)
        self._scheduler.add_job(run, "interval", seconds=seconds, id=name, name=name, replace_existing=True,
                                next_run_time=datetime.now(UTC) + timedelta(seconds=wait))

    def tick(self, name: str, seconds: float, job: Job) -> None:
        """A light job that decides whether to start work (no deadline, no progress mark)."""
        assert self._scheduler is not None, "start() first"
        self.timings.plan(name, self.timings.monotonic(), seconds)
        self._scheduler.add_job(self._timed(name, job), "interval", seconds=seconds, id=name, name=name,
                                next_run_time=datetime.now(UTC), replace_existing=True)

    def _timed(self, name: str, job: Job) -> Job:
        """``job``, with its start measured against the plan (see :class:`JobTimings`)."""
        timings = self.timings

        async def run() -> Any:
            timings.started(name)
            timings.log_if_due()
            return await job()

        return run

    def cancel(self, name: str) -> None:
        self.timings.forget(name)
        first = self._first_runs.pop(name, None)
        if first is not None:
            first.cancel()
        if self._scheduler is not None and self._scheduler.get_job(name) is not None:
            self._scheduler.remove_job(name)

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """A task that the scheduler cancels when it stops."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def guarded(self, name: str, job: Job, deadline: float) -> Callable[[], Awaitable[None]]:
        """A job with a deadline that never raises into the scheduler and reports when done."""

        async def run() -> None:
            try:
                await asyncio.wait_for(job(), timeout=deadline)
            except asyncio.CancelledError:
                # Stopping (SIGTERM) or reloading: the scheduler cancels jobs in flight. That is
                # no error, and must not become one traceback per job in the log.
                return
            except TimeoutError:
                _log.warning(f"job {name} overran its {deadline:.0f} s deadline; cancelled")
            except Exception as exc:  # noqa: BLE001 - a probe bug must not stop the schedule
                _log.opt(exception=exc).error(f"job {name} failed: {exc!r}")
            self.on_done(name)

        return run

    # --- host-wide jobs -------------------------------------------------------------------------

    def schedule_host(self, suite: ProbeSuite, config: Config) -> list[str]:
        """(Re)schedule the GPU and process jobs for ``suite``; returns the names of the jobs."""
        names = []
        self.cancel("gpu")
        self.cancel("processes")
        if suite.gpu is not None:
            every = config.watchdog.gpu_interval
            self.every("gpu", every, suite.gpu.round, max(every * 2, 10))
            suite.gpu.start_xid_watch()
            names.append("gpu")
        if suite.targets:  # one probe for every target's processes: as often as the keenest wants
            every = min(config.intervals_for(p.settings)["process"] for p in suite.targets.values())
            self.every("processes", every, suite.processes.round, 15.0)
            names.append("processes")
        return names

    # --- per-target workers ---------------------------------------------------------------------

    async def sync_workers(self, suite: ProbeSuite, config: Config) -> list[str]:
        """Make the workers match the suite's targets: keep those whose probes the suite kept,
        replace changed ones, add new ones, remove the gone. Returns the new workers' poll jobs."""
        started = []
        for name in list(self.workers):
            if suite.targets.get(name) is not self.workers[name].probes:
                await self.remove_worker(name)
        new = [name for name in suite.targets if name not in self.workers]
        for k, name in enumerate(new):
            # Spread the new workers' first polls (and so every later one) over STAGGER_S:
            # 32 polls due in the same instant made the last one start 130 ms late.
            worker = TargetWorker(name, suite.targets[name], config, self, delay=STAGGER_S * k / len(new))
            worker.start()
            self.workers[name] = worker
            started.append(worker.poll_job)
        return started

    async def remove_worker(self, name: str) -> None:
        worker = self.workers.pop(name, None)
        if worker is not None:
            await worker.stop_and_wait()
        if not self.workers:
            self.cancel(CANARY_TICKS)

    def ensure_canary_ticks(self) -> None:
        """One job ticks every worker's canary each second: a job per target cost 32 scheduler
        runs a second at 32 targets, and all fired at the same instant anyway (issue 15)."""
        if self._scheduler is not None and self._scheduler.get_job(CANARY_TICKS) is None:
            self.tick(CANARY_TICKS, CANARY_TICK_S, self._canary_ticks)

    async def _canary_ticks(self) -> None:
        for worker in list(self.workers.values()):
            try:
                await worker.canary_tick()
            except Exception as exc:  # noqa: BLE001 - one target's bug must not stop the others' canaries
                _log.opt(exception=exc).error(f"canary tick for {worker.name} failed: {exc!r}")


class TargetWorker:
    """The jobs of one target: its status poll, its canary tick and its log follower."""

    def __init__(self, name: str, probes: TargetProbes, config: Config, scheduler: Scheduler,
                 delay: float = 0.0) -> None:
        self.name = name
        self.delay = min(delay, config.intervals_for(probes.settings)["poll"])
        self.probes = probes
        self.poll_interval = config.intervals_for(probes.settings)["poll"]
        self.scheduler = scheduler
        self.poll_job = f"poll:{name}"
        self._tasks: list[asyncio.Task[Any]] = []

    def start(self) -> None:
        probes = self.probes
        self.scheduler.every(self.poll_job, self.poll_interval, probes.server.round,
                             probes.settings.request_timeout + 5, delay=self.delay)
        self.scheduler.ensure_canary_ticks()
        if probes.logs is not None:
            self._tasks.append(self.scheduler.spawn(self._follow_logs(), f"logs:{self.name}"))

    def stop(self) -> list[asyncio.Task[Any]]:
        """Cancel the jobs and tasks; returns the tasks to await."""
        self.scheduler.cancel(self.poll_job)
        for task in self._tasks:
            task.cancel()
        tasks, self._tasks = self._tasks, []
        return tasks

    async def stop_and_wait(self) -> None:
        await asyncio.gather(*self.stop(), return_exceptions=True)

    async def canary_tick(self) -> None:
        """Every second: decide once whether a canary is due, and if so send it as its own task."""
        canary = self.probes.canary
        decision = canary.decide()
        if not decision.send:
            return
        job = self.scheduler.guarded(f"canary:{self.name}", lambda: canary.send(decision),
                                     canary.settings.timeout + 10)
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(self.scheduler.spawn(job(), f"canary:{self.name}"))

    async def _follow_logs(self) -> None:
        """Follow the target's log for as long as the worker runs; restart it if it ends."""
        logs = self.probes.logs
        assert logs is not None
        backoff = 1.0
        while True:
            try:
                await logs.run()
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logs are best effort
                _log.warning(f"log follower for {self.name} failed: {exc!r}; retrying in {backoff:.0f} s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)
