"""Host helpers the fixtures share: Debian packages, a build cache under /tmp, free ports."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

CACHE_DIR = Path(os.environ.get("IW_TEST_CACHE", "/tmp/iw-test-cache"))
APT_LOCK_WAIT = "300"  # seconds apt waits for another apt/dpkg (another worktree's fixture)


class InfraError(RuntimeError):
    """A real part a test needs could not be installed or started; the message says why."""


def run(cmd: list[str], timeout: float, what: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a host command; a failure becomes an InfraError carrying its output's tail."""
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"{what}: {' '.join(cmd)} took longer than {timeout}s") from exc
    except OSError as exc:
        raise InfraError(f"{what}: cannot run {cmd[0]}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout or "").strip()[-2000:]
        raise InfraError(f"{what}: {' '.join(cmd)} exited {done.returncode}: {tail}")
    return done


def _apt_get(*args: str, timeout: float = 600) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(
        ["apt-get", "-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT}", *args],
        timeout=timeout,
        what="apt-get",
        env=env,
    )


def apt_update() -> None:
    _apt_get("update", "-q")


def ensure_commands(packages: dict[str, str]) -> None:
    """Make each command available, installing its Debian package if it is missing.

    ``packages`` maps a command (looked up on PATH) to the package providing it.
    ``apt-get update`` runs only if the install fails without it (a fresh image
    may have no package lists, but refreshing costs time when they are there).
    """
    missing = sorted({pkg for cmd, pkg in packages.items() if shutil.which(cmd) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise InfraError(f"need root to install {', '.join(missing)} with apt-get")
    if shutil.which("apt-get") is None:
        raise InfraError(f"{', '.join(missing)} missing and no apt-get to install them")
    install = ("install", "-y", "-q", "--no-install-recommends", *missing)
    try:
        _apt_get(*install)
    except InfraError:
        apt_update()
        _apt_get(*install)
    still = sorted(cmd for cmd in packages if shutil.which(cmd) is None)
    if still:
        raise InfraError(f"installed {', '.join(missing)} but still cannot find {', '.join(still)}")


def apt_download(package: str, into: Path) -> Path:
    """Fetch one .deb (without installing it) into ``into``; returns its path."""
    into.mkdir(parents=True, exist_ok=True)

    def fetch() -> None:
        # _apt cannot write into root's private temp dirs; apt then warns and
        # downloads as root, which is what we want here.
        run(["apt-get", "download", "-q", package], timeout=300, what="apt-get download", cwd=into)

    try:
        fetch()
    except InfraError:
        apt_update()
        fetch()
    debs = sorted(into.glob(f"{package}_*.deb"))
    if not debs:
        raise InfraError(f"apt-get download {package} left no .deb in {into}")
    return debs[-1]


def recipe_key(*parts: str) -> str:
    """A short stable key for a build recipe: change any part and the cache misses."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached_file(name: str, build: Callable[[Path], None]) -> Path:
    """``CACHE_DIR/name``, built by ``build(tmp_path)`` the first time.

    Concurrent test runs (other worktrees) wait on a lock instead of building
    the same thing twice; the result appears atomically, so an interrupted
    build never leaves a half-written file that looks finished.
    """
    target = CACHE_DIR / name
    if target.exists():
        return target
    with _locked(CACHE_DIR / f".{name}.lock"):
        if target.exists():
            return target
        partial = CACHE_DIR / f".{name}.{os.getpid()}.partial"
        try:
            build(partial)
            os.replace(partial, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
    return target


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
