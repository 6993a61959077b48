"""Named scenarios: a world, a timeline of what happens, and what must be raised.

Each builder takes a seed; the seed picks the server kind where the scenario
allows several, the cadence (GPU every 1-5 s, polls every 2-10 s, canaries
every 15-60 s), model size, traffic and the moment things happen. The
expectations follow docs/trace-v1.md ("Expectation files"), with windows that
follow from the cadence, the way the shared traces' windows do.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.scenarios.world import FRAGMENTATION_LINE, NCCL_LINE, OOM_LINE, Cadence, Server, World
from watchdog.config.model import DetectSettings
from watchdog.trace.records import Header, Record, Xid

BUSY_STALL = 300.0


@dataclass
class Scenario:
    name: str
    header: Header
    records: list[Record]
    expect: dict[str, Any]


def random_cadence(rng: random.Random) -> Cadence:
    canary_dt = rng.choice([15.0, 20.0, 30.0, 45.0, 60.0])
    return Cadence(
        gpu_dt=rng.choice([1.0, 2.0, 3.0, 5.0]),
        poll_dt=rng.choice([2.0, 5.0, 10.0]),
        canary_dt=canary_dt,
        canary_timeout=rng.choice([10.0, 15.0, 30.0, 60.0]),
        stall_s=rng.choice([5.0, 10.0, 15.0]),
        confirm_dt=rng.choice([3.0, 5.0, 10.0]),
        canary_tokens=rng.choice([4, 8, 16]),
    )


def make_server(rng: random.Random, kind: str) -> Server:
    vram = rng.choice([2400.0, 5600.0, 9800.0, 14500.0, 18000.0])
    pid = rng.randrange(2000, 60000)
    return Server(
        kind=kind,
        model={"ollama": "qwen3:14b", "vllm": "Qwen/Qwen3-14B-AWQ", "llamacpp": "gemma-3-4b-q4",
               "openai": "toy"}[kind],
        vram=vram,
        overhead=rng.uniform(250, 600),
        pid=pid,
        runner_pid=pid + 17 if kind == "ollama" else None,
        decode_rate=rng.uniform(8, 60),
        prefill_rate=rng.uniform(800, 5000),
        residual=0.0 if kind == "ollama" else rng.uniform(400, 1500),
    )


def _world(name: str, seed: int, kinds: tuple[str, ...], **kwargs: Any) -> tuple[random.Random, World, Cadence]:
    rng = random.Random(f"{name}:{seed}")
    kind = rng.choice(kinds)
    cadence = random_cadence(rng)
    world = World(make_server(rng, kind), cadence, seed=rng.randrange(1 << 30),
                  traffic=kwargs.pop("traffic", rng.choice([0.0, 0.02, 0.05, 0.1])), **kwargs)
    return rng, world, cadence


def _expect(duration: float, cadence: Cadence, expect: list[dict[str, Any]] | None = None,
            tolerate: list[dict[str, Any]] | None = None, note: str = "") -> dict[str, Any]:
    return {"duration": duration, "cadence": cadence.describe(), "expect": expect or [],
            "tolerate": tolerate or [], "quiet": [{"from": 0, "to": duration, "note": note}]}


def _finish(name: str, world: World, duration: float, expect: dict[str, Any]) -> Scenario:
    records = world.run(duration)
    return Scenario(name, world.header, records, expect)


def _canary_hang_window(c: Cadence) -> float:
    return c.canary_dt + 2 * c.canary_timeout + c.confirm_dt + 30


# --- faults ---------------------------------------------------------------------------------------

def hang(seed: int) -> Scenario:
    """Generation stops, the GPU goes idle with memory held, the status endpoint still answers."""
    name = "hang"
    rng, w, c = _world(name, seed, ("ollama", "vllm", "llamacpp"))
    duration = rng.uniform(600, 1200)
    onset = rng.uniform(200, duration - 300)

    def go(world: World) -> None:
        world.s.hung = True

    w.at(onset, go)
    # With counters and steady traffic, a request is in flight when the hang starts; otherwise
    # the first evidence is a canary that gets no token (or a request that arrives later).
    busy_enough = w.s.kind != "ollama" and w.traffic >= 0.1
    window = max(45.0, 3 * c.poll_dt + 30) if busy_enough else _canary_hang_window(c)
    expect = [{"finding": "hang", "target": w.target, "onset": round(onset, 2), "raise_by": round(onset + window, 2)}]
    tolerate = [{"finding": "degraded", "target": w.target, "from": onset, "to": duration}]
    return _finish(name, w, duration, _expect(duration, c, expect, tolerate, "healthy until the hang"))


def stream_stall(seed: int) -> Scenario:
    """A hang in the middle of work: counters stop under traffic (vLLM, llama.cpp)."""
    name = "stream_stall"
    rng, w, c = _world(name, seed, ("vllm", "llamacpp"), traffic=0.2)
    duration = rng.uniform(500, 900)
    onset = rng.uniform(150, duration - 250)
    w.at(onset, lambda world: setattr(world.s, "hung", True))
    window = max(45.0, 3 * c.poll_dt + 30)
    expect = [{"finding": "hang", "target": w.target, "onset": round(onset, 2), "raise_by": round(onset + window, 2)}]
    tolerate = [{"finding": "degraded", "target": w.target, "from": onset, "to": duration}]
    return _finish(name, w, duration, _expect(duration, c, expect, tolerate))


def nccl_hang(seed: int) -> Scenario:
    """A collective that never completes: no tokens, the GPU pinned at 100%."""
    name = "nccl_hang"
    rng, w, c = _world(name, seed, ("vllm",), traffic=0.1)
    duration = rng.uniform(900, 1400)
    onset = rng.uniform(100, 250)
    with_log = rng.random() < 0.5

    def go(world: World) -> None:
        world.s.hung = True
        world.s.hang_util = 100.0
        world.s.hang_cpu = 100.0

    w.at(onset, go)
    if with_log:
        w.at(onset + 600.0, lambda world: world.log(NCCL_LINE))
    window = BUSY_STALL + max(3 * c.poll_dt, 2 * c.canary_dt) + 60
    expect = [{"finding": "hang", "target": w.target, "onset": round(onset, 2), "raise_by": round(onset + window, 2)}]
    tolerate = [{"finding": "degraded", "target": w.target, "from": onset, "to": duration}]
    return _finish(name, w, duration, _expect(duration, c, expect, tolerate))


def frozen(seed: int) -> Scenario:
    """The server process is stopped (SIGSTOP): status endpoint times out, GPU idle, memory held."""
    name = "frozen"
    rng, w, c = _world(name, seed, ("ollama", "vllm", "llamacpp", "openai"))
    duration = rng.uniform(400, 800)
    onset = rng.uniform(100, duration - 200)
    w.at(onset, lambda world: setattr(world.s, "stopped", True))
    window = 3 * c.poll_dt + 30
    expect = [{"finding": "hang", "target": w.target, "onset": round(onset, 2), "raise_by": round(onset + window, 2)}]
    tolerate = [{"finding": "degraded", "target": w.target, "from": onset, "to": duration}]
    return _finish(name, w, duration, _expect(duration, c, expect, tolerate))


def failed_unload(seed: int) -> Scenario:
    """An unload (asked, or keep_alive expiry on Ollama) leaves the model's memory held."""
    name = "failed_unload"
    rng, w, c = _world(name, seed, ("ollama", "llamacpp", "openai"))
    duration = rng.uniform(500, 900)
    onset = rng.uniform(150, duration - 200)
    by_expiry = w.s.kind == "ollama" and rng.random() < 0.5
    if by_expiry:
        w.s.expires_at = onset
        w.s.fail_next_unload = True
        w.traffic = 0.0
    else:
        w.at(onset, lambda world: world.unload(fail=True))
    window = 10 + 2 * c.gpu_dt + 2 * c.poll_dt + 30
    expect = [{"finding": "failed_unload", "target": w.target, "onset": round(onset, 2),
               "raise_by": round(onset + window + 60, 2)}]
    return _finish(name, w, duration, _expect(duration, c, expect))


