"""Fifty concurrent streaming requests, all served in full (timings are in scripts/bench_sim.py)."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.simulator import sim_factory  # noqa: F401 - the fixture


@pytest.mark.parametrize("kind", ["vllm", "ollama"])
def test_fifty_concurrent_streams_all_complete(sim_factory, kind):
    sim = sim_factory(kind, "--decode-tps", "100", "--load-time", "0.1", "--parallel", "64")

    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[int, str | None]:
        stream = await client.chat.completions.create(
            model=sim.model, messages=[{"role": "user", "content": f"request {i}"}], max_tokens=20,
            stream=True)
        tokens, finish = 0, None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                tokens += 1
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        return tokens, finish

    async def main() -> list[tuple[int, str | None]]:
        async with openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0,
                                      timeout=30) as client:
            return await asyncio.gather(*(one(client, i) for i in range(50)))

    results = asyncio.run(main())
    assert results == [(20, "length")] * 50
    state = sim.state()
    assert state["generation_tokens_total"] == 1000 and state["running"] == state["waiting"] == 0
