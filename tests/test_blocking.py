"""The worker thread that keeps blocking calls off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from watchdog.probes.blocking import BlockingRunner, Busy, DeadlineExceeded


async def test_results_and_exceptions_come_back() -> None:
    runner = BlockingRunner("t")
    try:
        assert await runner.run(lambda a, b: a + b, 2, 3, timeout=1.0) == 5
        with pytest.raises(ZeroDivisionError):
            await runner.run(lambda: 1 / 0, timeout=1.0)
    finally:
        runner.close()


async def test_a_stuck_call_costs_its_deadline_once_then_busy_at_once() -> None:
    runner = BlockingRunner("t")
    release = threading.Event()
    try:
        began = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await runner.run(release.wait, timeout=0.2)
        assert time.monotonic() - began < 0.5 and runner.stuck
        with pytest.raises(Busy):
            await runner.run(lambda: 1, timeout=5.0)
        release.set()
        deadline = time.monotonic() + 2
        while runner.stuck and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert await runner.run(lambda: 7, timeout=1.0) == 7
    finally:
        release.set()
        runner.close()


async def test_a_cancelled_caller_stops_even_when_the_call_just_finished() -> None:
    """Python 3.11's wait_for could swallow such a cancellation and let the caller run on."""
    runner = BlockingRunner("t")

    async def loop_forever() -> None:
        while True:
            await runner.run(time.sleep, 0.001, timeout=1.0)

    try:
        for i in range(200):
            task = asyncio.create_task(loop_forever())
            await asyncio.sleep(0.0005 * (i % 7))
            task.cancel()
            async with asyncio.timeout(2.0):
                await asyncio.gather(task, return_exceptions=True)
            assert task.cancelled()
            while runner.stuck:
                await asyncio.sleep(0.001)
    finally:
        runner.close()
