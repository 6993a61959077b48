"""Server adapters and canaries against the simulator, in each flavour, healthy and faulty.

Every test talks HTTP to a real simulator process on 127.0.0.1; faults are
injected through its control API, and the assertions are on the records a
detector (or an operator running ``watchdogctl probe``) would see.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.simulator import Simulator, sim_factory  # noqa: F401 - the fixture
from tests.support import wait_for
from watchdog.config.model import TargetSettings
from watchdog.probes.adapters import ServerAdapter, make_adapter
from watchdog.probes.canary import CanaryProbe
from watchdog.trace.io import dumps_record
from watchdog.trace.records import Canary, ServerPoll

KINDS = ("ollama", "vllm", "llamacpp")
FAST = ("--decode-tps", "200", "--load-time", "0.2")


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.start


def settings(sim: Simulator, **canary: Any) -> TargetSettings:
    deadlines = {"connect_timeout": "1s", "first_token_timeout": "1s", "stall_timeout": "500ms",
                 "timeout": "5s", **canary}
    return TargetSettings(name=sim.kind, kind=sim.kind, url=sim.url, request_timeout=1.0,
                          restart={"method": "none"}, canary=deadlines)


class Probes:
    """An adapter and a canary probe for one simulator, with the records they emit."""

    def __init__(self, sim: Simulator, **canary: Any) -> None:
        self.sim = sim
        self.records: list[Any] = []
        self.clock = Clock()
        self.target = settings(sim, **canary)
        self.adapter: ServerAdapter = make_adapter(self.target, self.clock)
        self.canary = CanaryProbe(self.adapter, self.target.canary, self.clock, self.records.append)

    async def poll(self) -> ServerPoll:
        poll = await self.adapter.poll()
        self.canary.note_poll(poll)
        return poll

    async def send(self) -> Canary:
        await self.poll()
        canary = await self.canary.round(force=True)
        assert canary is not None, self.canary.last_skip
        return canary

    async def close(self) -> None:
        await self.adapter.aclose()


def load_ollama_model(sim: Simulator, keep_alive: Any = "5m") -> None:
    resp = httpx.post(f"{sim.url}/api/generate", json={"model": sim.model, "keep_alive": keep_alive}, timeout=10)
    resp.raise_for_status()
    wait_for(lambda: httpx.get(f"{sim.url}/api/ps", timeout=2).json()["models"], 5, "the model in /api/ps")


def start(sim_factory: Any, kind: str, *args: str) -> Simulator:  # noqa: F811
    sim = sim_factory(kind, *FAST, *args)
    if kind == "ollama":
        load_ollama_model(sim)
    return sim


@pytest.mark.parametrize("kind", KINDS)
async def test_healthy_server_poll_and_canary(sim_factory: Any, kind: str) -> None:  # noqa: F811
    sim = start(sim_factory, kind)
    probes = Probes(sim)
    try:
        poll = await probes.poll()
        assert poll.state == "ready" and poll.error is None
        assert [m.name for m in poll.models] == [sim.model]
        canary = await probes.send()
        assert canary.ok and canary.error is None and canary.model == sim.model
        assert canary.tokens == 4 and 0 < canary.ttft_s < 1.0 and canary.tokens_per_s > 10
        assert canary.started <= canary.t and probes.records == [canary]
        after = await probes.poll()
        if kind == "ollama":
            assert poll.models[0].vram_mib > 0 and poll.models[0].expires_in_s > 200
            assert after.gen_tokens_total is None and after.running is None  # Ollama has no counters
        else:
            assert after.gen_tokens_total - (poll.gen_tokens_total or 0) >= 4
            assert after.running == 0 and after.waiting == 0 and 0 <= after.kv_cache_usage <= 1
    finally:
        await probes.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["json", "truncate", "huge"])
async def test_garbage_gives_error_observations_never_exceptions(
    sim_factory: Any, kind: str, mode: str  # noqa: F811
) -> None:
    sim = start(sim_factory, kind)
    probes = Probes(sim)
    try:
        await probes.poll()
        sim.inject("garbage", mode=mode, after_chunks=1)
        poll = await probes.adapter.poll()
        assert poll.state == "error" and poll.error.startswith("bad_response"), poll
        if mode == "huge":
            assert "body larger than" in poll.error
            return  # the simulator pads JSON bodies only; endless streams: test_canary_edges
        canary = await probes.canary.round(force=True)
        assert canary is not None and not canary.ok and canary.error == "bad_response", dumps_record(canary)
    finally:
        await probes.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_hang_before_the_first_token_is_a_timeout(sim_factory: Any, kind: str) -> None:  # noqa: F811
    sim = start(sim_factory, kind)
    probes = Probes(sim)
    try:
        await probes.poll()
        sim.inject("hang")
        began = time.monotonic()
        canary = await probes.send()
        assert (canary.ok, canary.error, canary.extra["phase"], canary.tokens) == (False, "timeout", "first_token", 0)
        assert canary.ttft_s is None and 0.9 < time.monotonic() - began < 3.0
        poll = await probes.poll()
        assert poll.state == "ready"  # status routes answer while generation hangs
    finally:
        await probes.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stream_that_stops_midway_is_stalled(sim_factory: Any, kind: str) -> None:  # noqa: F811
    sim = start(sim_factory, kind)
    probes = Probes(sim, max_tokens=8)
    try:
        sim.inject("hang", after_tokens=2)
        canary = await probes.send()
        assert (canary.ok, canary.error, canary.tokens) == (False, "stalled", 2), dumps_record(canary)
        assert canary.ttft_s is not None and canary.extra["after_tokens"] == 2
        # Stalled, not timed out: it gave up after stall_timeout, long before the total deadline.
        assert canary.t - canary.started < 2.5
    finally:
        await probes.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_crashed_server_refuses(sim_factory: Any, kind: str) -> None:  # noqa: F811
    sim = start(sim_factory, kind)
    probes = Probes(sim)
    try:
        await probes.poll()
        sim.inject("crash")
        wait_for(lambda: not sim.alive(), 5, "the simulator to exit")
        poll = await probes.poll()
        assert (poll.state, poll.error) == ("down", "refused")
        canary = await probes.canary.round(force=True)
        if kind == "ollama":
            # The loaded models are unknown now: no canary (it could load one).
            assert canary is None
        else:
            assert canary is not None and (canary.ok, canary.error) == (False, "refused")
    finally:
        await probes.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_http_errors_on_generation(sim_factory: Any, kind: str) -> None:  # noqa: F811
    sim = start(sim_factory, kind)
    probes = Probes(sim)
    try:
        sim.inject("http_5xx", status=503)
        canary = await probes.send()
        assert (canary.ok, canary.error, canary.extra["status"]) == (False, "http_5xx", 503)
        assert (await probes.poll()).state == "ready"
        sim.inject("http_5xx", status=500, scope="all")
        poll = await probes.poll()
        assert poll.state == "error" and poll.error.startswith("http_500")
    finally:
        await probes.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_frozen_server_accepts_but_never_answers(sim_factory: Any, kind: str) -> None:  # noqa: F811
    sim = start(sim_factory, kind)
    probes = Probes(sim)
    try:
        await probes.poll()
        os.kill(sim.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            poll = await probes.poll()
            assert (poll.state, poll.error) == ("error", "timeout")
            assert time.monotonic() - began < 2.0  # request_timeout is 1 s
            canary = await probes.canary.round(force=True)
            # The status endpoint is dead, so the canary is the only evidence left: it goes to the
            # model the last successful poll listed (on Ollama: the one seen loaded).
            assert canary is not None and (canary.error, canary.extra["phase"]) == ("timeout", "first_token")
        finally:
            os.kill(sim.pid, signal.SIGCONT)
        assert (await probes.poll()).state == "ready"
    finally:
        await probes.close()


async def test_a_canary_never_queues_behind_another(sim_factory: Any) -> None:  # noqa: F811
    import asyncio

    sim = start(sim_factory, "vllm")
    probes = Probes(sim, first_token_timeout="2s", timeout="3s")
    try:
        await probes.poll()
        sim.inject("hang")
        first = asyncio.create_task(probes.canary.round(force=True))
        async with asyncio.timeout(5):
            while not probes.canary.in_flight:
                await asyncio.sleep(0.01)
        began = time.monotonic()
        assert await probes.canary.round(force=True) is None
        assert time.monotonic() - began < 1.0 and "in flight" in probes.canary.last_skip  # not the 2 s
        assert (await first).error == "timeout"
        assert len(probes.records) == 1
    finally:
        await probes.close()


# --- Ollama: never load a model, never extend its life -------------------------------------------

def _ps(sim: Simulator) -> list[dict[str, Any]]:
    return httpx.get(f"{sim.url}/api/ps", timeout=2).json()["models"]


def _expiry(sim: Simulator) -> float:
    return datetime.fromisoformat(_ps(sim)[0]["expires_at"]).timestamp()


async def test_ollama_canary_does_not_extend_the_models_life(sim_factory: Any) -> None:  # noqa: F811
    sim = sim_factory("ollama", *FAST)
    load_ollama_model(sim, keep_alive="60s")
    before = _expiry(sim)
    probes = Probes(sim)
    try:
        canary = await probes.send()
        assert canary.ok
        # Without its keep_alive the model would now expire in Ollama's default 5 minutes.
        assert abs(_expiry(sim) - before) < 1.5
    finally:
        await probes.close()


async def test_ollama_canary_keeps_a_forever_model_forever(sim_factory: Any) -> None:  # noqa: F811
    sim = sim_factory("ollama", *FAST)
    load_ollama_model(sim, keep_alive=-1)
    probes = Probes(sim)
    try:
        poll = await probes.poll()
        assert poll.models[0].extra["keep_alive"] == "forever" and poll.models[0].expires_in_s is None
        assert (await probes.send()).ok
        assert _expiry(sim) - time.time() > 100 * 365 * 86400
    finally:
        await probes.close()


async def test_ollama_canary_never_loads_a_model(sim_factory: Any) -> None:  # noqa: F811
    sim = sim_factory("ollama", *FAST)
    probes = Probes(sim)
    try:
        poll = await probes.poll()
        assert poll.state == "ready" and poll.models == []
        assert await probes.canary.round(force=True) is None
        assert probes.canary.last_skip == "no model loaded"
        assert _ps(sim) == [] and not [m for m in sim.state()["models"] if m["state"] != "unloaded"]
    finally:
        await probes.close()


async def test_ollama_canary_never_reloads_a_model_unloaded_since_the_last_poll(sim_factory: Any) -> None:  # noqa: F811
    """The canary is chosen from a poll up to an interval old; a model unloaded meanwhile (the
    operator's keep_alive 0, an expiry) must not be loaded again by it (seen in the demo under load:
    the canary's request reloaded the model and the failed unload it should show was hidden)."""
    sim = sim_factory("ollama", *FAST)
    load_ollama_model(sim)
    probes = Probes(sim)
    try:
        poll = await probes.poll()
        assert [m.name for m in poll.models] == [sim.model]
        httpx.post(f"{sim.url}/api/generate", json={"model": sim.model, "keep_alive": 0},
                   timeout=10).raise_for_status()
        wait_for(lambda: _ps(sim) == [], 5, "the model to leave /api/ps")
        assert await probes.canary.round(force=True) is None  # chosen from the old poll, then checked
        assert probes.canary.last_skip == f"{sim.model} was unloaded since the last poll"
        assert _ps(sim) == []
    finally:
        await probes.close()


async def test_ollama_unload(sim_factory: Any) -> None:  # noqa: F811
    sim = start(sim_factory, "ollama")
    probes = Probes(sim)
    try:
        result = await probes.adapter.unload(sim.model)
        assert result.ok, result.detail
        assert (await probes.poll()).models == []
    finally:
        await probes.close()


@pytest.mark.parametrize("kind", ["vllm", "llamacpp"])
async def test_unload_elsewhere_says_it_is_not_supported(sim_factory: Any, kind: str) -> None:  # noqa: F811
    sim = start(sim_factory, kind)
    probes = Probes(sim)
    try:
        result = await probes.adapter.unload(sim.model)
        assert not result.ok and "no unload API" in result.detail
        assert (await probes.poll()).models[0].name == sim.model
    finally:
        await probes.close()


async def test_llamacpp_loading_state_holds_canaries_back(sim_factory: Any) -> None:  # noqa: F811
    sim = sim_factory("llamacpp", "--load-time", "3", wait_loaded=False)
    probes = Probes(sim)
    try:
        poll = await probes.poll()
        assert poll.state == "loading" and poll.error is None
        assert await probes.canary.round() is None and probes.canary.last_skip == "the server is loading"
        sim.wait_loaded(10)
        assert (await probes.poll()).state == "ready"
        canary = await probes.canary.round()
        assert canary is not None and canary.ok
    finally:
        await probes.close()


async def test_api_keys_are_sent_but_never_shown(sim_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    secret = "sk-very-secret-value-0123456789"
    monkeypatch.setenv("IW_TEST_KEY", secret)
    sim = start(sim_factory, "vllm")
    data = settings(sim, models=[sim.model]).model_dump(mode="json")
    target = TargetSettings.model_validate({**data, "api_key": "env:IW_TEST_KEY"})
    adapter = make_adapter(target, Clock())
    try:
        assert adapter.client().headers["Authorization"] == f"Bearer {secret}"
        sim.inject("garbage", mode="json")
        poll = await adapter.poll()
        records = [poll]
        probe = CanaryProbe(adapter, target.canary, Clock(), records.append)
        probe.note_poll(poll)
        await probe.round(force=True)
        text = "".join(dumps_record(r) for r in records) + repr(adapter.api_key()) + str(target)
        assert secret not in text and len(records) == 2
    finally:
        await adapter.aclose()
