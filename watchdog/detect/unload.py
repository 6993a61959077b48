"""Failed unload: GPU memory not given back when a model goes away.

Three ways memory fails to come back:

1. **An unload** (an ``unload_requested`` event, or the model leaving the
   server's list, e.g. when its keep_alive expires): within ``unload_grace``
   after the unload (and after the requests in flight drained), the processes
   that held the model must release at least ``unload_release_fraction`` of
   its size. Memory a CUDA context and allocator cache keep (about 1.5 GiB on
   an H100) is healthy. Only processes that existed before the unload count,
   so a new model loading into a new runner does not hide or fake a release.
2. **An orphan**: after the server's main process is replaced or gone, a
   process that held memory for it still holds it ``unload_grace`` later.
3. **Ollama with nothing loaded**: ``/api/ps`` lists no model, yet its runner
   processes hold memory that is not moving (not a load in progress).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from watchdog.detect.base import TargetDetector, Verdict, clear, raise_
from watchdog.detect.view import gib, secs
from watchdog.trace.records import Event, GpuSample, ProcessSample, Record, ServerPoll

#: Memory below this is a CUDA context or an empty cache, never a held model.
_NOISE_MIB = 256.0
#: Ollama with no model loaded: runners holding at least this much are not empty.
_EMPTY_HOLD_MIB = 1024.0


@dataclass(slots=True)
class _PendingUnload:
    model: str
    t: float
    vram: float | None
    before: dict[int, float]
    drained_t: float | None
    reason: str
    min_held: float = field(default=float("inf"))


class UnloadDetector(TargetDetector):
    finding = "failed_unload"
    wants = (Event, ServerPoll, ProcessSample, GpuSample)

    def __init__(self, view) -> None:  # type: ignore[no-untyped-def]
        super().__init__(view)
        self.pending: dict[str, _PendingUnload] = {}
        self.orphans_since: float | None = None
        self.orphan_cutoff = 0.0
        self.first_seen: dict[int, float] = {}
        self.last_process_t: float | None = None
        self.prev_models: set[str] = set()
        self.prev_pid: int | None = None
        self.held_pids: dict[int, float] = {}
        self.watch: dict[int, float] = {}
        self.watch_model: str | None = None
        self.empty_since: float | None = None
        self.settled: dict[str, float] = {}

    def observe(self, record: Record) -> Verdict | None:
        view = self.view
        t = view.now
        if isinstance(record, Event):
            if record.event == "unload_requested" and record.model:
                self._start(record.model, t, "an unload was requested")
            elif record.event in ("restart_started", "restart_finished"):
                self.pending.clear()
                if record.event == "restart_finished":
                    self._orphan_watch(t, t if view.restart_started_t is None else view.restart_started_t)
        elif isinstance(record, ServerPoll):
            self._models_changed(record)
        elif isinstance(record, ProcessSample):
            before = self.last_process_t if self.last_process_t is not None else t
            if record.pid is not None and self.prev_pid is not None and record.pid != self.prev_pid:
                self._orphan_watch(t, before)
            elif record.status in ("gone", "zombie") and self.orphans_since is None:
                self._orphan_watch(t, t)
            if record.pid is not None:
                self.prev_pid = record.pid
            self.last_process_t = t
        elif isinstance(record, GpuSample):
            held = view.held_by_pid()
            for pid in held:
                self.first_seen.setdefault(pid, t)
            if held:
                self.held_pids = held
            if view.running == 0 or view.running is None:
                for pending in self.pending.values():
                    if pending.drained_t is None:
                        pending.drained_t = t
        if not isinstance(record, GpuSample) or record.index not in view.gpus:
            return None
        if self.active:
            return self._released()
        return self._judge_pending(t) or self._judge_orphans(t) or self._judge_empty(t)

    # --- what starts a check ---------------------------------------------------------------

    def _start(self, model: str, t: float, reason: str) -> None:
        if model in self.pending:
            return
        settled = self.settled.get(model)
        if settled is not None and t - settled < 2 * self.settings.unload_grace:
            return  # the same unload, seen twice (an event, then the list)
        view = self.view
        before = {pid: mem for pid, mem in (view.held_by_pid() or self.held_pids).items() if mem > 0}
        vram = view.model_vram.get(model)
        held = sum(before.values())
        if not before or (vram is not None and held < self.settings.unload_release_fraction * vram):
            return  # nothing (left) to give back
        drained = t if not view.work_in_flight() else None
        self.pending[model] = _PendingUnload(model, t, vram, before, drained, reason)

    def _models_changed(self, poll: ServerPoll) -> None:
        view = self.view
        if poll.state == "down":
            self.prev_models = set()  # whatever it had is gone with it: not an unload
            return
        if poll.state not in ("ready", "loading"):
            return  # a server that errs says nothing about its models
        names = {m.name for m in poll.models}
        if poll.state == "ready" and not view.restarting(poll.t, self.settings.unload_grace):
            for model in self.prev_models - names:
                self._start(model, poll.t, "it left the server's list of loaded models")
        for model in names:
            self.pending.pop(model, None)  # loaded (again): nothing to judge
        self.prev_models = names
        if view.profile.kind == "ollama" and not names and poll.state == "ready":
            if self.empty_since is None:
                self.empty_since = poll.t
        else:
            self.empty_since = None

    def _orphan_watch(self, t: float, cutoff: float) -> None:
        """The server was replaced at ``t``: processes seen before ``cutoff`` must let go."""
        self.pending.clear()
        self.prev_models = set()
        self.orphans_since = t
        self.orphan_cutoff = cutoff

    # --- judging -------------------------------------------------------------------------

    def _judge_pending(self, t: float) -> Verdict | None:
        held_now = self.view.held_by_pid()
        for model, pending in list(self.pending.items()):
            still = sum(held_now.get(pid, 0.0) for pid in pending.before)
            pending.min_held = min(pending.min_held, still)
            before = sum(pending.before.values())
            expected = pending.vram if pending.vram is not None else before
            released = before - pending.min_held
            if released >= self.settings.unload_release_fraction * expected or pending.min_held < _NOISE_MIB:
                del self.pending[model]
                self.settled[model] = t
                continue
            start = pending.drained_t
            if start is None or t - max(start, pending.t) < self.settings.unload_grace:
                continue
            del self.pending[model]
            self.settled[model] = t
            holders = [pid for pid in pending.before if held_now.get(pid, 0.0) >= _NOISE_MIB]
            self.watch = {pid: held_now[pid] for pid in holders}
            self.watch_model = model
            size = f" ({gib(expected)})" if pending.vram is not None else ""
            return raise_(
                f"{model}{size} was unloaded ({pending.reason}) {secs(t - pending.t)} ago but "
                f"{gib(still)} is still held by pid {', '.join(map(str, holders))}; "
                f"released {gib(max(released, 0.0))}; {self.view.gpu_brief()}",
                model=model, held_mib=round(still), released_mib=round(max(released, 0.0)),
                pids=holders, cause="unload",
            )
        return None

    def _judge_orphans(self, t: float) -> Verdict | None:
        if self.orphans_since is None or t - self.orphans_since < self.settings.unload_grace:
            return None
        cutoff = self.orphan_cutoff
        self.orphans_since = None
        main = self.view.pid
        serving = self.view.tree_pids  # still the main process's children: they serve it, no orphans
        survivors = {
            pid: mem for pid, mem in self.view.held_by_pid().items()
            if mem >= _NOISE_MIB and pid != main and pid not in serving and self.first_seen.get(pid, t) < cutoff
        }
        if not survivors:
            return None
        self.watch, self.watch_model = survivors, None
        total = sum(survivors.values())
        return raise_(
            f"pid {', '.join(map(str, survivors))} outlived the server process it served and still holds "
            f"{gib(total)}; {self.view.gpu_brief()}",
            held_mib=round(total), pids=list(survivors), cause="orphan",
        )

    def _judge_empty(self, t: float) -> Verdict | None:
        view = self.view
        if self.empty_since is None or view.state != "ready" or view.models:
            return None
        quiet_for = 2 * self.settings.unload_grace
        if t - self.empty_since < quiet_for or view.memory_rose(t - quiet_for, t, by=64.0):
            return None
        held = {pid: mem for pid, mem in view.held_by_pid().items() if mem >= _NOISE_MIB}
        total = sum(held.values())
        if total < _EMPTY_HOLD_MIB:
            return None
        self.watch, self.watch_model = held, None
        return raise_(
            f"no model is loaded, yet pid {', '.join(map(str, held))} holds {gib(total)} "
            f"(for {secs(t - self.empty_since)}); {view.gpu_brief()}",
            held_mib=round(total), pids=list(held), cause="held_without_model",
        )

    def _released(self) -> Verdict | None:
        held_now = self.view.held_by_pid()
        still = sum(held_now.get(pid, 0.0) for pid in self.watch)
        before = sum(self.watch.values()) or 1.0
        if self.watch_model and self.watch_model in self.view.models:
            return None  # loaded again into the same process: judge nothing until it goes
        if still < _NOISE_MIB or still <= before * (1 - self.settings.unload_release_fraction):
            self.watch, self.watch_model = {}, None
            return clear(f"the memory was given back ({gib(still)} left)")
        return None
