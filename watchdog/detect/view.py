"""A target as the detectors see it: the latest observations and short histories.

The engine updates one :class:`TargetView` per target with every record, so
each detector reads derived signals (is work in flight, when did tokens last
flow, is the GPU idle, how much memory does the server hold) instead of
re-deriving them from raw records. Pure: no I/O, time only from records.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from watchdog.detect.profile import TargetProfile
from watchdog.trace.records import Canary, Event, GpuSample, LoadedModel, ProcessSample, ServerPoll

#: A server whose token counter falls has restarted: that is not progress data.
_RATE_SMOOTHING = 0.3
#: NVML clock event reasons that slow the GPU down (gpu.py's names), and how to say them.
SLOWDOWN_REASONS = {
    "hw_thermal": "hardware thermal slowdown",
    "sw_thermal": "software thermal slowdown",
    "hw_power_brake": "power brake (external power signal)",
    "hw_slowdown": "hardware slowdown",
    "sw_power_cap": "software power cap",
}
#: The trace field of an engine-step counter; older llama.cpp recordings call it decode_calls_total.
STEP_FIELDS = ("steps_total", "decode_calls_total")


class Series:
    """(t, value) points kept for ``horizon`` seconds, oldest first.

    Times and values in two deques of floats, not one of tuples: half the memory (issue 15;
    30 minutes of GPU utilisation, CPU and memory per target is thousands of points)."""

    __slots__ = ("_times", "_values", "horizon")

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        self._times: deque[float] = deque()
        self._values: deque[float] = deque()

    @property
    def points(self) -> list[tuple[float, float]]:
        """The points as (t, value) pairs, oldest first (a copy)."""
        return list(zip(self._times, self._values, strict=True))

    def add(self, t: float, value: float) -> None:
        times, values = self._times, self._values
        times.append(t)
        values.append(value)
        cutoff = t - self.horizon
        while times and times[0] < cutoff:
            times.popleft()
            values.popleft()

    def between(self, t0: float, t1: float) -> Iterator[float]:
        """Values with t0 <= t <= t1 (newest first)."""
        for t, value in zip(reversed(self._times), reversed(self._values), strict=True):
            if t < t0:
                break
            if t <= t1:
                yield value

    def at_or_before(self, t: float) -> float | None:
        for when, value in zip(reversed(self._times), reversed(self._values), strict=True):
            if when <= t:
                return value
        return None

    def last(self) -> tuple[float, float] | None:
        return (self._times[-1], self._values[-1]) if self._times else None


class TargetView:
    """Everything observed about one target, kept current by :meth:`update`."""

    def __init__(self, profile: TargetProfile, horizon: float = 1800.0) -> None:
        self.profile = profile
        self.settings = profile.settings
        self.now = 0.0
        # Server status endpoint.
        self.poll: ServerPoll | None = None
        self.state: str | None = None
        self.models: dict[str, LoadedModel] = {}
        self.model_vram: dict[str, float] = {}
        self.running: int | None = None
        self.waiting: int | None = None
        self.has_counters = False
        self.tokens: float | None = None
        self.tokens_t: float | None = None
        self.poll_progressed = False
        self.token_rate: float | None = None
        self.progress_t: float | None = None
        self.work_since: float | None = None
        self.load_history: deque[tuple[float, int]] = deque(maxlen=64)
        self.served_t: float | None = None
        # Engine steps, prompt tokens and KV cache: progress a long prefill shows without tokens.
        self.has_steps = False
        self.steps: float | None = None
        self.prompt_tokens: float | None = None
        self.kv: float | None = None
        self.step_progress_t: float | None = None
        # Generation speed under load: (t, mean requests running, tokens/s) between two polls.
        self.rate_samples: deque[tuple[float, float, float]] = deque(maxlen=256)
        self._rate_from: tuple[float, float, int] | None = None
        # Canaries.
        self.last_canary: Canary | None = None
        # Main process.
        self.process: ProcessSample | None = None
        #: The main process's descendants at its last sample (a process probe's ``tree_pids``).
        self.tree_pids: set[int] = set()
        self.pid: int | None = None
        self.pid_since: float | None = None
        self.pid_served = False
        self.pid_changed_t: float | None = None
        # GPUs.
        self.gpus: set[int] = set(profile.gpus)
        self.gpu_totals: dict[int, float] = {}
        self.gpu_util: dict[int, float | None] = {}
        self.gpu_procs: dict[int, dict[int, float]] = {}
        self.gpu_seen = False
        self.gpu_throttle: dict[int, list[str]] = {}
        self.gpu_clock: dict[int, tuple[float | None, float | None]] = {}
        self.util = Series(horizon)
        self.cpu = Series(horizon)
        self.mem = Series(horizon)
        # Things done to it.
        self.restart_started_t: float | None = None
        self.restart_finished_t: float | None = None

    # --- updates ----------------------------------------------------------------------------

    def update_poll(self, poll: ServerPoll) -> None:
        self.poll = poll
        self.state = poll.state
        if poll.state in ("ready", "loading"):
            self.models = {m.name: m for m in poll.models}
            for model in poll.models:
                if model.vram_mib is not None:
                    self.model_vram[model.name] = model.vram_mib
        elif poll.state == "down":
            self.models = {}
        if poll.state == "ready":
            self.served_t = poll.t
            self.pid_served = True
        self._update_counters(poll)
        self._update_steps(poll)
        self._update_rate(poll)

    def _update_counters(self, poll: ServerPoll) -> None:
        t = poll.t
        self.poll_progressed = False
        if poll.running is not None or poll.waiting is not None:
            in_flight = (poll.running or 0) + (poll.waiting or 0)
            self.running, self.waiting = poll.running, poll.waiting
            self.load_history.append((t, in_flight))
            if in_flight > 0:
                if self.work_since is None:
                    self.work_since = t
            else:
                self.work_since = None
        elif poll.state in ("down", "error"):
            pass  # unknown: keep what we knew
        else:
            self.running = self.waiting = None
        tokens = poll.gen_tokens_total
        if tokens is None:
            return
        self.has_counters = True
        previous, previous_t = self.tokens, self.tokens_t
        self.tokens, self.tokens_t = tokens, t
        if previous is None or previous_t is None or t <= previous_t:
            return
        delta = tokens - previous
        self.poll_progressed = True
        if delta < 0:  # the counter restarted with the server
            self.progress_t = t
            self.token_rate = None
            return
        if delta == 0:
            self.poll_progressed = False
            return
        interval = t - previous_t
        # Tokens flowed during part of the interval. With a known rate, estimate
        # when they stopped; without one, assume they flowed until now.
        stop = t
        if self.token_rate and self.token_rate > 0:
            stop = min(t, previous_t + delta / self.token_rate)
        self.progress_t = stop if self.progress_t is None else max(self.progress_t, stop)
        if stop >= t - 1e-9:  # a whole interval of flow: a fair sample of the rate
            rate = delta / interval
            self.token_rate = rate if self.token_rate is None else (
                _RATE_SMOOTHING * rate + (1 - _RATE_SMOOTHING) * self.token_rate
            )

    def _update_steps(self, poll: ServerPoll) -> None:
        """Engine steps, prompt tokens, KV-cache use: any change is the engine moving."""
        if poll.state != "ready":
            return
        extra = poll.extra or {}
        steps = next((extra[k] for k in STEP_FIELDS if isinstance(extra.get(k), (int, float))), None)
        prompt = extra.get("prompt_tokens_total")
        prompt = prompt if isinstance(prompt, (int, float)) else None
        moved = False
        if steps is not None:
            self.has_steps = True
            moved |= self.steps is not None and steps != self.steps
            self.steps = steps
        if prompt is not None:
            moved |= self.prompt_tokens is not None and prompt != self.prompt_tokens
            self.prompt_tokens = prompt
        if poll.kv_cache_usage is not None:
            # Only growth: a prefill allocates blocks as it goes; aborted requests free them, stuck or not.
            moved |= self.kv is not None and poll.kv_cache_usage > self.kv + 1e-9
            self.kv = poll.kv_cache_usage
        if moved or self.poll_progressed:
            self.step_progress_t = poll.t

    def _update_rate(self, poll: ServerPoll) -> None:
        """A speed sample (tokens/s at a load) from two polls that both saw requests running."""
        tokens, running = poll.gen_tokens_total, poll.running
        live = (poll.extra or {}).get("gen_tokens_live", True)  # llama.cpp without /slots: only at the end
        if poll.state != "ready" or tokens is None or running is None or live is False:
            self._rate_from = None
            return
        previous, self._rate_from = self._rate_from, (poll.t, tokens, running)
        if previous is None or running <= 0 or previous[2] <= 0:
            return
        t0, tokens0, running0 = previous
        dt = poll.t - t0
        if dt <= 0 or tokens < tokens0 or dt > 60.0:
            return
        self.rate_samples.append((poll.t, (running + running0) / 2.0, (tokens - tokens0) / dt))

    def slowdown(self) -> tuple[list[str], dict[str, object]]:
        """The GPU slowdown reasons active now on the target's GPUs, and the clock evidence."""
        reasons: list[str] = []
        evidence: dict[str, object] = {}
        for index in sorted(self.gpus):
            names = [n for n in self.gpu_throttle.get(index, []) if n in SLOWDOWN_REASONS]
            for name in names:
                if SLOWDOWN_REASONS[name] not in reasons:
                    reasons.append(SLOWDOWN_REASONS[name])
            clock, clock_max = self.gpu_clock.get(index, (None, None))
            gpu: dict[str, object] = {}
            if names:
                gpu["clock_event_reasons"] = names
            if clock is not None:
                gpu["sm_clock_mhz"] = clock
            if clock_max:
                gpu["sm_clock_max_mhz"] = clock_max
            if gpu:
                evidence[f"gpu{index}"] = gpu
        return reasons, evidence

    def update_canary(self, canary: Canary) -> None:
        self.last_canary = canary
        if canary.ok:
            self.served_t = canary.t
            self.pid_served = True
            self.progress_t = canary.t if self.progress_t is None else max(self.progress_t, canary.t)
        elif (canary.tokens or 0) > 0:
            first = canary.start + (canary.ttft_s or 0.0)
            self.progress_t = first if self.progress_t is None else max(self.progress_t, first)
        if canary.error not in (None, "refused"):
            self.pid_served = True  # it accepted the connection

    def update_process(self, sample: ProcessSample) -> None:
        self.process = sample
        pids = sample.extra.get("tree_pids")
        self.tree_pids = {p for p in pids if isinstance(p, int)} if isinstance(pids, list) else set()
        if sample.pid is not None and sample.pid != self.pid:
            if self.pid is not None:
                self.pid_changed_t = sample.t
            self.pid = sample.pid
            self.pid_since = sample.t
            self.pid_served = False
        if sample.cpu_percent is not None:
            self.cpu.add(sample.t, sample.cpu_percent)

    def update_gpu(self, sample: GpuSample) -> bool:
        """Take a GPU sample; returns True if it concerns this target."""
        mine = {p.pid: (p.mem_mib or 0.0) for p in sample.procs if p.target == self.profile.name}
        if mine:
            self.gpus.add(sample.index)
        if sample.index not in self.gpus:
            return False
        self.gpu_seen = True
        self.gpu_util[sample.index] = sample.util
        if sample.error is None:
            extra = sample.extra or {}
            throttle = extra.get("throttle")
            self.gpu_throttle[sample.index] = [str(n) for n in throttle] if isinstance(throttle, list) else []
            clock, clock_max = extra.get("sm_clock_mhz"), extra.get("sm_clock_max_mhz")
            self.gpu_clock[sample.index] = (
                float(clock) if isinstance(clock, (int, float)) else None,
                float(clock_max) if isinstance(clock_max, (int, float)) else None,
            )
            self.gpu_procs[sample.index] = mine
            if sample.util is not None:
                self.util.add(sample.t, sample.util)
            self.mem.add(sample.t, self.held_mib())
        return True

    def update_event(self, event: Event) -> None:
        if event.event == "restart_started":
            self.restart_started_t = event.t
        elif event.event == "restart_finished":
            self.restart_finished_t = event.t

    # --- derived signals ----------------------------------------------------------------------

    def requests_before(self, t: float) -> int | None:
        """Requests in flight at the last poll before ``t`` (None if the server does not say)."""
        for when, count in reversed(self.load_history):
            if when < t:
                return count
        return None

    def held_mib(self) -> float:
        """GPU memory held by the target's processes, over all its GPUs."""
        return sum(sum(procs.values()) for procs in self.gpu_procs.values())

    def held_by_pid(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for procs in self.gpu_procs.values():
            for pid, mem in procs.items():
                out[pid] = out.get(pid, 0.0) + mem
        return out

    def work_in_flight(self) -> bool:
        return self.work_since is not None

    def busy(self, t0: float, t1: float) -> bool | None:
        """Was the server visibly working (GPU, or CPU where it computes) in [t0, t1]?

        None when nothing was observed. Busy means at least a quarter of the GPU
        samples above the idle threshold, or the CPU above its busy threshold.
        """
        known = False
        samples = list(self.util.between(t0, t1))
        if samples:
            known = True
            above = sum(1 for u in samples if u >= self.settings.idle_util_percent)
            if above >= max(1, len(samples) / 4):
                return True
        if self.profile.cpu_counts_as_work:
            cpu = list(self.cpu.between(t0, t1))
            if cpu:
                known = True
                if sum(1 for c in cpu if c >= self.settings.busy_cpu_percent) >= max(1, len(cpu) / 2):
                    return True
        return False if known else None

    def memory_rose(self, t0: float, t1: float, by: float = 256.0) -> bool:
        """Did the target's memory rise by ``by`` MiB at some point within [t0, t1] (a model loading)?"""
        values = list(self.mem.between(t0, t1))
        before = self.mem.at_or_before(t0)
        if before is not None:
            values.append(before)
        lowest = float("inf")
        for value in reversed(values):  # oldest first
            if value - lowest >= by:
                return True
            lowest = min(lowest, value)
        return False

    def short_of_models(self) -> bool:
        """The processes hold less than the listed models need: a load is still in progress."""
        sizes = [self.model_vram.get(name) for name in self.models]
        known = [size for size in sizes if size is not None]
        return bool(known) and len(known) == len(sizes) and self.held_mib() < 0.9 * sum(known)

    def loading(self, t0: float, t1: float) -> bool:
        """Is a model loading around [t0, t1]? The server says so, its memory rose in that
        window, or it is still short of what the listed models need and rose in the last
        minute (a load that stopped moving is not loading any more: it may be stuck)."""
        if self.state == "loading" or self.memory_rose(t0, t1):
            return True
        return self.short_of_models() and self.memory_rose(t1 - 60.0, t1)

    def restarting(self, t: float, grace: float) -> bool:
        """A restart is in progress, or finished less than ``grace`` seconds ago."""
        started = self.restart_started_t
        if started is None:
            return False
        finished = self.restart_finished_t
        if finished is None or finished < started:
            return True
        return t - finished < grace

    def gpu_brief(self) -> str:
        """E.g. "GPU 0 at 0% with 11.2 GiB held by pid 4242"."""
        parts = []
        for index in sorted(self.gpus):
            util = self.gpu_util.get(index)
            procs = self.gpu_procs.get(index, {})
            held = sum(procs.values())
            util_text = "?" if util is None else f"{util:.0f}%"
            text = f"GPU {index} at {util_text}"
            if held:
                pids = ", ".join(str(p) for p in sorted(procs, key=lambda p: -procs[p])[:3])
                text += f" with {gib(held)} held by pid {pids}"
            parts.append(text)
        return "; ".join(parts)


def gib(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def secs(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
