"""The simulated inference engine: models, loading, a generation scheduler, faults.

One scheduler loop advances every running request by wall-clock rates
(prefill at ``prefill_tps`` prompt tokens/s, decode at ``decode_tps`` tokens/s
per request), admits waiting requests up to ``parallel``, and counts what a
real server counts. Faults change what the loop does (no progress, slower
progress), what loads and requests do (fail with an out-of-memory), and what
the GPU shows. The HTTP flavours only translate between their API and this.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from subprocess import Popen
from typing import Any

from watchdog.sim import logwriter
from watchdog.sim.config import ModelSpec, SimConfig
from watchdog.sim.faults import Faults
from watchdog.sim.gpu import GpuSnapshot, ProcUse
from watchdog.sim.logwriter import ServerLog
from watchdog.sim.nvml import device_usage
from watchdog.sim.runner import spawn_runner, stop_runner

WORDS = ("The quick brown fox jumps over the lazy dog while a careful engineer watches "
         "every token arrive on time and the GPU hums along quietly").split()
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
FOREVER = float("inf")


def count_tokens(text: str) -> int:
    """About four characters a token, like most BPE vocabularies on English text."""
    return max(1, (len(text) + 3) // 4)


def token_text(index: int, seed: int) -> str:
    return " " + WORDS[(seed + index) % len(WORDS)]


class SimError(Exception):
    """A request or load that fails the way the real server fails it."""

    def __init__(self, message: str, status: int = 500, kind: str = "server_error"):
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind


class ModelNotFound(SimError):
    def __init__(self, name: str):
        super().__init__(f"model {name!r} not found", 404, "not_found")
        self.name = name


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


@dataclass
class Counters:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    success: dict[str, int] = field(default_factory=lambda: {"stop": 0, "length": 0, "abort": 0})
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    prompt_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_steps: int = 0
    output_steps: int = 0  # steps that produced a token: what vLLM's iteration_tokens_total counts
    output_step_tokens: int = 0
    created: float = field(default_factory=time.time)


@dataclass
class LoadedModel:
    spec: ModelSpec
    holder_pid: int
    runner: Popen[bytes] | None
    target_mib: float
    state: str = "loading"  # loading | ready | failed
    mem_mib: float = 0.0
    leak_mib: float = 0.0
    keep_alive_s: float = 300.0
    expires_at: float = FOREVER  # wall time; FOREVER while in use or kept forever
    active: int = 0
    load_started: float = field(default_factory=time.monotonic)
    load_duration: float = 0.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: SimError | None = None
    last_used: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.spec.name

    def held_mib(self) -> float:
        return self.mem_mib + self.leak_mib


@dataclass
class Orphan:
    """A runner left behind by a failed unload: out of the server's list, memory still held."""

    name: str
    runner: Popen[bytes]
    mem_mib: float


@dataclass
class Request:
    model: LoadedModel
    prompt_tokens: int
    max_tokens: int
    target_tokens: int
    limited: bool = False  # the answer ends because the request's token limit is reached
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    seed: int = 0
    phase: str = "waiting"  # waiting | prefill | decode | done
    submitted: float = field(default_factory=time.monotonic)
    started: float = 0.0
    first_token_at: float = 0.0
    prefill_done_at: float = 0.0
    finished_at: float = 0.0
    prefill_progress: float = 0.0
    prompt_counted: int = 0
    decode_progress: float = 0.0
    emitted: int = 0
    aborted: bool = False
    finish_reason: str = ""
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)

    @property
    def prefill_seconds(self) -> float:
        return max(self.prefill_done_at - self.started, 0.0) if self.prefill_done_at else 0.0

    @property
    def decode_seconds(self) -> float:
        end = self.finished_at or time.monotonic()
        return max(end - self.prefill_done_at, 0.0) if self.prefill_done_at else 0.0

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """("token", text) ... then ("done", finish_reason) or ("error", SimError)."""
        while True:
            kind, value = await self.queue.get()
            yield kind, value
            if kind != "token":
                return


