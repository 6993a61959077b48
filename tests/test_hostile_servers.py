"""Hostile and broken inference servers (tests/hostile.py, real sockets): what the probes make of each.

A status endpoint that fails in any of the ways in ``STATUS_MODES`` gives an
``error`` poll within the request deadline, and the target's status is
``unknown``, never ``ok``; bodies cost no more memory than the cap, whatever
their encoding; a canary stream without end is cut at ``max_tokens`` and is no
hang; when the status endpoint fails, the canary goes to the last model seen
(kept in the state dir across restarts).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.hostile import MODEL, STATUS_MODES, HostileHost, hostile_host
from watchdog.config.load import parse_config
from watchdog.config.model import Config
from watchdog.detect.factory import make_engine
from watchdog.probes.adapters import MAX_MODELS_PER_POLL, make_adapter
from watchdog.probes.canary import CanaryProbe
from watchdog.probes.http import DEFAULT_MAX_BODY
from watchdog.probes.known_models import KnownModels
from watchdog.status import build_status
from watchdog.trace.records import Canary, Header, Record, ServerPoll, TraceTarget

KINDS = ("ollama", "vllm", "llamacpp", "openai")
REQUEST_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def host() -> Iterator[HostileHost]:
    with hostile_host() as running:
        yield running


def config_for(url: str, kind: str, *, models: tuple[str, ...] = (), max_tokens: int = 8) -> Config:
    canary_models = f"models = {list(models)!r}\n".replace("'", '"') if models else ""
    return parse_config(
        f"""
[watchdog]
gpu_backend = "none"
[policy]
mode = "observe"
[[targets]]
name = "t"
kind = "{kind}"
url = "{url}"
request_timeout = "{REQUEST_TIMEOUT:g}s"
[targets.canary]
interval = "1s"
first_token_timeout = "2s"
stall_timeout = "2s"
timeout = "5s"
max_tokens = {max_tokens}
{canary_models}"""
    )


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.start


def status_of(kind: str, records: list[Record], now: float) -> str:
    header = Header(targets=[TraceTarget(name="t", kind=kind)])
    polls = {r.target: r for r in records if isinstance(r, ServerPoll)}
    canaries = {r.target: r for r in records if isinstance(r, Canary)}
    snapshot = build_status(header=header, polls=polls, canaries=canaries, gpu_samples={}, now=now,
                            wall_start=time.time() - now)
    return snapshot.targets[0].state


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", [m for m in STATUS_MODES if m != "many_models"])
async def test_a_broken_status_endpoint_is_an_error_and_never_ok(host: HostileHost, mode: str, kind: str) -> None:
    server = host.start(mode)
    clock = Clock()
    adapter = make_adapter(config_for(server.url, kind).targets[0], clock)
    try:
        began = time.monotonic()
        poll = await adapter.poll()
        took = time.monotonic() - began
    finally:
        await adapter.aclose()
    assert poll.state in ("error", "down"), (mode, kind, poll)
    assert poll.error, poll
    # Named as the trace spec names failures, never an internal exception escaping the adapter.
    assert "Error" not in poll.error or "RemoteProtocolError" in poll.error, poll.error
    # The request deadline holds whatever the server does (trickling, slow headers, endless bodies).
    assert took < REQUEST_TIMEOUT + 3.0, (mode, kind, took)
    assert status_of(kind, [poll], clock()) == "unknown"


async def test_a_gzip_bomb_costs_no_more_than_the_body_cap(host: HostileHost) -> None:
    server = host.start("gzip_bomb")
    adapter = make_adapter(config_for(server.url, "ollama").targets[0], Clock())
    process = psutil.Process()
    before = process.memory_info().rss
    peak = before
    try:
        for _ in range(5):
            task = asyncio.ensure_future(adapter.poll())
            while not task.done():
                peak = max(peak, process.memory_info().rss)
                await asyncio.sleep(0.01)
            poll = task.result()
            assert poll.state == "error" and "larger than" in (poll.error or ""), poll
    finally:
        await adapter.aclose()
    # Without the cap on inflated bytes, one poll costs 512 MB (issue 11: RSS 986 MB).
    assert peak - before < 8 * DEFAULT_MAX_BODY, f"RSS grew by {(peak - before) >> 20} MiB"


async def test_an_api_ps_of_38000_models_makes_a_small_record(host: HostileHost) -> None:
    server = host.start("many_models")
    adapter = make_adapter(config_for(server.url, "ollama").targets[0], Clock())
    try:
        poll = await adapter.poll()
    finally:
        await adapter.aclose()
    assert poll.state == "ready"
    assert len(poll.models) == MAX_MODELS_PER_POLL
    assert poll.extra["models_total"] == 38_000


@pytest.mark.parametrize("kind", ["ollama", "openai"])
async def test_an_endless_token_stream_is_cut_at_max_tokens_and_is_no_hang(host: HostileHost, kind: str) -> None:
    server = host.start("endless_tokens")
    clock = Clock()
    config = config_for(server.url, kind, models=(MODEL,) if kind == "openai" else (), max_tokens=20)
    records: list[Record] = []
    adapter = make_adapter(config.targets[0], clock)
    probe = CanaryProbe(adapter, config.targets[0].canary, clock, records.append)
    engine = make_engine(config, header=Header(targets=[TraceTarget(name="t", kind=kind)]))
    findings = []
    try:
        for _ in range(4):
            poll = await adapter.poll()
            probe.note_poll(poll)
            findings += engine.feed(poll)
            canary = await probe.round(force=True)
            assert canary is not None
            assert canary.ok, canary
            # Cut at the first token beyond max_tokens: the server does not stop by itself.
            assert canary.tokens == 21 and canary.extra.get("cut") == "max_tokens", canary
            findings += engine.feed(canary)
    finally:
        await adapter.aclose()
    assert not [f for f in findings if f.finding == "hang"], findings
    # The stream was closed by the canary: the server has no request left to stream to.
    deadline = time.monotonic() + 10
    while server.writers and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not server.writers


def test_a_timeout_after_tokens_is_not_a_hang() -> None:
    """Tokens came, but the whole answer took longer than the canary's deadline: slow, not hung."""
    config = config_for("http://127.0.0.1:1", "vllm", models=("m",))
    engine = make_engine(config, header=Header(targets=[TraceTarget(name="t", kind="vllm")]))
    findings = []
    for i in range(6):
        t = 10.0 * (i + 1)
        findings += engine.feed(ServerPoll(t=t - 1, target="t", state="ready", models=[]))
        findings += engine.feed(Canary(t=t, target="t", ok=False, model="m", started=t - 5, error="timeout",
                                       tokens=300, ttft_s=0.1, extra={"phase": "total"}))
    assert not [f for f in findings if f.finding == "hang"]