def orphan_runner(seed: int) -> Scenario:
    """After a restart, the old runner process still holds the model's memory."""
    name = "orphan_runner"
    rng, w, c = _world(name, seed, ("ollama",))
    duration = rng.uniform(400, 700)
    onset = rng.uniform(120, duration - 200)
    w.at(onset, lambda world: world.restart(orphan=True))
    window = 10 + 2 * c.gpu_dt + 2 * c.poll_dt + 40
    expect = [{"finding": "failed_unload", "target": w.target, "onset": round(onset, 2),
               "raise_by": round(onset + window, 2)}]
    return _finish(name, w, duration, _expect(duration, c, expect))


def completions_500(seed: int) -> Scenario:
    """Every completion fails with HTTP 500 while /v1/models and /health look fine (vLLM#1492)."""
    name = "completions_500"
    rng, w, c = _world(name, seed, ("vllm", "llamacpp", "openai"))
    duration = rng.uniform(500, 900)
    onset = rng.uniform(150, duration - 250)

    def go(world: World) -> None:
        world.s.failing = True
        world.s.requests.clear()
        world.canary = None

    w.at(onset, go)
    window = 4 * c.canary_dt + 30
    expect = [{"finding": "hang", "target": w.target, "onset": round(onset, 2), "raise_by": round(onset + window, 2)}]
    return _finish(name, w, duration, _expect(duration, c, expect))