class Engine:
    """Models, loads, the scheduler and the counters of one simulated server."""

    def __init__(self, cfg: SimConfig, faults: Faults, log: ServerLog,
                 on_change: Callable[[], None] = lambda: None):
        self.cfg = cfg
        self.faults = faults
        self.log = log
        self.on_change = on_change
        self.models = {m.name: m for m in cfg.models}
        self.loaded: dict[str, LoadedModel] = {}
        self.orphans: list[Orphan] = []
        self.server_leak_mib = 0.0
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.counters = Counters()
        self.gpu_lost = False
        self.started = time.time()
        self._wake = asyncio.Event()
        self._busy_until = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._nccl_logged = False
        self._rng = random.Random(os.getpid())
        self.tick = min(max(1.0 / cfg.decode_tps, 0.005), 0.05)
        self.exit: Callable[[int], None] = os._exit

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._schedule()), loop.create_task(self._housekeeping()),
                       loop.create_task(self._stats())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        for lm in list(self.loaded.values()):
            if lm.runner:
                stop_runner(lm.runner)
        for orphan in self.orphans:
            stop_runner(orphan.runner)

    def changed(self) -> None:
        self.on_change()

    # -- models -------------------------------------------------------------------------------
    def resolve(self, name: str) -> ModelSpec:
        """The model a request names (Ollama: ``llama3.2`` means ``llama3.2:latest``)."""
        if name in self.models:
            return self.models[name]
        if ":" not in name and f"{name}:latest" in self.models:
            return self.models[f"{name}:latest"]
        if name.endswith(":latest") and name[: -len(":latest")] in self.models:
            return self.models[name[: -len(":latest")]]
        raise ModelNotFound(name)

    def target_mib(self, spec: ModelSpec) -> float:
        if self.cfg.kind == "vllm":  # weights + the KV cache vLLM preallocates
            dev = self.cfg.gpus[0]
            return max(self.cfg.gpu_memory_utilization * dev.mem_total_mib * len(self.cfg.gpus)
                       - dev.base_used_mib, spec.size_mib)
        return spec.size_mib

    def free_mib(self) -> float:
        """Free memory on the tightest of our devices, counting every other simulator on it."""
        free = []
        share = 1.0 / len(self.cfg.gpus)
        own = sum(lm.held_mib() for lm in self.loaded.values()) + self.server_leak_mib
        own += sum(o.mem_mib for o in self.orphans)
        for dev in self.cfg.gpus:
            others = device_usage(self.cfg.gpu_dir, dev.index, exclude_pid=os.getpid())
            free.append(dev.mem_total_mib - dev.base_used_mib - others - own * share)
        return min(free)

    async def ensure_loaded(self, name: str, keep_alive_s: float | None = None) -> LoadedModel:
        """The model, loaded (waiting for a load in progress, starting one if needed)."""
        spec = self.resolve(name)
        lm = self.loaded.get(spec.name)
        if lm is None:
            lm = self._begin_load(spec)
        if keep_alive_s is not None:
            lm.keep_alive_s = keep_alive_s
        await lm.ready.wait()
        if lm.error:
            raise lm.error
        return lm

    def _begin_load(self, spec: ModelSpec) -> LoadedModel:
        target = self.target_mib(spec)
        if self.cfg.kind == "llamacpp":
            runner, holder = None, os.getpid()
        else:
            title = (f"ollama runner --model /root/.ollama/models/blobs/sha256-{spec.digest[:64]} "
                     f"--port {40000 + len(self.loaded)}" if self.cfg.kind == "ollama"
                     else "VLLM::EngineCore")
            runner = spawn_runner(title)
            holder = runner.pid
        lm = LoadedModel(spec, holder, runner, target,
                         keep_alive_s=parse_keep_alive(self.cfg.keep_alive))
        self.loaded[spec.name] = lm
        asyncio.get_running_loop().create_task(self._load(lm))
        return lm

    async def _load(self, lm: LoadedModel) -> None:
        self.log.load_started(lm.name, lm.spec.size_mib)
        try:
            self._make_room(lm)
            steps = max(int(self.cfg.load_time_s / 0.05), 1)
            fail_at = self._load_fault_step(lm, steps)
            for step in range(1, steps + 1):
                await asyncio.sleep(self.cfg.load_time_s / steps)
                lm.mem_mib = lm.target_mib * step / steps
                self.changed()
                if step == fail_at:
                    raise self._oom_error(lm.runner.pid if lm.runner else os.getpid(),
                                          lm.target_mib - lm.mem_mib, lm.mem_mib, during="load")
                if lm.runner and lm.runner.poll() is not None:
                    raise SimError("llama runner process has terminated: signal: killed")
        except SimError as exc:
            lm.state, lm.error = "failed", exc
            self._drop(lm)
            lm.ready.set()
            return
        lm.state = "ready"
        lm.load_duration = time.monotonic() - lm.load_started
        leak = self.faults.param("leak", "mib_per_load")
        if leak:
            self.server_leak_mib += leak
        self.log.load_done(lm.name, lm.load_duration)
        lm.ready.set()
        self._touch(lm)
        self.changed()

    def _load_fault_step(self, lm: LoadedModel, steps: int) -> int | None:
        """The load step at which this load runs out of memory, or None."""
        if self.faults.active("oom") or self.faults.active("fragmentation"):
            return max(steps // 2, 1)
        if lm.target_mib > self.free_mib() + lm.mem_mib:
            return max(int(steps * max(self.free_mib(), 0) / lm.target_mib), 1)
        return None

    def _make_room(self, lm: LoadedModel) -> None:
        """Ollama evicts idle models (least recently used first) to fit a new one."""
        if self.cfg.kind == "vllm" and lm.target_mib > self.free_mib() + 1:
            dev = self.cfg.gpus[0]
            free = self.free_mib() + dev.base_used_mib
            self.log.error(
                f"ValueError: Free memory on device ({free / 1024:.2f}/{dev.mem_total_mib / 1024:.2f} "
                f"GiB) on startup is less than desired GPU memory utilization "
                f"({self.cfg.gpu_memory_utilization}, "
                f"{self.cfg.gpu_memory_utilization * dev.mem_total_mib / 1024:.2f} GiB). Decrease GPU "
                "memory utilization or reduce GPU memory used by other processes.")
            raise SimError("not enough free GPU memory at start-up")
        if self.cfg.kind != "ollama":
            return
        idle = sorted((m for m in self.loaded.values() if m is not lm and m.state == "ready"
                       and m.active == 0), key=lambda m: m.last_used)
        while lm.target_mib > self.free_mib() and idle:
            victim = idle.pop(0)
            self.log.info("evicting model to make room", source="sched.go:813", model=victim.name)
            self.unload(victim.name)

    def _oom_error(self, pid: int, tried_mib: float, held_mib: float, during: str) -> SimError:
        """Log the server's out-of-memory text and give the error a client sees."""
        dev = self.cfg.gpus[0]
        fragmented = self.faults.active("fragmentation")
        tried = float(self.faults.param("fragmentation" if fragmented else "oom", "tried_mib")
                      or max(tried_mib, 256.0))
        total = dev.mem_total_mib
        used = max(held_mib, total * 0.55)
        free = max(min(tried * 0.6, total - used - dev.base_used_mib), 64.0)
        reserved = used * 0.35 if fragmented else min(used * 0.02, 300.0)
        torch_text = logwriter.torch_oom_text(dev.index, tried, total, free, pid, used, reserved)
        if self.cfg.kind == "vllm" or fragmented:
            self.log.oom([torch_text])
            message = torch_text.split(": ", 1)[1]
        else:
            self.log.oom([
                f"ggml_backend_cuda_buffer_type_alloc_buffer: allocating {tried:.2f} MiB on device "
                f"{dev.index}: cudaMalloc failed: out of memory",
                f"alloc_tensor_range: failed to allocate CUDA{dev.index} buffer of size "
                f"{int(tried * 1024 * 1024)}",
                f"llama_model_load: error loading model: unable to allocate CUDA{dev.index} buffer",
            ])
            message = "cudaMalloc failed: out of memory"
            if self.cfg.kind == "ollama":
                message = "llama runner process has terminated: " + message
                self.log.error("error loading llama server", source="sched.go:474", error=message)
        return SimError(message if during == "load" else f"CUDA out of memory: {message}", 500,
                        "out_of_memory")

    def unload(self, name: str) -> bool:
        """Unload a model now; under ``failed_unload`` its runner and memory stay behind."""
        lm = self.loaded.get(name)
        if lm is None or lm.state != "ready":
            return False
        if self.faults.active("failed_unload") and lm.runner is not None:
            del self.loaded[name]
            orphan = Orphan(name, lm.runner, lm.held_mib())
            self.orphans.append(orphan)
            asyncio.get_running_loop().create_task(self._report_failed_unload(orphan, lm))
        else:
            self._drop(lm)
        self.changed()
        return True

    async def _report_failed_unload(self, orphan: Orphan, lm: LoadedModel) -> None:
        wait = 5.0 + self._rng.uniform(0.001, 0.05)
        await asyncio.sleep(float(self.faults.param("failed_unload", "report_after_s") or 5.0))
        if orphan in self.orphans:
            self.log.warning("gpu VRAM usage didn't recover within timeout", source="sched.go:648",
                          seconds=f"{wait:.9f}", runner__size=_gib(lm.target_mib),
                          runner__vram=_gib(orphan.mem_mib), runner__parallel=self.cfg.parallel,
                          runner__pid=orphan.runner.pid,
                          runner__model=f"/root/.ollama/models/blobs/sha256-{lm.spec.digest}")

    def _drop(self, lm: LoadedModel) -> None:
        if self.loaded.get(lm.name) is lm:
            del self.loaded[lm.name]
        if lm.runner:
            stop_runner(lm.runner)
        for req in [r for r in self.running + self.waiting if r.model is lm]:
            self._finish(req, error=SimError("llama runner process has terminated"))
        self.changed()

    def _touch(self, lm: LoadedModel) -> None:
        lm.last_used = time.time()
        lm.expires_at = FOREVER if lm.keep_alive_s < 0 else lm.last_used + lm.keep_alive_s

    # -- requests -----------------------------------------------------------------------------
    def check_request_faults(self, lm: LoadedModel) -> None:
        """Faults that fail a request before it starts (the GPU is gone, memory is out)."""
        if self.gpu_lost:
            self.log.error("CUDA error: unspecified launch failure")
            raise SimError("CUDA error: unspecified launch failure", 500)
        if self.faults.active("oom") or self.faults.active("fragmentation"):
            raise self._oom_error(lm.holder_pid, 512.0, lm.held_mib(), during="request")

    def submit(self, lm: LoadedModel, prompt_tokens: int, max_tokens: int | None) -> Request:
        """Queue a generation; iterate ``request.events()`` for its tokens."""
        self.check_request_faults(lm)
        natural = self.cfg.response_tokens
        limited = max_tokens is not None and 0 <= max_tokens <= natural
        limit = max_tokens if limited else natural
        req = Request(lm, prompt_tokens, limit, limit, limited=limited,
                      seed=self._rng.randrange(len(WORDS)))
        lm.active += 1
        lm.expires_at = FOREVER
        self.waiting.append(req)
        per_request = self.faults.param("leak", "mib_per_request")
        if per_request:
            lm.leak_mib += per_request
        self._wake.set()
        self.changed()
        return req

    def abort(self, req: Request) -> None:
        """The client went away. A stuck engine cannot process the abort: it stays counted."""
        if req.phase != "done":
            req.aborted = True
            self._wake.set()

    def _finish(self, req: Request, reason: str = "", error: SimError | None = None) -> None:
        if req.phase == "done":
            return
        req.phase = "done"
        req.finished_at = time.monotonic()
        req.finish_reason = reason or "abort"
        for queue in (self.running, self.waiting):
            if req in queue:
                queue.remove(req)
        req.model.active -= 1
        if req.model.active == 0 and req.model.state == "ready":
            self._touch(req.model)
        if error is not None:
            req.queue.put_nowait(("error", error))
        else:
            self.counters.success[req.finish_reason] = self.counters.success.get(req.finish_reason, 0) + 1
            if not req.aborted:
                self.counters.e2e.observe(req.finished_at - req.submitted)
            req.queue.put_nowait(("done", req.finish_reason))
        self.changed()

    # -- the scheduler ------------------------------------------------------------------------
    def stuck(self) -> bool:
        """Nothing makes progress: an NCCL hang, or a hang stalling every request at once."""
        if self.faults.active("nccl_hang"):
            return True
        return self.faults.param("hang", "after_tokens") == 0

    async def _schedule(self) -> None:
        last = time.monotonic()
        while True:
            now = time.monotonic()
            self.step(now, min(now - last, 0.25))
            last = now
            if self.running or self.waiting:
                await asyncio.sleep(self.tick)
            else:
                self._wake.clear()
                await self._wake.wait()
                last = time.monotonic()

    def step(self, now: float, dt: float) -> None:
        """Advance every running request by ``dt`` seconds of work."""
        if self.gpu_lost and self.running:
            self.log.error("CUDA error: unspecified launch failure")
            for req in list(self.running):
                self._finish(req, error=SimError("CUDA error: unspecified launch failure"))
        if self.stuck():
            return
        hang_limit = self.faults.param("hang", "after_tokens")
        if hang_limit is None:  # a hung engine never gets round to processing aborts
            for req in [r for r in self.running + self.waiting if r.aborted]:
                self._finish(req, "abort")
        while self.waiting and len(self.running) < self.cfg.parallel:
            req = self.waiting.pop(0)
            req.phase, req.started = "prefill", now
            self.running.append(req)
        slow = self.faults.slow_factor()
        progressed = False
        tokens_before = self.counters.generation_tokens
        for req in list(self.running):
            if hang_limit is not None and req.emitted >= hang_limit:
                continue
            progressed = True
            if req.phase == "prefill":
                req.prefill_progress += dt * self.cfg.prefill_tps * slow
                # counted as it is computed (chunked prefill): a long prompt shows progress
                done = min(int(req.prefill_progress), req.prompt_tokens)
                self.counters.prompt_tokens += done - req.prompt_counted
                req.prompt_counted = done
                if req.prefill_progress >= req.prompt_tokens:
                    req.phase, req.prefill_done_at = "decode", now
                    self.counters.prompt_seconds += req.prefill_seconds
                continue
            req.decode_progress += dt * self.cfg.decode_tps * slow
            due = min(int(req.decode_progress), req.target_tokens)
            if hang_limit is not None:
                due = min(due, hang_limit)
            if req.emitted == 0 and due == 0 and req.target_tokens > 0:
                due = 1  # the first token comes with the end of the prefill
            for _ in range(max(due - req.emitted, 0)):
                if req.emitted == 0:
                    req.first_token_at = now
                    self.counters.ttft.observe(now - req.submitted)
                req.queue.put_nowait(("token", token_text(req.emitted, req.seed)))
                req.emitted += 1
                self.counters.generation_tokens += 1
            if req.emitted >= req.target_tokens:
                self.counters.decode_seconds += req.decode_seconds
                self._finish(req, "length" if req.limited else "stop")
        if progressed:
            self._busy_until = now + 0.3
            self.counters.decode_steps += 1
        if self.counters.generation_tokens > tokens_before:
            self.counters.output_steps += 1
            self.counters.output_step_tokens += self.counters.generation_tokens - tokens_before

    # -- background jobs ----------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        """Expiry (keep_alive), leaks over time, runners that died, the NCCL timeout."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            dt, last = now - last, now
            per_s = self.faults.param("leak", "mib_per_s")
            for lm in list(self.loaded.values()):
                if lm.state != "ready":
                    continue
                if per_s:
                    lm.leak_mib += per_s * dt
                if lm.runner is not None and lm.runner.poll() is not None:
                    self._runner_died(lm)
                elif lm.active == 0 and lm.expires_at <= time.time():
                    self.unload(lm.name)
            for orphan in [o for o in self.orphans if o.runner.poll() is not None]:
                self.orphans.remove(orphan)
                self.changed()
            self._check_nccl_timeout()

    def _runner_died(self, lm: LoadedModel) -> None:
        code = lm.runner.returncode if lm.runner else None
        reason = f"signal: {_signal_name(-code)}" if code is not None and code < 0 else f"exit status {code}"
        if self.cfg.kind == "vllm":
            self.log.error("Engine core proc EngineCore_0 died unexpectedly, shutting down client.",
                           source="core_client.py:564")
            self.exit(1)
            return
        self.log.error("llama runner process has terminated", source="server.go:1187", error=reason)
        self._drop(lm)

    def _check_nccl_timeout(self) -> None:
        fault = self.faults.get("nccl_hang")
        if fault is None:
            self._nccl_logged = False
            return
        timeout = float(fault.params["timeout_s"])
        ran = time.time() - fault.since
        if not self._nccl_logged and ran >= timeout:
            self._nccl_logged = True
            self.log.line(logwriter.nccl_timeout_line(1000 + self.counters.decode_steps,
                                                      int(ran * 1000), int(timeout * 1000)))
            if fault.params["abort"]:
                self.log.line("[rank0]:[E ProcessGroupNCCL.cpp:1858] [PG ID 0 PG GUID 0(default_pg) "
                              "Rank 0] Process group watchdog thread terminated with exception: "
                              "To avoid data inconsistency, we are taking the entire process down.")
                self.exit(134)

    async def _stats(self) -> None:
        last = (time.monotonic(), self.counters.prompt_tokens, self.counters.generation_tokens)
        while True:
            await asyncio.sleep(self.cfg.stats_interval_s)
            now = time.monotonic()
            span = max(now - last[0], 1e-6)
            self.log.stats((self.counters.prompt_tokens - last[1]) / span,
                           (self.counters.generation_tokens - last[2]) / span,
                           len(self.running), len(self.waiting), self.kv_usage())
            last = (now, self.counters.prompt_tokens, self.counters.generation_tokens)

    # -- recovery -----------------------------------------------------------------------------
    def recover(self) -> None:
        """Back to healthy: faults cleared, stuck runners freed, leaks given back."""
        self.faults.clear()
        for orphan in self.orphans:
            stop_runner(orphan.runner)
        self.orphans.clear()
        for lm in self.loaded.values():
            lm.leak_mib = 0.0
        self.server_leak_mib = 0.0
        self.gpu_lost = False
        self._nccl_logged = False
        self._wake.set()
        self.changed()

    # -- what outside observers see -----------------------------------------------------------
    def kv_capacity_tokens(self) -> int:
        return 16 * 4096

    def kv_usage(self) -> float:
        used = sum(r.prompt_tokens + r.emitted for r in self.running)
        return min(used / self.kv_capacity_tokens(), 1.0)

    def util(self) -> int:
        if self.faults.active("nccl_hang"):
            return 100
        if time.monotonic() < self._busy_until:
            return self._rng.randint(92, 99)
        return 0

    def gpu_snapshot(self) -> GpuSnapshot:
        util = self.util()
        busy_holders = {r.model.holder_pid for r in self.running}
        if self.faults.active("nccl_hang"):
            busy_holders |= {lm.holder_pid for lm in self.loaded.values()}
        holders: dict[int, float] = {}
        for lm in self.loaded.values():
            holders[lm.holder_pid] = holders.get(lm.holder_pid, 0.0) + lm.held_mib()
        for orphan in self.orphans:
            holders[orphan.runner.pid] = holders.get(orphan.runner.pid, 0.0) + orphan.mem_mib
        if self.server_leak_mib:
            holders[os.getpid()] = holders.get(os.getpid(), 0.0) + self.server_leak_mib
        share = 1.0 / len(self.cfg.gpus)
        procs = [ProcUse(dev.index, pid, mib * share, util if pid in busy_holders else 0)
                 for dev in self.cfg.gpus for pid, mib in holders.items()]
        return GpuSnapshot(util={dev.index: util for dev in self.cfg.gpus}, procs=procs,
                           slow=self.faults.active("slow"),
                           slow_cause=str(self.faults.param("slow", "cause") or "thermal"))

    def state_dict(self) -> dict[str, Any]:
        return {
            "models": [{"name": lm.name, "state": lm.state, "mem_mib": round(lm.held_mib(), 1),
                        "holder_pid": lm.holder_pid, "active": lm.active,
                        "expires_at": None if lm.expires_at == FOREVER else lm.expires_at}
                       for lm in self.loaded.values()],
            "orphans": [{"name": o.name, "pid": o.runner.pid, "mem_mib": round(o.mem_mib, 1)}
                        for o in self.orphans],
            "server_leak_mib": self.server_leak_mib,
            "running": len(self.running),
            "waiting": len(self.waiting),
            "generation_tokens_total": self.counters.generation_tokens,
            "prompt_tokens_total": self.counters.prompt_tokens,
            "util": self.util(),
            "gpu_lost": self.gpu_lost,
        }


def parse_keep_alive(value: Any, default_s: float = 300.0) -> float:
    """Ollama's keep_alive: seconds (number or numeric string), a Go duration, negative = forever."""
    if value is None or value == "":
        return default_s
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a duration or a number of seconds")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    return parse_go_duration(text)


def parse_go_duration(text: str) -> float:
    """``1h30m``, ``5m``, ``300ms``, ``-1s``... in seconds (Go's time.ParseDuration)."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    sign, rest = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.lstrip("+"))
    total, number, i = 0.0, "", 0
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    while i < len(rest):
        c = rest[i]
        if c.isdigit() or c == ".":
            number += c
            i += 1
            continue
        unit = next((u for u in ("ns", "us", "µs", "ms", "s", "m", "h") if rest.startswith(u, i)), None)
        if unit is None or not number:
            raise ValueError(f"invalid duration {text!r}")
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    if number:
        raise ValueError(f"missing unit in duration {text!r}")
    return sign * total


def _gib(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB"


def _signal_name(num: int) -> str:
    import signal

    try:
        return signal.Signals(num).name.removeprefix("SIG").lower().replace("kill", "killed")
    except ValueError:
        return str(num)