@pytest.mark.parametrize("kind", ["ollama", "vllm"])
async def test_when_the_status_endpoint_hangs_the_canary_goes_to_the_last_known_model(
    host: HostileHost, kind: str, tmp_path: Path
) -> None:
    server = host.start("healthy")
    clock = Clock()
    target = config_for(server.url, kind).targets[0]
    adapter = make_adapter(target, clock, known=KnownModels.in_state_dir(str(tmp_path)))
    try:
        assert (await adapter.poll()).state == "ready"
    finally:
        await adapter.aclose()
    server.mode = "hung"
    # A new daemon (the old one restarted during the hang): only the state dir remembers the model.
    adapter = make_adapter(target, clock, known=KnownModels.in_state_dir(str(tmp_path)))
    records: list[Record] = []
    probe = CanaryProbe(adapter, target.canary, clock, records.append)
    try:
        poll = await adapter.poll()
        assert poll.state == "error"
        probe.note_poll(poll)
        canary = await probe.round(force=True)
    finally:
        await adapter.aclose()
    assert canary is not None and canary.model == MODEL
    assert (canary.ok, canary.error) == (False, "timeout")


async def test_ollama_never_gets_a_canary_to_a_model_it_unloaded(host: HostileHost, tmp_path: Path) -> None:
    server = host.start("healthy")
    target = config_for(server.url, "ollama").targets[0]
    known = KnownModels.in_state_dir(str(tmp_path))
    adapter = make_adapter(target, Clock(), known=known)
    try:
        assert (await adapter.poll()).models
        server.mode = "wrong_schema"
        assert (await adapter.poll()).state == "error"
        assert known.get("t") == [MODEL]
    finally:
        await adapter.aclose()
    # An empty /api/ps (nothing loaded) is news on Ollama: forgotten, so a later failure sends nothing.
    adapter.known_models = []
    known.set("t", [])
    choices, why = adapter.canary_choices(ServerPoll(t=1.0, target="t", state="error", error="timeout"), 1.0, ())
    assert choices == [] and "not known" in why