def leak(seed: int) -> Scenario:
    """GPU memory grows steadily with the same model loaded."""
    name = "leak"
    rng, w, c = _world(name, seed, ("ollama", "vllm", "llamacpp", "openai"))
    rate = rng.choice([2.0, 5.0, 20.0])  # MiB/s
    onset = rng.uniform(100, 300)
    held = w.s.vram + w.s.overhead
    defaults = DetectSettings()
    threshold = max(float(defaults.growth_min_mib), defaults.growth_fraction * held)
    reach = threshold / rate
    duration = onset + max(reach, 60.0) + 400
    w.at(onset, lambda world: setattr(world.s, "leak_rate", rate))
    expect = [{"finding": "memory_growth", "target": w.target, "onset": round(onset, 2),
               "raise_by": round(onset + max(reach, 60.0) + 120, 2)}]
    return _finish(name, w, duration, _expect(duration, c, expect))


def fragmentation(seed: int) -> Scenario:
    name = "fragmentation"
    rng, w, c = _world(name, seed, ("vllm", "openai"))
    duration = rng.uniform(400, 800)
    onset = rng.uniform(100, duration - 100)
    w.at(onset, lambda world: world.log(FRAGMENTATION_LINE))
    expect = [{"finding": "fragmentation", "target": w.target, "onset": round(onset, 2), "raise_by": round(onset + 5, 2)}]
    return _finish(name, w, duration, _expect(duration, c, expect))


def oom(seed: int) -> Scenario:
    """cudaMalloc fails for more than the GPU has free: a plain out-of-memory."""
    name = "oom"
    rng, w, c = _world(name, seed, ("ollama", "llamacpp"))
    w.gpu_total = w.s.vram + w.s.overhead + 2000.0
    w.header.gpus[0].mem_total_mib = int(w.gpu_total)
    duration = rng.uniform(400, 800)
    onset = rng.uniform(100, duration - 100)
    w.at(onset, lambda world: world.log(OOM_LINE))
    expect = [{"finding": "oom", "target": w.target, "onset": round(onset, 2), "raise_by": round(onset + 5, 2)}]
    return _finish(name, w, duration, _expect(duration, c, expect))


def slow(seed: int) -> Scenario:
    """Generation becomes many times slower (thermal throttling, a bad driver state)."""
    name = "slow"
    rng, w, c = _world(name, seed, ("ollama", "vllm", "llamacpp"), traffic=0.0)
    onset = rng.uniform(10 * c.canary_dt, 14 * c.canary_dt)
    duration = onset + 8 * c.canary_dt + 120
    w.at(onset, lambda world: setattr(world.s, "slow", 0.08))
    expect = [{"finding": "degraded", "target": w.target, "onset": round(onset, 2),
               "raise_by": round(onset + 5 * c.canary_dt + 60, 2)}]
    return _finish(name, w, duration, _expect(duration, c, expect))


def crash(seed: int) -> Scenario:
    """The server process exits: connections refused, process gone, memory freed."""
    name = "crash"
    rng, w, c = _world(name, seed, ("ollama", "vllm", "llamacpp", "openai"))
    duration = rng.uniform(300, 600)
    onset = rng.uniform(100, duration - 120)
    w.at(onset, lambda world: setattr(world.s, "crashed", True))
    window = 15 + 3 * max(c.poll_dt, 5.0) + 15
    expect = [{"finding": "down", "target": w.target, "onset": round(onset, 2), "raise_by": round(onset + window, 2)}]
    return _finish(name, w, duration, _expect(duration, c, expect))


