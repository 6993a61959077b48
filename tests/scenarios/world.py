"""A synthetic world that writes trace-v1 records: one inference server on its GPUs.

It models what the watchdog would observe at a given cadence: traffic with
prefill and decode, a token counter, canaries (one in flight, re-checked soon
after a failure), GPU samples with noise, process samples, log noise, and the
faults and healthy-but-tricky situations the detectors must tell apart.
Deterministic for a seed. Used by tests/test_detect_scenarios.py and
scripts/bench_detection.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from watchdog.trace.records import (
    Canary,
    Event,
    GpuDevice,
    GpuProc,
    GpuSample,
    Header,
    LoadedModel,
    LogLine,
    ProcessSample,
    Record,
    ServerPoll,
    TraceTarget,
)

NOISE_LINES = [
    'time=2026-11-20T14:23:45.001Z level=INFO source=server.go:619 msg="llama runner started in 38.42 seconds"',
    'INFO:     127.0.0.1:51234 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
    "INFO 11-20 14:23:45 metrics.py:455] Avg prompt throughput: 512.3 tokens/s, Avg generation throughput: "
    "38.1 tokens/s, Running: 2 reqs, Swapped: 0 reqs, Pending: 0 reqs, GPU KV cache usage: 12.4%.",
    '[GIN] 2026/11/20 - 14:23:45 | 200 |  2.234105s |       127.0.0.1 | POST     "/api/generate"',
    "WARNING 11-20 14:23:45 scheduler.py:1560] Sequence group 12 is preempted by PreemptionMode.RECOMPUTE "
    "mode because there is not enough KV cache space.",
]
FRAGMENTATION_LINE = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
    "23.68 GiB of which 3.10 GiB is free. Including non-PyTorch memory, this process has 20.56 GiB memory in "
    "use. Of the allocated memory 12.01 GiB is allocated by PyTorch, and 8.11 GiB is reserved by PyTorch but "
    "unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
)
OOM_LINE = (
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9536.00 MiB on device 0: cudaMalloc failed: "
    "out of memory"
)
NCCL_LINE = (
    "[rank0]:[E1120 14:33:45.123456 ProcessGroupNCCL.cpp:616] [Rank 0] Watchdog caught collective operation "
    "timeout: WorkNCCL(SeqNum=1234, OpType=ALLREDUCE, NumelIn=8192, NumelOut=8192, Timeout(ms)=600000) ran "
    "for 600043 milliseconds before timing out."
)


@dataclass
class Cadence:
    gpu_dt: float = 2.0
    poll_dt: float = 5.0
    canary_dt: float = 20.0
    canary_timeout: float = 10.0
    stall_s: float = 8.0
    confirm_dt: float = 3.0
    canary_tokens: int = 4

    def describe(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Request:
    prompt_left: float
    tokens_left: float
    canary: bool = False
    started: float = 0.0
    first_token_t: float | None = None
    last_token_t: float | None = None
    produced: float = 0.0
    prompt_len: float = -1.0

    def __post_init__(self) -> None:
        if self.prompt_len < 0:
            self.prompt_len = self.prompt_left


@dataclass
class Server:
    """The hidden truth: what the server is doing, which probes then observe."""

    kind: str
    model: str
    vram: float
    overhead: float
    pid: int
    runner_pid: int | None
    decode_rate: float = 30.0  # tokens/s per request
    prefill_rate: float = 3000.0  # prompt tokens/s
    max_running: int = 8
    loaded: bool = True
    loading_until: float | None = None
    load_start: float = 0.0
    expires_at: float | None = None
    hung: bool = False
    hang_util: float = 0.0
    hang_cpu: float = 2.0
    slow: float = 1.0
    cpu_offload: bool = False
    crashed: bool = False
    stopped: bool = False
    refusing_until: float | None = None
    leak_rate: float = 0.0  # MiB/s
    extra_held: float = 0.0
    residual: float = 0.0  # memory left after a clean unload
    stuck_mem: float = 0.0  # memory a failed unload leaves behind
    orphan: tuple[int, float] | None = None
    fail_next_unload: bool = False
    failing: bool = False  # every generation answered with HTTP 500 (vLLM#1492)
    tokens_total: float = 0.0
    steps_total: int = 0  # engine steps: llama.cpp counts every llama_decode, vLLM steps with output
    prompt_total: float = 0.0
    throttle: list[str] = field(default_factory=list)  # NVML clock event reasons reported
    sm_clock_max: float = 1710.0
    throttled_clock: float | None = None
    requests: list[Request] = field(default_factory=list)

    def held(self, t: float) -> dict[int, float]:
        """Memory per pid."""
        out: dict[int, float] = {}
        if self.crashed:
            return {self.orphan[0]: self.orphan[1]} if self.orphan else {}
        holder = self.runner_pid if self.runner_pid is not None else self.pid
        mem = 0.0
        if self.loaded:
            if self.loading_until is not None and t < self.loading_until:
                frac = (t - self.load_start) / max(self.loading_until - self.load_start, 1e-6)
                mem = self.overhead + self.vram * max(0.0, min(1.0, frac))
            else:
                mem = self.vram + self.overhead + self.extra_held
        else:
            mem = self.stuck_mem or self.residual
        if self.kind != "ollama" and mem == 0.0:
            mem = self.residual
        if mem > 0:
            out[holder] = mem
        if self.kind == "ollama" and self.runner_pid is None and self.stuck_mem:
            out[self.pid + 1] = self.stuck_mem
        if self.orphan:
            out[self.orphan[0]] = self.orphan[1]
        return out

    def ready(self, t: float) -> bool:
        return self.loaded and not self.crashed and (self.loading_until is None or t >= self.loading_until)


class World:
    """Steps time forward, applies a timeline of actions, records observations."""

    def __init__(self, server: Server, cadence: Cadence, seed: int, *, gpu_total: float = 23028.0,
                 traffic: float = 0.05, prompt_tokens: tuple[int, int] = (50, 800),
                 output_tokens: tuple[int, int] = (40, 400), target: str | None = None,
                 gpus: int = 1, host: str = "synthetic") -> None:
        self.s = server
        self.c = cadence
        self.rng = random.Random(seed)
        self.t = 0.0
        self.dt = 0.25
        self.target = target or server.kind
        self.gpu_total = gpu_total
        self.traffic = traffic
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.records: list[Record] = []
        self.actions: list[tuple[float, Any]] = []
        self.header = Header(
            host=host,
            gpus=[GpuDevice(i, "NVIDIA A10G", int(gpu_total)) for i in range(gpus)],
            targets=[TraceTarget(self.target, server.kind, [0])],
        )
        self.next_gpu = self.rng.uniform(0, cadence.gpu_dt)
        self.next_poll = self.rng.uniform(0, cadence.poll_dt)
        self.next_canary = self.rng.uniform(1, cadence.canary_dt)
        self.canary: Request | None = None
        self.base_used = 300.0 + self.rng.uniform(0, 200)
        self.other_proc: tuple[int, float] | None = (1187, 210.0) if self.rng.random() < 0.5 else None
        self.gpu_error: str | None = None
        self.util_noise = 0.0
        self.next_log = self.rng.uniform(10, 60)
        self.lose_next_canary = False

    # --- timeline -----------------------------------------------------------------------------

    def at(self, t: float, action: Any) -> None:
        self.actions.append((t, action))
        self.actions.sort(key=lambda a: a[0])

    def run(self, duration: float) -> list[Record]:
        while self.t < duration:
            while self.actions and self.actions[0][0] <= self.t:
                _, action = self.actions.pop(0)
                action(self)
            self._step()
            self.t = round(self.t + self.dt, 6)
        self.records.sort(key=lambda r: r.t)
        return self.records

    def emit(self, record: Record) -> None:
        self.records.append(record)

    def event(self, name: str, model: str | None = None) -> None:
        self.emit(Event(t=self.t, target=self.target, event=name, model=model or self.s.model))

    def log(self, line: str) -> None:
        self.emit(LogLine(t=self.t, target=self.target, line=line))

    # --- one step -----------------------------------------------------------------------------

    def _step(self) -> None:
        s, t = self.s, self.t
        if s.leak_rate and s.loaded:
            s.extra_held += s.leak_rate * self.dt
        if s.loaded and s.expires_at is not None and t >= s.expires_at and not s.requests:
            self._unload_now()
        if s.ready(t) and not s.stopped and not s.failing and self.rng.random() < self.traffic * self.dt:
            s.requests.append(Request(self.rng.uniform(*self.prompt_tokens), self.rng.uniform(*self.output_tokens),
                                      started=t))
        self._advance_requests()
        self._maybe_canary()
        if t >= self.next_gpu:
            self._gpu_sample()
            self.next_gpu = t + self.c.gpu_dt * self.rng.uniform(0.9, 1.1)
        if t >= self.next_poll:
            self._poll()
            self.next_poll = t + self.c.poll_dt * self.rng.uniform(0.9, 1.1)
        if t >= self.next_log:
            self.log(self.rng.choice(NOISE_LINES))
            self.next_log = t + self.rng.uniform(20, 90)

    def _working(self) -> list[Request]:
        return self.s.requests[: self.s.max_running]

    def _advance_requests(self) -> None:
        s, t, dt = self.s, self.t, self.dt
        if not s.ready(t) or s.hung or s.stopped:
            return
        working = self._working()
        prefilling = [r for r in working if r.prompt_left > 0]
        stepped = bool(prefilling)
        produced_before = s.tokens_total
        if prefilling:
            # The prefill budget is shared (chunked prefill, llama.cpp's shared batch): a huge
            # prompt does not starve the short ones that arrive after it.
            budget = s.prefill_rate * s.slow * dt
            for i, r in enumerate(sorted(prefilling, key=lambda q: q.prompt_left)):
                use = min(r.prompt_left, budget / (len(prefilling) - i))
                r.prompt_left -= use
                budget -= use
                if s.kind != "vllm":
                    s.prompt_total += use  # llama.cpp counts prompt tokens as it processes them
        batch = max(len(working), 1)
        rate = s.decode_rate * s.slow * (1.0 if batch <= 4 else 4.0 / batch)
        for r in working:
            if r.prompt_left > 0:
                continue
            step = min(r.tokens_left, rate * dt)
            if step <= 0:
                continue
            if r.first_token_t is None:
                r.first_token_t = t
                if s.kind == "vllm":
                    s.prompt_total += r.prompt_len  # vLLM counts a prompt when its first token comes
            r.tokens_left -= step
            r.produced += step
            r.last_token_t = t
            s.tokens_total += step
        produced = s.tokens_total > produced_before
        if produced or (stepped and s.kind != "vllm"):
            # vLLM observes iteration_tokens_total only for steps that output tokens: a lone
            # chunked prefill does not move it.
            s.steps_total += 1
        for r in list(s.requests):
            if r.tokens_left <= 1e-9 and r.prompt_left <= 0:
                s.requests.remove(r)
                if r.canary:
                    self._canary_done(r, ok=True)

    def _maybe_canary(self) -> None:
        s, t, c = self.s, self.t, self.c
        if self.canary is not None:
            r = self.canary
            if s.crashed or (s.refusing_until is not None and t < s.refusing_until):
                self._canary_done(r, ok=False, error="refused")
            elif r.first_token_t is None and t - r.started >= c.canary_timeout:
                self._canary_done(r, ok=False, error="timeout")
            elif r.last_token_t is not None and t - r.last_token_t >= c.stall_s and r.tokens_left > 0:
                self._canary_done(r, ok=False, error="stalled")
            return
        if t < self.next_canary:
            return
        if s.kind == "ollama" and not s.loaded:
            self.next_canary = t + c.canary_dt
            return
        if s.crashed or (s.refusing_until is not None and t < s.refusing_until):
            self.emit(Canary(t=t, target=self.target, model=s.model, started=t, ok=False, error="refused",
                             tokens=0))
            self.next_canary = t + c.canary_dt
            return
        if s.failing and s.ready(t):
            self.emit(Canary(t=t + 0.05, target=self.target, model=s.model, started=t, ok=False, error="http_5xx",
                             tokens=0))
            self.next_canary = t + c.canary_dt
            return
        if not s.ready(t):
            error = "refused" if s.kind == "vllm" else "http_5xx"  # vLLM listens only once loaded
            self.emit(Canary(t=t, target=self.target, model=s.model, started=t, ok=False, error=error,
                             tokens=0))
            self.next_canary = t + c.canary_dt
            return
        r = Request(self.rng.uniform(10, 20), c.canary_tokens, canary=True, started=t)
        self.canary = r
        if self.lose_next_canary:
            self.lose_next_canary = False  # lost on the way: the server never sees it
            return
        if s.hung:
            s.requests.append(r)  # a stuck engine schedules nothing new: the canary waits in the queue
        else:
            s.requests.insert(0, r)

    def _canary_done(self, r: Request, ok: bool, error: str | None = None) -> None:
        s, t = self.s, self.t
        if r in s.requests:
            s.requests.remove(r)
        self.canary = None
        elapsed = max(t - r.started, 1e-3)
        if ok:
            ttft = (r.first_token_t or t) - r.started + self.rng.uniform(0.05, 0.3)
            gen = max(t - (r.first_token_t or t), 0.05)
            self.emit(Canary(t=t, target=self.target, model=s.model, started=round(r.started, 3), ok=True,
                             error=None, ttft_s=round(ttft, 3), tokens=int(r.produced + 0.5),
                             tokens_per_s=round(r.produced / gen, 1)))
            self.next_canary = t + self.c.canary_dt
        else:
            self.emit(Canary(t=t, target=self.target, model=s.model, started=round(r.started, 3), ok=False,
                             error=error, ttft_s=None if r.first_token_t is None else
                             round(r.first_token_t - r.started, 3), tokens=int(r.produced),
                             tokens_per_s=None))
            self.next_canary = t + (self.c.confirm_dt if error in ("timeout", "stalled") else self.c.canary_dt)
        del elapsed

    def _util(self) -> float:
        s, t = self.s, self.t
        if s.crashed:
            return 0.0
        if s.hung:
            return s.hang_util if s.hang_util < 100 else self.rng.uniform(99, 100)
        if s.stopped:
            return 0.0
        if s.loading_until is not None and t < s.loading_until:
            return self.rng.choice([0, 0, 0, 1, 2])
        working = self._working()
        if working and s.ready(t):
            if s.cpu_offload:
                return self.rng.uniform(3, 8)
            return self.rng.uniform(84, 99)
        return 0.0 if self.rng.random() < 0.9 else self.rng.uniform(1, 6)

    def _gpu_sample(self) -> None:
        t = self.t
        if self.gpu_error:
            self.emit(GpuSample(t=t, index=0, util=None, mem_used_mib=None, procs=[], error=self.gpu_error))
            return
        procs = [GpuProc(pid, round(mem + self.rng.uniform(-2, 2)), self.target)
                 for pid, mem in self.s.held(t).items()]
        if self.other_proc:
            procs.append(GpuProc(self.other_proc[0], self.other_proc[1], None))
        used = self.base_used + sum(p.mem_mib or 0 for p in procs) + self.rng.uniform(-60, 60)
        util = round(self._util())
        extra: dict[str, Any] = {}
        if self.s.throttle:
            extra["throttle"] = list(self.s.throttle)
        clock = self.s.sm_clock_max - self.rng.uniform(0, 30) if util > 0 else 210.0
        if self.s.throttled_clock is not None and util > 0:
            clock = self.s.throttled_clock + self.rng.uniform(-15, 15)
        extra["sm_clock_mhz"] = round(clock)
        extra["sm_clock_max_mhz"] = self.s.sm_clock_max
        self.emit(GpuSample(t=t, index=0, util=util, mem_used_mib=round(used), procs=procs,
                            temp_c=round(38 + util * 0.38, 1), power_w=round(25 + util * 1.2, 1), extra=extra))

    def _poll(self) -> None:
        s, t = self.s, self.t
        if s.crashed:
            self.emit(ServerPoll(t=t, target=self.target, state="down", models=[], error="refused"))
            self.emit(ProcessSample(t=t, target=self.target, pid=s.pid, status="gone"))
            return
        status = "stopped" if s.stopped else ("running" if self._working() or s.hang_cpu > 50 else "sleeping")
        cpu = self._cpu()
        self.emit(ProcessSample(t=t, target=self.target, pid=s.pid, status=status,
                                rss_mib=round(900 + self.rng.uniform(0, 40)), cpu_percent=cpu))
        if s.stopped:
            self.emit(ServerPoll(t=t, target=self.target, state="error", models=[], error="timeout"))
            return
        if s.refusing_until is not None and t < s.refusing_until:
            self.emit(ServerPoll(t=t, target=self.target, state="down", models=[], error="refused"))
            return
        loading = s.loading_until is not None and t < s.loading_until
        models: list[LoadedModel] = []
        if s.loaded and (s.kind == "ollama" or not loading):
            expires = None if s.expires_at is None else round(max(s.expires_at - t, 0))
            if s.kind == "ollama":
                expires = 31536000 if expires is None else expires
            models.append(LoadedModel(s.model, round(s.vram), expires))
        state = "loading" if loading and s.kind in ("llamacpp", "openai") else "ready"
        if loading and s.kind == "vllm":
            self.emit(ServerPoll(t=t, target=self.target, state="down", models=[], error="refused"))
            return
        poll = ServerPoll(t=t, target=self.target, state=state, models=models)
        if s.kind in ("vllm", "llamacpp", "openai"):
            working = self._working()
            poll.running = len(working) if not loading else 0
            poll.waiting = max(len(s.requests) - s.max_running, 0)
            poll.gen_tokens_total = float(int(s.tokens_total))
            if s.kind in ("vllm", "llamacpp"):
                poll.extra["steps_total"] = s.steps_total
                poll.extra["prompt_tokens_total"] = float(int(s.prompt_total))
            if s.kind == "vllm":
                cached = sum(r.prompt_len - r.prompt_left + r.produced for r in working)
                poll.kv_cache_usage = round(min(1.0, 0.002 + cached / 65536.0), 4)
        self.emit(poll)

    def _cpu(self) -> float:
        s = self.s
        if s.hung:
            return round(s.hang_cpu + self.rng.uniform(0, 2), 1)
        if s.cpu_offload and self._working():
            return round(self.rng.uniform(250, 380), 1)
        if self._working():
            return round(self.rng.uniform(60, 110), 1)
        return round(self.rng.uniform(0.5, 4.0), 1)

    # --- actions the scenarios use ------------------------------------------------------------

    def _unload_now(self) -> None:
        s = self.s
        if s.fail_next_unload:
            s.fail_next_unload = False
            s.stuck_mem = s.vram + s.overhead + s.extra_held
        s.loaded = False
        s.expires_at = None
        if s.kind == "ollama" and not s.stuck_mem:
            s.runner_pid = None

    def unload(self, fail: bool, via_event: bool = True) -> None:
        s = self.s
        s.requests.clear()  # in-flight requests finish or are aborted first
        self.canary = None
        if via_event:
            self.event("unload_requested")
        s.fail_next_unload = fail
        self._unload_now()
        s.extra_held = 0.0

    def load(self, seconds: float, model: str | None = None, vram: float | None = None) -> None:
        s = self.s
        self.event("load_requested", model)
        if model:
            s.model = model
        if vram:
            s.vram = vram
        s.loaded = True
        s.stuck_mem = 0.0
        s.load_start = self.t
        s.loading_until = self.t + seconds
        if s.kind == "ollama":
            s.runner_pid = s.runner_pid or (s.pid + 10 + self.rng.randrange(100))

    def restart(self, refuse_s: float = 4.0, load_s: float = 10.0, orphan: bool = False) -> None:
        s = self.s
        self.event("restart_started")
        held = s.held(self.t)
        if orphan and s.runner_pid is not None:
            s.orphan = (s.runner_pid, held.get(s.runner_pid, s.vram))
        s.requests.clear()
        self.canary = None
        s.hung = s.stopped = s.crashed = False
        s.pid += 100 + self.rng.randrange(50)
        s.runner_pid = (s.pid + 7) if s.kind == "ollama" else None
        s.tokens_total = 0.0
        s.extra_held = 0.0
        s.stuck_mem = 0.0
        s.refusing_until = self.t + refuse_s
        s.loaded = True
        s.load_start = self.t + refuse_s
        s.loading_until = self.t + refuse_s + load_s
        self.at(self.t + 0.2, lambda w: w.event("restart_finished"))
