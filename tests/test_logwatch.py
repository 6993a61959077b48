"""The log probe on real files: start at the end, rotations, truncation, long lines, and the
simulator's own server log."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.simulator import sim_factory  # noqa: F401 - the fixture
from tests.support import until
from watchdog.probes.lines import CUT_MARK
from watchdog.probes.logwatch import MAX_LINE, FileSource, LogProbe
from watchdog.trace.records import LogLine

OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."
MALLOC = "ggml_backend_cuda_buffer_type_alloc_buffer: cudaMalloc failed: out of memory"


def append(path: Path, *lines: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


class Following:
    def __init__(self, probe: LogProbe, out: list[LogLine]) -> None:
        self.probe = probe
        self.out = out

    def lines(self) -> list[str]:
        return [r.line for r in self.out]

    async def wait_lines(self, count: int, timeout: float = 5.0) -> list[str]:
        await until(lambda: len(self.out) >= count, timeout, f"{count} log record(s), have {self.lines()}")
        return self.lines()


@pytest.fixture
async def follow() -> AsyncIterator[Callable[..., Any]]:
    tasks: list[asyncio.Task[None]] = []

    async def start(path: Path, **kw: Any) -> Following:
        out: list[LogLine] = []
        probe = LogProbe("t", FileSource(path, poll_s=0.02), time.monotonic, out.append, retry_s=0.05, **kw)
        tasks.append(asyncio.create_task(probe.run()))
        await asyncio.wait_for(probe.source.ready.wait(), 5)  # positioned at the end of the file
        return Following(probe, out)

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_starts_at_the_end_and_passes_on_only_lines_that_matter(tmp_path: Path, follow: Any) -> None:
    log = tmp_path / "server.log"
    append(log, "old line", OOM + " (old: before the watchdog started)")
    f = await follow(log)
    append(log, "INFO request done in 0.2s", MALLOC, "INFO another")
    assert await f.wait_lines(1) == [MALLOC]
    assert f.out[0].target == "t" and f.out[0].extra["pattern"] == "cuda_malloc_failed"
    await until(lambda: f.probe.lines_seen == 3, 5, "every new line read")
    assert f.lines() == [MALLOC]  # and nothing from before the probe started


async def test_rotation_by_rename_loses_nothing(tmp_path: Path, follow: Any) -> None:
    log = tmp_path / "server.log"
    log.write_text("")
    f = await follow(log)
    append(log, "before rotation: " + MALLOC)
    await f.wait_lines(1)
    os.rename(log, tmp_path / "server.log.1")
    append(tmp_path / "server.log.1", "written late to the old file: " + MALLOC)  # a writer not reopened yet
    append(log, "in the new file: " + OOM)
    lines = await f.wait_lines(3)
    assert lines == ["before rotation: " + MALLOC, "written late to the old file: " + MALLOC,
                     "in the new file: " + OOM]
    append(log, "later: " + MALLOC)
    assert (await f.wait_lines(4))[-1] == "later: " + MALLOC
    assert f.probe.source.rotations == 1  # type: ignore[attr-defined]


async def test_copytruncate(tmp_path: Path, follow: Any) -> None:
    log = tmp_path / "server.log"
    append(log, *(f"filler {i}" for i in range(200)))
    f = await follow(log)
    with open(log, "r+") as handle:
        handle.truncate(0)
    await until(lambda: f.probe.source.rotations == 1, 5, "the truncation to be seen")  # type: ignore[attr-defined]
    append(log, OOM)
    assert await f.wait_lines(1) == [OOM]


async def test_a_file_that_appears_later_is_read_from_its_start(tmp_path: Path, follow: Any) -> None:
    log = tmp_path / "later.log"
    f = await follow(log)
    append(log, MALLOC)
    assert await f.wait_lines(1) == [MALLOC]


async def test_an_endless_line_is_cut(tmp_path: Path, follow: Any) -> None:
    log = tmp_path / "server.log"
    log.write_text("")
    f = await follow(log)
    with open(log, "a") as handle:
        handle.write(MALLOC + " " + "x" * (4 * 1024 * 1024) + "\n" + OOM + "\n")
    lines = await f.wait_lines(2)
    assert lines[0].startswith(MALLOC) and lines[0].endswith(CUT_MARK)
    assert len(lines[0]) == MAX_LINE + len(CUT_MARK) and lines[1] == OOM


async def test_a_flood_is_limited(tmp_path: Path, follow: Any) -> None:
    log = tmp_path / "server.log"
    log.write_text("")
    f = await follow(log, burst=5, burst_window_s=60)
    append(log, *([MALLOC] * 50))
    await f.wait_lines(5)
    await until(lambda: f.probe.lines_seen == 50, 5, "every line read")
    assert len(f.out) == 5 and f.probe.lines_dropped == 45


async def test_recent_reads_the_tail_only(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    with open(log, "w") as handle:
        handle.write(MALLOC + " (far back)\n")
        handle.write("filler line that does not matter\n" * 200_000)  # ~6.6 MB
        handle.write(OOM + "\n")
    out: list[LogLine] = []
    probe = LogProbe("t", FileSource(log), time.monotonic, out.append)
    found = await probe.recent(100)
    assert [r.line for r in found] == [OOM] and out == found


async def test_the_simulators_out_of_memory_lines(sim_factory: Any) -> None:  # noqa: F811
    sim = sim_factory("vllm", "--decode-tps", "200", "--load-time", "0.2")
    out: list[LogLine] = []
    probe = LogProbe("vllm", FileSource(sim.log_path, poll_s=0.02), time.monotonic, out.append)
    task = asyncio.create_task(probe.run())
    try:
        await asyncio.wait_for(probe.source.ready.wait(), 5)
        sim.inject("fragmentation")
        async with httpx.AsyncClient(timeout=5) as client:
            await client.post(f"{sim.url}/v1/completions", json={"model": sim.model, "prompt": "hi",
                                                                 "max_tokens": 4})
        await until(lambda: any(r.extra["pattern"] == "torch_oom" for r in out), 5, "the OOM line")
        oom = next(r for r in out if r.extra["pattern"] == "torch_oom")
        assert "reserved by PyTorch but unallocated" in oom.line
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_quiet_file_is_watched_in_the_worker_without_hops_onto_the_loop(tmp_path: Path) -> None:
    """Issue 15: the looks at a quiet file happen in the follower's worker; the loop hears only
    news (or, every WATCH_S, that there was none)."""
    path = tmp_path / "server.log"
    path.write_text("")
    source = FileSource(path, poll_s=0.01, idle_poll_s=0.02)
    hops = 0
    submit = source._runner.submit

    def counting(*args: Any) -> Any:
        nonlocal hops
        hops += 1
        return submit(*args)

    source._runner.submit = counting  # type: ignore[method-assign]
    looks = 0
    step = source._step

    def counting_step(*args: Any) -> Any:
        nonlocal looks
        looks += 1
        return step(*args)

    source._step = counting_step  # type: ignore[method-assign]
    lines: list[str] = []

    async def read() -> None:
        async for line in source.follow():
            lines.append(line)

    task = asyncio.create_task(read())
    try:
        await asyncio.wait_for(source.ready.wait(), 5)
        await until(lambda: looks >= 50, 10.0, f"50 looks at the quiet file, have {looks}")
        assert hops <= 3, hops  # the open, then one watch still running
        append(path, OOM)
        await until(lambda: lines == [OOM], 5.0, f"the line, have {lines}")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        source.close()