def test_the_flight_recorder_holds_its_byte_budget_per_target_and_in_total() -> None:
    """Polls listing 256 models (what a 38,000-model /api/ps is cut to) every second for 15 minutes
    would be 28,000 KB of records per target; the recorder keeps its budgets, the oldest going first,
    and a noisy target never pushes out a quiet one."""
    import tracemalloc

    from watchdog.daemon.recorder import FlightRecorder
    from watchdog.trace.records import LoadedModel

    def models() -> list[LoadedModel]:  # new objects each poll, as a real poll makes
        return [LoadedModel(name=f"m{i}:1b", vram_mib=1024.0, expires_in_s=None) for i in range(MAX_MODELS_PER_POLL)]

    owner_budget, total_budget = 2 * 1024 * 1024, 5 * 1024 * 1024
    recorder = FlightRecorder(900.0, max_bytes=total_budget, max_owner_bytes=owner_budget)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for second in range(900):
            for name in ("noisy-a", "noisy-b", "noisy-c"):
                recorder.add(ServerPoll(t=float(second), target=name, state="ready", models=models()))
            recorder.add(ServerPoll(t=float(second), target="quiet", state="ready"))
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert recorder.bytes <= total_budget
    assert recorder.dropped_for_budget > 0
    # The estimate is honest: what the recorder really holds is of the order of its budget.
    assert held < 3 * total_budget, f"{held >> 20} MiB held"
    quiet = recorder.records(targets=["quiet"])
    assert len(quiet) == 900  # untouched by the noisy ones
    noisy = recorder.records(targets=["noisy-a"])
    assert noisy and noisy[-1].t == 899.0 and noisy[0].t > 0.0  # the newest kept, the oldest dropped


@pytest.mark.parametrize("mode", ["deep_json", "gzip_bomb", "trickle", "garbage", "endless_body"])
def test_discover_keeps_the_other_results_when_one_port_is_hostile(host: HostileHost, mode: str) -> None:
    from watchdog.discover.scan import discover

    hostile = host.start(mode)
    healthy = host.start("healthy")
    found = discover([hostile.port, healthy.port], use_docker=False, timeout=1.0)
    servers = {s.port: s for s in found.servers}
    assert healthy.port in servers and servers[healthy.port].identity.kind == "ollama"
    assert hostile.port not in servers


@pytest.mark.parametrize("mode", ["gzip_bomb", "endless_body", "big_body", "many_models"])
async def test_45_targets_sending_huge_bodies_at_once_stay_within_a_memory_bound(host: HostileHost, mode: str) -> None:
    """The per-request cap bounds one body; LARGE_BODIES_AT_ONCE bounds them all (before it,
    45 gzip bombs at the same second held 200 MiB of Python objects, and RSS went past 700 MiB)."""
    import tracemalloc

    from watchdog.probes.http import LARGE_BODIES_AT_ONCE, LARGE_BODY, PIECE

    servers = [host.start(mode) for _ in range(45)]
    adapters = [make_adapter(config_for(s.url, "ollama").targets[0], Clock()) for s in servers]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        polls = await asyncio.gather(*(a.poll() for a in adapters))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        for adapter in adapters:
            await adapter.aclose()
    if mode != "many_models":
        assert all(p.state == "error" for p in polls)
    # Per large body: the body, its bytes() copy and (JSON) its parse; per waiting one: a piece past LARGE_BODY.
    parse_factor = 12 if mode == "many_models" else 3
    bound = LARGE_BODIES_AT_ONCE * parse_factor * DEFAULT_MAX_BODY + 45 * (LARGE_BODY + 2 * PIECE) + (16 << 20)
    assert peak < bound, f"{peak >> 20} MiB traced at peak (bound {bound >> 20} MiB)"
