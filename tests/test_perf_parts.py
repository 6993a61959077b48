"""The footprint work of issue 15, held to what it promises: canaries reuse one connection per
target, jitter spreads them, job lag and skipped runs are counted right, a process tree is found
without scanning the host, and a quiet log is polled less often."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import psutil
import pytest
from aiohttp import web

from tests.test_canary_edges import serve, target  # noqa: F401 - the fixture
from watchdog.daemon.workers import JobTimings
from watchdog.probes.adapters import make_adapter
from watchdog.probes.canary import JITTER, CanaryPlanner, CanaryProbe
from watchdog.probes.logwatch import FileSource
from watchdog.probes.processes import _ProcessTable


def _sse_answer(peers: list[tuple[str, int]]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in ("O", "K"):
            await response.write(f'data: {{"choices": [{{"delta": {{"content": "{word}"}}}}]}}\n\n'.encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    return handler


async def test_canaries_to_one_target_share_one_client_until_it_closes(serve: Callable) -> None:  # noqa: F811
    # (Connections are not kept: a canary stops reading at the end of the answer, which closes
    # its connection; the client, its pool and TLS context are what cost, and are kept.)
    peers: list[tuple[str, int]] = []
    url = await serve({"POST /v1/chat/completions": _sse_answer(peers)})
    settings = target(url)
    adapter = make_adapter(settings, time.monotonic)
    probe = CanaryProbe(adapter, settings.canary, time.monotonic, lambda r: None)
    clients = []
    try:
        for _ in range(3):
            canary = await probe.round(force=True)
            assert canary is not None and canary.ok and canary.tokens == 2
            clients.append(adapter._canary_client)
        assert clients[0] is not None and all(c is clients[0] for c in clients)
        assert clients[0] is not adapter.client()  # polls keep their own pool
        await adapter.aclose()
        assert clients[0].is_closed
        again = await probe.round(force=True)
        assert again is not None and again.ok
        assert adapter._canary_client is not None and adapter._canary_client is not clients[0]
    finally:
        await adapter.aclose()
    assert len(peers) == 4


def test_jitter_delays_routine_canaries_only() -> None:
    planner = CanaryPlanner(interval=15.0, confirm_interval=2.0)
    planner.last_end, planner.last_ok, planner.extra_wait = 100.0, True, 1.2
    assert not planner.decide(115.5).send  # 15 s passed, 16.2 not yet
    assert planner.decide(116.2).send
    planner.last_ok = False  # a re-check after a failure is never delayed
    assert planner.decide(102.0).send and planner.decide(102.0).confirm
    assert 0 < JITTER <= 0.1


def test_job_timings_count_lag_and_skipped_runs() -> None:
    now = [0.0]
    timings = JobTimings(monotonic=lambda: now[0])
    timings.plan("poll", first=10.0, interval=5.0)
    for start in (10.02, 15.0, 20.05):
        now[0] = start
        timings.started("poll")
    now[0] = 37.1  # the runs planned for 25 and 30 never started; this one is for 35
    assert timings.started("poll") == pytest.approx(2.1)
    assert (timings.runs, timings.skipped, dict(timings.skipped_by_job)) == (4, 2, {"poll": 2})
    assert timings.percentile(50) == pytest.approx(0.02)
    assert timings.percentile(99) == pytest.approx(2.1)
    timings.forget("poll")
    assert timings.started("poll") is None and timings.runs == 4


def test_a_tree_is_found_as_psutil_finds_it() -> None:
    script = ("import subprocess, sys, time; "
              "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) for _ in range(2)]; "
              "print('ready', flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == b"ready"
        expected = {c.pid for c in psutil.Process(parent.pid).children(recursive=True)}
        assert len(expected) == 2
        assert set(_ProcessTable().descendants(parent.pid)) == expected
        assert _ProcessTable().descendants(2**22 + 12345) == []  # no such process: nothing, no error
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def _append(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text)


@pytest.fixture
async def following(tmp_path: Path) -> AsyncIterator[tuple[FileSource, Path, list[str]]]:
    path = tmp_path / "server.log"
    path.write_text("")
    source = FileSource(path, poll_s=0.02, idle_poll_s=0.32)
    lines: list[str] = []

    async def follow() -> None:
        async for line in source.follow():
            lines.append(line)

    task = asyncio.create_task(follow())
    await asyncio.wait_for(source.ready.wait(), 10)
    yield source, path, lines
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    source.close()


async def test_a_quiet_log_is_looked_at_less_often_and_lines_still_arrive(
    following: tuple[FileSource, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, path, lines = following
    looks: list[float] = []
    step = source._step

    def counted(handle):
        looks.append(time.monotonic())
        return step(handle)

    monkeypatch.setattr(source, "_step", counted)
    await asyncio.sleep(2.0)
    quiet = len(looks)
    assert 1 <= quiet <= 20  # 0.02 s doubling to 0.32 s: ~8 looks in 2 s, not the 100 of a fixed 0.02 s
    await asyncio.to_thread(_append, path, "hello\n")
    deadline = time.monotonic() + 10
    while "hello" not in lines and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert lines == ["hello"]
    assert os.path.getsize(path) == 6
