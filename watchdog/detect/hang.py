"""Hang: work in flight that makes no progress.

Progress is the thing to watch, not any single signal. Four ways to know:

1. **Counters** (vLLM, llama.cpp): requests running or waiting, and the
   generated-token counter standing still. With the GPU (and, where the server
   computes on the CPU, the CPU) idle, ``stall_after`` of that is a hang; a
   busy GPU without tokens is a long prefill, or a collective spinning at 100%,
   so only ``busy_stall_after`` of it is. Where the server also counts engine
   steps (llama.cpp ``n_decode_total``, vLLM ``iteration_tokens_total``), a
   busy GPU with no step, no token, no prompt token, no KV-cache change and a
   canary failing for ``step_stall_after`` is a stuck collective: a prefill
   steps (llama.cpp) or grows the KV cache and lets canaries through (vLLM's
   chunked prefill), a collective that never completes does neither.
2. **Canaries** (every kind; the only way on Ollama): ``canary_failures``
   canaries in a row that got no token, with the server holding memory and not
   loading. One failed canary in an otherwise healthy picture is noise.
3. **A frozen process** (SIGSTOP, a debugger): stopped while holding a model.
4. **The server's own word**: the NCCL watchdog's collective timeout in its log.

A hang clears on proof of progress (tokens flow again, a canary answers) or
when the server is restarted.
"""

from __future__ import annotations

import re

from watchdog.detect.base import TargetDetector, Verdict, clear, raise_
from watchdog.detect.view import secs
from watchdog.trace.records import Canary, Event, GpuSample, LogLine, ProcessSample, Record, ServerPoll

HANG_ERRORS = frozenset({"timeout", "stalled"})
#: Errors that show the server cannot generate although it says it is ready (vLLM#1492:
#: every completion answered with HTTP 500 while /v1/models looks fine).
GENERATION_ERRORS = frozenset({"http_5xx", "bad_response"})
#: Such errors need one more in a row than silent failures: a 500 can be a passing overload.
EXTRA_ERRORS_NEEDED = 1
_NCCL_TIMEOUT = re.compile(r"(collective operation timeout|NCCL.*(timed? ?out|timeout)|Watchdog caught collective)", re.I)


#: A process seen stopped in two samples this far apart is frozen, not paused for a moment.
STOPPED_FOR_S = 5.0
#: The process probe's samples are ``process_interval`` (5 s) apart give or take a few ms: two
#: samples 4.99 s apart must count as 5 s (a strict comparison waited a third sample, 5 s more,
#: in a quarter of the bench's SIGSTOPs on a target without GPU samples in between).
SAMPLE_JITTER_S = 0.5


