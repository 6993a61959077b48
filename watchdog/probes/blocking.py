"""Blocking calls (NVML, psutil, the Docker SDK, file reads) off the event loop, with deadlines.

A call into a wedged driver or a hung Docker daemon cannot be cancelled: its
thread stays blocked. So each probe owns one worker thread, and while a call
is still stuck there the next one fails at once with :class:`Busy` instead of
piling up threads. The loop itself never waits longer than the deadline. The
worker is a daemon thread, so a call stuck forever never blocks the process
from exiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class DeadlineExceeded(Exception):
    """The call did not finish in time; it may still be running in its thread."""


class Busy(Exception):
    """The previous call is still stuck in the worker thread."""


_STOP = object()


class BlockingRunner:
    """One worker thread for one probe's blocking calls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: concurrent.futures.Future[Any] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def stuck(self) -> bool:
        """True while a call that exceeded its deadline still occupies the thread."""
        with self._lock:
            return self._pending is not None and not self._pending.done()

    def _worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                future.set_exception(exc)
            else:
                future.set_result(result)

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Queue ``fn(*args)`` on the worker; raise Busy if a call is still running."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: runner closed")
            if self._pending is not None and not self._pending.done():
                raise Busy(f"{self.name}: an earlier call is still blocked")
            if self._thread is None:
                self._thread = threading.Thread(target=self._worker, name=f"iw-{self.name}", daemon=True)
                self._thread.start()
            future: concurrent.futures.Future[T] = concurrent.futures.Future()
            self._pending = future
            self._jobs.put((future, fn, args))
            return future

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """Run ``fn(*args)`` in the worker thread; raise DeadlineExceeded after ``timeout`` s."""
        future = self.submit(fn, *args)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
        # arrives as the call completes, and a cancelled probe would run on.
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(asyncio.wrap_future(future))
        except TimeoutError:
            raise DeadlineExceeded(f"{self.name}: no answer within {timeout:g}s") from None

    def close(self) -> None:
        """Stop the worker after its current call; a stuck call is abandoned."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._jobs.put(_STOP)