def xid(seed: int) -> Scenario:
    name = "xid"
    rng, w, c = _world(name, seed, ("ollama", "vllm"))
    duration = rng.uniform(300, 600)
    onset = rng.uniform(50, duration - 60)
    code = rng.choice([48, 79, 94, 95, 13, 31, 43])
    w.at(onset, lambda world: world.emit(Xid(t=world.t, index=0, xid=code)))
    expect = [{"finding": "gpu_fault", "target": "gpu:0", "onset": round(onset, 2), "raise_by": round(onset + 2, 2)}]
    return _finish(name, w, duration, _expect(duration, c, expect))


def gpu_lost(seed: int) -> Scenario:
    name = "gpu_lost"
    rng, w, c = _world(name, seed, ("vllm", "llamacpp"))
    duration = rng.uniform(300, 600)
    onset = rng.uniform(50, duration - 100)
    w.at(onset, lambda world: setattr(world, "gpu_error", "gpu_lost"))
    expect = [{"finding": "gpu_fault", "target": "gpu:0", "onset": round(onset, 2),
               "raise_by": round(onset + 3 * c.gpu_dt + 5, 2)}]
    return _finish(name, w, duration, _expect(duration, c, expect))


SLOWDOWN_REASONS = ("sw_thermal", "hw_thermal", "hw_power_brake", "hw_slowdown", "sw_power_cap")


def busy_slow(seed: int) -> Scenario:
    """An always-busy server slows 4x with a clock event reason active: only its counters show it."""
    name = "busy_slow"
    rng, w, c = _world(name, seed, ("vllm", "llamacpp"), traffic=rng_busy(seed))
    onset = rng.uniform(400, 600)
    duration = onset + 420
    reason = rng.choice(SLOWDOWN_REASONS)

    def go(world: World) -> None:
        world.s.slow = 0.25
        world.s.throttle = [reason]
        world.s.throttled_clock = world.s.sm_clock_max * 0.3

    w.at(onset, go)
    expect = [{"finding": "degraded", "target": w.target, "onset": round(onset, 2), "raise_by": round(onset + 300, 2)}]
    return _finish(name, w, duration, _expect(duration, c, expect, note=f"4x slower under load, {reason}"))


def stuck_collective(seed: int) -> Scenario:
    """A collective that never completes under traffic, on a server with an engine-step counter."""
    name = "stuck_collective"
    rng, w, c = _world(name, seed, ("vllm", "llamacpp"),
                      traffic=random.Random(f"{name}:{seed}:traffic").choice([0.1, 0.2, 0.4]))
    # A cadence that lets a canary fail within the minute: polls every 2-5 s, canaries every 15-30 s
    # with a 10-15 s deadline (the daemon's defaults: 5 s, 15 s, 8 s).
    c.poll_dt = rng.choice([2.0, 5.0])
    c.canary_dt = rng.choice([15.0, 20.0, 30.0])
    c.canary_timeout = rng.choice([10.0, 15.0])
    duration = rng.uniform(500, 800)
    onset = rng.uniform(200, duration - 200)

    def go(world: World) -> None:
        from tests.scenarios.world import Request

        # A collective runs inside an engine step, so it sticks with requests in flight.
        world.s.requests.append(Request(200.0, 2000.0, started=world.t))
        world.s.hung = True
        world.s.hang_util = 100.0
        world.s.hang_cpu = 100.0

    w.at(onset, go)
    expect = [{"finding": "hang", "target": w.target, "onset": round(onset, 2), "raise_by": round(onset + 60, 2)}]
    tolerate = [{"finding": "degraded", "target": w.target, "from": onset, "to": duration}]
    return _finish(name, w, duration, _expect(duration, c, expect, tolerate, "stuck at 100%"))


def truncation(seed: int) -> Scenario:
    """Long prompts cut (Ollama) or refused (llama.cpp, vLLM) again and again: one finding."""
    name = "truncation"
    rng, w, c = _world(name, seed, ("ollama", "llamacpp", "vllm"))
    duration = rng.uniform(600, 900)
    onset = rng.uniform(100, 300)
    context = rng.choice([2048, 4096, 8192])
    for i in range(rng.randrange(5, 30)):
        prompt = int(context * rng.uniform(1.1, 3.0))
        w.at(onset + i * rng.uniform(5, 15), lambda world, p=prompt: world.log(truncation_line(world.s.kind, context, p)))
    expect = [{"finding": "truncation", "target": w.target, "onset": round(onset, 2), "raise_by": round(onset + 2, 2)}]
    return _finish(name, w, duration, _expect(duration, c, expect, note="many cut prompts: one finding"))


