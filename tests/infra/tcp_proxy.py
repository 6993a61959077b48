"""A TCP proxy on 127.0.0.1 that a test can tell to stop forwarding: an API that never answers.

A SIGSTOPped server is one kind of hang; another is a server whose process stays
alive and running while its API answers nothing (a deadlocked HTTP thread, a wedged
event loop). The proxy makes that second kind in front of a real server: while
``hold()`` is in force, it keeps accepting connections and reading what clients
send, but forwards nothing either way, so every request waits for its deadline.
``release()`` forwards again (on new connections; held ones are closed).

It runs its own asyncio loop in a thread::

    with TcpProxy(upstream_port) as proxy:
        proxy.url            # http://127.0.0.1:<its port>
        proxy.hold()         # stop forwarding
        proxy.release()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Self

from tests.infra.system import InfraError


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.connections = 0
        self.held_connections = 0
        self._holding = False
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._hold_event: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            future.result(10)
        except Exception as exc:
            self.close()
            raise InfraError(f"the TCP proxy cannot listen: {exc}") from exc
        return self

    async def _start(self) -> None:
        self._hold_event = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def hold(self) -> None:
        """Stop forwarding: connections are accepted and read, never answered."""
        self._call(self._set_hold, True)

    def release(self) -> None:
        """Forward again; the connections held meanwhile are closed."""
        self._call(self._set_hold, False)

    def _set_hold(self, holding: bool) -> None:
        assert self._hold_event is not None
        self._holding = holding
        if holding:
            self._hold_event.set()
        else:
            self._hold_event.clear()
            for task in list(self._tasks):
                if task.get_name() == "held":
                    task.cancel()

    def _call(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        done = threading.Event()

        def run() -> None:
            try:
                fn(*args)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("the proxy's loop did not answer")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            if self._holding:
                await self._swallow(reader, task)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return  # upstream gone: close, like a refused connection would look through a proxy
            try:
                await self._pipe_both(reader, writer, up_reader, up_writer)
            finally:
                up_writer.close()
                with contextlib.suppress(Exception):
                    await up_writer.wait_closed()
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _swallow(self, reader: asyncio.StreamReader, task: asyncio.Task[None]) -> None:
        """Read and drop what the client sends until released (then the connection closes)."""
        task.set_name("held")
        self.held_connections += 1
        while await reader.read(65536):
            pass
        # The client closed its side; keep ours open until released, like a wedged server.
        await asyncio.Event().wait()

    async def _pipe_both(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        assert self._hold_event is not None
        pipes = [asyncio.create_task(self._pipe(reader, up_writer)),
                 asyncio.create_task(self._pipe(up_reader, writer))]
        held = asyncio.create_task(self._hold_event.wait())
        try:
            while not all(pipe.done() for pipe in pipes):
                await asyncio.wait([*pipes, held], return_when=asyncio.FIRST_COMPLETED)
                if held.done():
                    # Told to stop forwarding: an open connection goes silent too.
                    for pipe in pipes:
                        pipe.cancel()
                    current = asyncio.current_task()
                    assert current is not None
                    await self._swallow(reader, current)
                    return
        finally:
            for pending in (*pipes, held):
                pending.cancel()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if sink.can_write_eof():
                    sink.write_eof()

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