class HangDetector(TargetDetector):
    finding = "hang"

    def __init__(self, view) -> None:  # type: ignore[no-untyped-def]
        super().__init__(view)
        self.failures: list[Canary] = []
        self.errors: list[Canary] = []
        self.stopped_since: float | None = None
        self.stopped_samples = 0
        #: When the last sample showed the process stopped (what ``stopped_since`` rests on).
        self.stopped_seen: float | None = None

    def observe(self, record: Record) -> Verdict | None:
        view = self.view
        t = view.now
        if isinstance(record, Event) and record.event == "restart_finished":
            self._reset()
            return clear("the server was restarted") if self.active else None
        if isinstance(record, Event) and record.event == "restart_started":
            self._forget_stopped()  # the stopped process is being replaced: its samples say nothing now
        if isinstance(record, ProcessSample):
            if view.pid_changed_t == record.t or record.status == "gone":
                self._reset()
                if self.active:
                    return clear(f"the hung process is gone (now pid {record.pid})" if record.pid else
                                 "the hung process is gone")
            if record.status == "stopped":
                if self.stopped_since is None:
                    self.stopped_since = record.t
                self.stopped_samples += 1
                self.stopped_seen = record.t
            else:
                self._forget_stopped()
        if self._answered_since_stopped(record):
            # A stopped process answers nothing: whatever answered after the last stopped sample
            # is another process (a restart's new server, not yet sampled) or the same one
            # resumed. The stopped samples are stale; judging by them raised a hang for a pid
            # already reaped (a restart through a command, the next process round still to come).
            self._forget_stopped()
        if isinstance(record, Canary):
            verdict = self._take_canary(record)
            if verdict is not None:
                return verdict
        if isinstance(record, ServerPoll) and view.poll_progressed:
            self.failures.clear()
            if self.active:
                return clear(f"tokens flow again (counter at {view.tokens:.0f})")
        if isinstance(record, LogLine) and not self.active and _NCCL_TIMEOUT.search(record.line):
            return raise_(f"the server reports a stuck collective: {record.line.strip()[:160]}",
                          rule="nccl_log", line=record.line[:500])
        if self.active or not isinstance(record, (ServerPoll, GpuSample, Canary, ProcessSample)):
            return None
        return (self._frozen(t) or self._step_stall(t) or self._counter_stall(t) or self._canary_stall(t)
                or self._failing(t))

    def _reset(self) -> None:
        self.failures.clear()
        self.errors.clear()
        self._forget_stopped()

    def _forget_stopped(self) -> None:
        self.stopped_since, self.stopped_samples, self.stopped_seen = None, 0, None

    def _answered_since_stopped(self, record: Record) -> bool:
        """The server answered after the last sample that showed its process stopped."""
        seen = self.stopped_seen
        if seen is None:
            return False
        if isinstance(record, Canary):
            return record.ok and record.t > seen  # a whole answer (tokens alone may predate the stop)
        if isinstance(record, ServerPoll):
            return record.state in ("ready", "loading") and record.t > seen
        return False

    def _take_canary(self, canary: Canary) -> Verdict | None:
        loading = self.view.loading(canary.start - 5.0, canary.t)
        if canary.error in GENERATION_ERRORS and self.view.state == "ready" and self.view.models and not loading:
            self.errors.append(canary)
        else:
            self.errors.clear()
        if canary.ok:
            self.failures.clear()
            if self.active:
                ttft = f"first token after {canary.ttft_s:.2f} s" if canary.ttft_s is not None else "answered"
                return clear(f"a canary got through ({ttft})")
            return None
        if canary.error == "timeout" and (canary.tokens or 0) > 0:
            self.failures.clear()  # tokens came, only too slowly for the whole deadline: slow, not hung
        elif canary.error in HANG_ERRORS:
            if self.view.loading(_waited_from(canary), canary.t):
                self.failures.clear()  # blocked on a model load: healthy
            else:
                self.failures.append(canary)
        else:
            self.failures.clear()  # the server answered something: not a silent hang
        return None

    def _holds_work(self) -> bool:
        view = self.view
        return bool(view.models) or view.held_mib() > 0 or not view.gpu_seen

    def _frozen(self, t: float) -> Verdict | None:
        if self.stopped_since is None or self.stopped_samples < 2 or not self._holds_work():
            return None
        if self.view.restarting(t, 0.0):
            return None  # being restarted: the stopped process is on its way out
        frozen_for = t - self.stopped_since
        if frozen_for < min(self.settings.stall_after, STOPPED_FOR_S) - SAMPLE_JITTER_S:
            return None
        view = self.view
        return raise_(
            f"process {view.pid} is stopped (SIGSTOP or a debugger) for {secs(frozen_for)}; {view.gpu_brief()}",
            rule="process_stopped", pid=view.pid, stopped_s=round(frozen_for, 1),
        )

    def _counter_stall(self, t: float) -> Verdict | None:
        view = self.view
        if not view.has_counters or not view.work_in_flight() or view.state != "ready":
            return None
        if view.poll_progressed:
            return None  # the last poll saw tokens: no stall is proven until one sees none
        if view.restarting(t, self.settings.stall_after):
            return None
        since = view.work_since if view.work_since is not None else t
        if view.progress_t is not None:
            since = max(since, view.progress_t)
        stalled = t - since
        if stalled < self.settings.stall_after:
            return None
        work = f"{view.running or 0} request(s) running"
        if view.waiting:
            work += f", {view.waiting} waiting"
        counter = f"token counter stuck at {view.tokens:.0f}" if view.tokens is not None else "no token counter"
        busy = view.busy(t - self.settings.stall_after, t)
        evidence = {"running": view.running, "waiting": view.waiting, "tokens": view.tokens,
                    "stalled_s": round(stalled, 1)}
        if busy is False:
            return raise_(f"no tokens for {secs(stalled)} with {work} ({counter}); {view.gpu_brief()}{self._cpu()}",
                          rule="counters_idle", **evidence)
        if stalled >= self.settings.busy_stall_after:
            why = "while the GPU stays busy (a stuck collective, or a prefill beyond the limit)" if busy else \
                "and nothing shows activity"
            return raise_(f"no tokens for {secs(stalled)} with {work} {why}; {view.gpu_brief()}",
                          rule="counters_busy", **evidence)
        return None

    def _step_stall(self, t: float) -> Verdict | None:
        """No engine step, token, prompt token or KV change, the GPU busy, canaries failing."""
        view = self.view
        if not view.has_steps or not view.work_in_flight() or view.state != "ready" or view.poll_progressed:
            return None
        if view.restarting(t, self.settings.stall_after):
            return None
        since = view.work_since if view.work_since is not None else t
        for moved in (view.progress_t, view.step_progress_t):
            if moved is not None:
                since = max(since, moved)
        stalled = t - since
        if stalled < self.settings.step_stall_after or not self._gpu_busy(since, t):
            return None
        failed = [c for c in self.failures if c.t >= since]
        if not failed:
            return None  # a canary that gets through (or none tried yet) is no proof of a stuck engine
        work = f"{view.running or 0} request(s) running"
        if view.waiting:
            work += f", {view.waiting} waiting"
        steps = f"step counter at {view.steps:.0f}" if view.steps is not None else "no step counter"
        return raise_(
            f"no engine step, token or prompt token for {secs(stalled)} with {work} ({steps}) while the GPU "
            f"stays busy, and canaries fail ({', '.join(_describe_failure(c) for c in failed[-2:])}): "
            f"a stuck collective; {view.gpu_brief()}",
            rule="steps_stalled", running=view.running, waiting=view.waiting, steps=view.steps,
            tokens=view.tokens, prompt_tokens=view.prompt_tokens, kv_cache_usage=view.kv,
            stalled_s=round(stalled, 1), canaries=len(failed),
        )

    def _gpu_busy(self, t0: float, t1: float) -> bool:
        """The GPU (not the CPU) above the idle threshold in at least half the samples of [t0, t1]."""
        samples = list(self.view.util.between(t0, t1))
        if len(samples) < 3:
            return False
        above = sum(1 for u in samples if u >= self.settings.idle_util_percent)
        return above >= len(samples) / 2

    def _canary_stall(self, t: float) -> Verdict | None:
        failures = self.failures
        if len(failures) < self.settings.canary_failures or not self._holds_work():
            return None
        view = self.view
        first = failures[0].start
        windows = [(_waited_from(c), c.t) for c in failures]
        activity = [view.busy(a, b) for a, b in windows]
        busy = any(a is True for a in activity)
        errors = ", ".join(_describe_failure(c) for c in failures[-3:])
        alive = ""
        if view.state == "ready":
            models = ", ".join(view.models) if view.models else "no model"
            alive = f"; the status endpoint still answers ({models} loaded)"
        evidence = {"canaries": len(failures), "first_failure_started": round(first, 2),
                    "detect_s": round(t - first, 1)}
        if not busy:
            return raise_(f"{len(failures)} canaries in a row got no token ({errors}); {view.gpu_brief()}{alive}",
                          rule="canaries", **evidence)
        if t - first >= self.settings.busy_stall_after:
            return raise_(f"canaries got no token for {secs(t - first)} ({errors}) while the GPU stays busy; "
                          f"{view.gpu_brief()}{alive}", rule="canaries_busy", **evidence)
        return None

    def _failing(self, t: float) -> Verdict | None:
        """Canaries answered with errors, again and again, by a server that says it is ready."""
        errors = self.errors
        if len(errors) < self.settings.canary_failures + EXTRA_ERRORS_NEEDED:
            return None
        view = self.view
        if view.state != "ready" or not view.models:
            return None
        if view.progress_t is not None and view.progress_t >= errors[0].start:
            return None  # real traffic still gets tokens: the canary's request is the problem
        kinds = ", ".join(sorted({c.error or "error" for c in errors}))
        models = ", ".join(view.models)
        return raise_(
            f"{len(errors)} canaries in a row failed ({kinds}) over {secs(t - errors[0].start)} while the server "
            f"reports ready with {models} loaded: it cannot generate; {view.gpu_brief()}",
            rule="canary_errors", canaries=len(errors),
        )

    def _cpu(self) -> str:
        last = self.view.cpu.last()
        return f"; server CPU {last[1]:.0f}%" if last is not None else ""


def _waited_from(canary: Canary) -> float:
    """When the canary started waiting in vain: its start, or its first token if it stalled."""
    if canary.error == "stalled":
        return canary.start + (canary.ttft_s or 0.0)
    return canary.start


def _describe_failure(canary: Canary) -> str:
    waited = canary.t - canary.start
    if canary.error == "stalled":
        return f"stalled after {canary.tokens or 0} token(s), {waited:.0f} s"
    return f"timeout after {waited:.0f} s"