def truncation_line(kind: str, context: int, prompt: int) -> str:
    """The line each server logs for a prompt longer than its context (docs/failure-signatures)."""
    if kind == "ollama":
        return (f'time=2026-11-20T14:23:45.001Z level=WARN source=runner.go:159 msg="truncating input prompt" '
                f"limit={context} prompt={prompt} keep=4 new={context}")
    if kind == "llamacpp":
        return (f"srv    send_error: task id = 12, error: request ({prompt} tokens) exceeds the available "
                f"context size ({context} tokens), try increasing it")
    return (f"ERROR 11-20 14:23:45 [serving_chat.py:222] Error in preprocessing prompt inputs: This model's "
            f"maximum context length is {context} tokens. However, you requested {prompt + 16} tokens ({prompt} "
            f"in the messages, 16 in the completion). Please reduce the length of the messages or completion.")


# --- healthy situations that must raise nothing ------------------------------------------------

def idle_held(seed: int) -> Scenario:
    name = "idle_held"
    rng, w, c = _world(name, seed, ("ollama", "vllm", "llamacpp", "openai"), traffic=0.0)
    duration = rng.uniform(1200, 2400)
    return _finish(name, w, duration, _expect(duration, c, note="idle with the model held at 0%"))


def busy_traffic(seed: int) -> Scenario:
    name = "busy_traffic"
    rng, w, c = _world(name, seed, ("ollama", "vllm", "llamacpp", "openai"), traffic=rng_traffic(seed))
    duration = rng.uniform(600, 1200)
    return _finish(name, w, duration, _expect(duration, c, note="steady traffic"))


def rng_traffic(seed: int) -> float:
    return random.Random(seed).choice([0.2, 0.4, 0.8])


def rng_busy(seed: int) -> float:
    return random.Random(f"busy:{seed}").choice([0.3, 0.5, 0.8])


def busy_steady(seed: int) -> Scenario:
    """Always busy at a steady, normal rate, with the power cap reported now and then: not degraded."""
    name = "busy_steady"
    rng, w, c = _world(name, seed, ("vllm", "llamacpp"), traffic=rng_busy(seed))
    duration = rng.uniform(900, 1300)
    for start in (rng.uniform(200, 400), rng.uniform(600, 800)):
        w.at(start, lambda world: setattr(world.s, "throttle", ["sw_power_cap"]))
        w.at(start + rng.uniform(30, 120), lambda world: setattr(world.s, "throttle", []))
    return _finish(name, w, duration, _expect(duration, c, note="steady load, power cap now and then"))


def chunked_prefill(seed: int) -> Scenario:
    """A 3-minute chunked prefill at 100%: vLLM shows no step and no token for it, canaries get through."""
    name = "chunked_prefill"
    rng, w, c = _world(name, seed, ("vllm", "llamacpp"),
                      traffic=random.Random(f"{name}:{seed}:traffic").choice([0.0, 0.02]))
    duration = 900.0
    onset = rng.uniform(150, 300)

    def go(world: World) -> None:
        from tests.scenarios.world import Request

        world.s.requests.append(Request(world.s.prefill_rate * 180.0, 50, started=world.t))

    w.at(onset, go)
    return _finish(name, w, duration, _expect(duration, c, note="a 180 s chunked prefill at 100%"))


def long_prefill(seed: int) -> Scenario:
    """One huge prompt: minutes at 100% with no new tokens, then generation resumes."""
    name = "long_prefill"
    rng, w, c = _world(name, seed, ("vllm", "llamacpp"), traffic=0.0)
    duration = 1000.0
    onset = rng.uniform(150, 300)
    seconds = rng.uniform(60, 200)

    def go(world: World) -> None:
        from tests.scenarios.world import Request

        world.s.requests.append(Request(world.s.prefill_rate * seconds, 50, started=world.t))

    w.at(onset, go)
    return _finish(name, w, duration, _expect(duration, c, note=f"a {seconds:.0f} s prefill at 100%"))


def cpu_offload(seed: int) -> Scenario:
    """A model mostly on the CPU: 5% GPU, 3 tokens/s, CPU busy: slow but healthy."""
    name = "cpu_offload"
    rng, w, c = _world(name, seed, ("ollama", "llamacpp"), traffic=0.05)
    w.s.cpu_offload = True
    w.s.decode_rate = 3.0
    w.s.prefill_rate = 60.0
    duration = rng.uniform(900, 1500)
    return _finish(name, w, duration, _expect(duration, c, note="CPU-offloaded, slow but progressing"))


def model_load(seed: int) -> Scenario:
    """A model is (re)loaded mid-trace: memory rises at ~0% for tens of seconds."""
    name = "model_load"
    rng, w, c = _world(name, seed, ("ollama", "llamacpp", "openai"), traffic=0.02)
    duration = rng.uniform(500, 900)
    onset = rng.uniform(100, 300)
    seconds = rng.uniform(10, 90)

    def cycle(world: World) -> None:
        world.unload(fail=False)

    w.at(onset, cycle)
    w.at(onset + 20, lambda world: world.load(seconds))
    return _finish(name, w, duration, _expect(duration, c, note=f"clean unload, then a {seconds:.0f} s load"))


def cache_warmup(seed: int) -> Scenario:
    """An allocator cache growing to its working size in a few steps, then flat: not a leak."""
    name = "cache_warmup"
    rng, w, c = _world(name, seed, ("vllm", "llamacpp", "openai"), traffic=0.2)
    duration = rng.uniform(900, 1500)
    start = rng.uniform(60, 200)
    steps = rng.choice([2, 3])
    size = rng.uniform(150, 400)
    for i in range(steps):
        w.at(start + i * rng.uniform(10, 40), lambda world: setattr(world.s, "extra_held", world.s.extra_held + size))
    return _finish(name, w, duration, _expect(duration, c, note=f"{steps} cache steps of {size:.0f} MiB"))


def startup(seed: int) -> Scenario:
    """The trace starts while the server starts: refused, then loading, then ready."""
    name = "startup"
    rng, w, c = _world(name, seed, ("vllm", "llamacpp", "openai"), traffic=0.02)
    seconds = rng.uniform(20, 180)
    w.s.refusing_until = rng.uniform(5, 30)
    w.s.load_start = 0.0
    w.s.loading_until = w.s.refusing_until + seconds
    duration = w.s.loading_until + 300
    return _finish(name, w, duration, _expect(duration, c, note="starting up"))


def planned_restart(seed: int) -> Scenario:
    name = "planned_restart"
    rng, w, c = _world(name, seed, ("ollama", "vllm", "llamacpp", "openai"))
    duration = rng.uniform(500, 900)
    onset = rng.uniform(150, duration - 250)
    w.at(onset, lambda world: world.restart(refuse_s=rng.uniform(2, 8), load_s=rng.uniform(5, 40)))
    return _finish(name, w, duration, _expect(duration, c, note="restarted on purpose"))


def canary_noise(seed: int) -> Scenario:
    """One canary times out in an otherwise healthy, idle picture."""
    name = "canary_noise"
    rng, w, c = _world(name, seed, ("ollama", "vllm", "llamacpp"), traffic=0.0)
    duration = rng.uniform(600, 1000)
    onset = rng.uniform(100, duration - 200)

    def lose(world: World) -> None:
        world.lose_next_canary = True  # a network hiccup: the request never reaches the server

    w.at(onset, lose)
    return _finish(name, w, duration, _expect(duration, c, note="a single failed canary"))


SCENARIOS: dict[str, Callable[[int], Scenario]] = {
    "hang": hang,
    "stream_stall": stream_stall,
    "nccl_hang": nccl_hang,
    "frozen": frozen,
    "failed_unload": failed_unload,
    "orphan_runner": orphan_runner,
    "completions_500": completions_500,
    "leak": leak,
    "fragmentation": fragmentation,
    "oom": oom,
    "slow": slow,
    "crash": crash,
    "xid": xid,
    "gpu_lost": gpu_lost,
    "busy_slow": busy_slow,
    "stuck_collective": stuck_collective,
    "truncation": truncation,
    "idle_held": idle_held,
    "busy_traffic": busy_traffic,
    "long_prefill": long_prefill,
    "cpu_offload": cpu_offload,
    "model_load": model_load,
    "cache_warmup": cache_warmup,
    "startup": startup,
    "planned_restart": planned_restart,
    "canary_noise": canary_noise,
    "busy_steady": busy_steady,
    "chunked_prefill": chunked_prefill,
}
