"""A private Docker engine for tests, and images built locally (no registry is reachable).

``docker_engine`` (session) starts ``dockerd`` with every path private to this test
run (socket, data root, exec root, pid file, config file, containerd namespace), no
default bridge and no iptables rules, plus one bridge network of its own: several
engines (other worktrees running their tests at the same time) never collide.

``busybox_image`` (session) is a tiny image made with ``docker import`` from Debian's
``busybox-static``. ``python_containers`` (function) starts *our* Python code inside
a container of that image: the interpreter, the virtual environment and the source
tree are bind-mounted read-only at their host paths, and the server's port is
published on 127.0.0.1.

Usage::

    from tests.infra.docker_engine import docker_engine, busybox_image, python_containers  # noqa: F401

    def test_x(python_containers):
        sim = python_containers(["-m", "watchdog.sim", "--port", "8000"], container_port=8000)
        sim.wait_http("/api/version")
        ... sim.url, sim.host_pid, sim.container ...
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import io
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.infra.system import (
    InfraError,
    apt_download,
    cached_file,
    ensure_commands,
    free_port,
    pid_alive,
    recipe_key,
)
from tests.paths import ROOT
from tests.support import unavailable, wait_for

try:  # the SDK is a runtime dependency of the package; still, say so clearly if absent
    import docker
    import docker.errors
    from docker.models.containers import Container
except ImportError:  # pragma: no cover
    docker = None  # type: ignore[assignment]
    Container = object  # type: ignore[assignment,misc]

RUN_DIR_PREFIX = "iw-docker-"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
LABEL = "io.inference-watchdog.test"  # every container we start carries it


@dataclass
class DockerEngine:
    """A running private ``dockerd``: talk to it with ``client`` (the docker SDK)."""

    client: docker.DockerClient
    socket_path: Path
    run_dir: Path
    network: str
    pid: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        """``unix:///tmp/iw-docker-.../docker.sock``, for ``docker.DockerClient(base_url=...)``."""
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "dockerd.log"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def import_tarball(self, tarball: Path, tag: str, changes: Sequence[str] = ()) -> str:
        """``docker import`` a rootfs tarball as ``tag`` (``repo:tag``); returns the tag."""
        repository, _, version = tag.partition(":")
        try:
            self.client.api.import_image_from_file(
                str(tarball), repository=repository, tag=version or "latest", changes=list(changes)
            )
            self.client.images.get(tag)
        except docker.errors.DockerException as exc:
            raise InfraError(f"docker import of {tarball} as {tag} failed: {exc}") from exc
        return tag

    def has_image(self, tag: str) -> bool:
        try:
            self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            return False
        return True

    def remove_test_containers(self) -> None:
        for container in self.client.containers.list(all=True, filters={"label": LABEL}):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


# --------------------------------------------------------------------------- engine


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so no engine outlives a crash."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    return [line.split()[1] for line in lines if line.split()[1].startswith(prefix)]


def _remove_run_dir(run_dir: Path) -> bool:
    """Unmount what a stopped engine left below ``run_dir`` (its netns), then delete it.

    Only called once the engine that made the mounts has exited. Returns False
    (and keeps the files) if something stays mounted.
    """
    for mount in sorted(_mounts_under(run_dir), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount], capture_output=True, check=False, timeout=30)
    if _mounts_under(run_dir):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def _sweep_stale_run_dirs(base: Path) -> None:
    """Remove run dirs of earlier test runs whose engine and owner are both gone.

    A still running engine (another worktree's, or an orphan) is never touched.
    """
    for run_dir in base.glob(f"{RUN_DIR_PREFIX}*"):
        try:
            owner = int((run_dir / "owner.pid").read_text())
            engine_pid = int((run_dir / "dockerd.pid").read_text()) if (run_dir / "dockerd.pid").exists() else 0
        except (OSError, ValueError):
            continue
        if pid_alive(owner) or (engine_pid and pid_alive(engine_pid)):
            continue
        _remove_run_dir(run_dir)


def start_engine(base: Path = Path("/tmp")) -> DockerEngine:
    """Install (if needed) and start a private dockerd; returns once it answers."""
    if docker is None:
        raise InfraError("the docker SDK is not installed (pip install docker)")
    if os.geteuid() != 0:
        raise InfraError("a private Docker engine needs root")
    ensure_commands({"dockerd": "docker.io", "docker-proxy": "docker.io"})
    _sweep_stale_run_dirs(base)
    # Only letters, digits and '-' in the name: it also names the containerd namespace,
    # which rejects others (a mkdtemp suffix may end in '_').
    run_dir = base / f"{RUN_DIR_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    run_dir.mkdir(mode=0o700)
    (run_dir / "owner.pid").write_text(str(os.getpid()))
    (run_dir / "daemon.json").write_text("{}\n")  # never the host's /etc/docker/daemon.json
    socket_path = run_dir / "docker.sock"
    name = run_dir.name.removeprefix(RUN_DIR_PREFIX)
    cmd = [
        "dockerd",
        "--host", f"unix://{socket_path}",
        "--data-root", str(run_dir / "data"),
        "--exec-root", str(run_dir / "exec"),
        "--pidfile", str(run_dir / "dockerd.pid"),
        "--config-file", str(run_dir / "daemon.json"),
        # A shared system containerd would otherwise mix this engine's containers with others'.
        "--containerd-namespace", f"iw-{name}",
        "--containerd-plugins-namespace", f"iw-{name}-plugins",
        # No docker0 and no iptables rules: both are host-wide and would collide with
        # another engine. Published ports still work through docker-proxy.
        "--bridge", "none",
        "--iptables=false",
        "--ip-masq=false",
    ]
    try:
        with open(run_dir / "dockerd.log", "wb") as log:
            process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only
            )
    except OSError as exc:
        raise InfraError(f"cannot start dockerd: {exc}") from exc
    engine = DockerEngine(None, socket_path, run_dir, network="", pid=process.pid, process=process)  # type: ignore[arg-type]
    try:
        engine.client = _wait_for_engine(engine, process)
        # A bridge of its own: docker picks a subnet that no host route uses yet.
        engine.network = engine.client.networks.create(f"iw-{name}", driver="bridge", labels={LABEL: "1"}).name
    except BaseException as exc:
        stop_engine(engine)
        if isinstance(exc, docker.errors.DockerException):
            raise InfraError(f"cannot set up the engine: {exc}") from exc
        raise
    return engine


def _wait_for_engine(engine: DockerEngine, process: subprocess.Popen[bytes]) -> docker.DockerClient:
    """A client once dockerd answers a ping; InfraError if it exits or stays silent."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise InfraError(f"dockerd exited {process.returncode} at start: {engine.log_tail()}")
        if engine.socket_path.exists():
            try:
                client = docker.DockerClient(base_url=engine.base_url, timeout=120)
                if client.ping():
                    return client
            except docker.errors.DockerException:
                pass
        if time.monotonic() > deadline:
            raise InfraError(f"dockerd did not answer within {START_TIMEOUT}s: {engine.log_tail()}")
        time.sleep(0.1)


def stop_engine(engine: DockerEngine) -> None:
    """Remove our containers and network, stop dockerd by its pid, delete its files."""
    if engine.client is not None:
        with contextlib.suppress(Exception):
            engine.remove_test_containers()
    if engine.network:
        with contextlib.suppress(Exception):
            engine.client.networks.get(engine.network).remove()
    with contextlib.suppress(Exception):
        engine.client.close()
    process = engine.process
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    if process is not None and process.poll() is None:
        return  # still running (it ignored SIGKILL?): leave its files alone
    # dockerd leaves its default netns mounted; if anything stays mounted the files
    # are kept rather than deleted through a mount, and the next run's sweep retries.
    _remove_run_dir(engine.run_dir)


class _SharedEngine:
    """One engine per test process, shared by every module that imports the fixture.

    pytest makes one session fixture instance per module that imports it, so
    the fixture counts its users and stops the engine after the last one.
    """

    engine: DockerEngine | None = None
    users = 0
    failure: str | None = None

    @classmethod
    def acquire(cls) -> DockerEngine:
        if cls.failure is not None:
            raise InfraError(cls.failure)
        if cls.engine is None:
            try:
                cls.engine = start_engine()
            except InfraError as exc:
                cls.failure = str(exc)
                raise
            atexit.register(cls._at_exit)
        cls.users += 1
        return cls.engine

    @classmethod
    def release(cls) -> None:
        cls.users -= 1
        if cls.users <= 0 and cls.engine is not None:
            engine, cls.engine = cls.engine, None
            stop_engine(engine)

    @classmethod
    def _at_exit(cls) -> None:
        if cls.engine is not None:
            stop_engine(cls.engine)
            cls.engine = None


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A private, running Docker engine (see :class:`DockerEngine`)."""
    try:
        engine = _SharedEngine.acquire()
    except InfraError as exc:
        unavailable(f"Docker engine: {exc}")
    try:
        yield engine
    finally:
        _SharedEngine.release()


# --------------------------------------------------------------------------- busybox image

BUSYBOX_RECIPE = "busybox-static from apt; applet symlinks in /bin; usr-merge links; v1"


def _host_usr_merged() -> bool:
    return all(Path(p).is_symlink() for p in ("/lib", "/lib64", "/bin"))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
    tar.addfile(info)


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, 0
    tar.addfile(info)


def build_busybox_tarball(out: Path, usr_merged: bool) -> None:
    """A rootfs: /bin/busybox and its applets, empty /usr and /etc, links for the loader.

    /usr stays empty in the image: containers that run host binaries bind-mount
    the host's /usr over it (and the host's /lib, /lib64 where they are not
    links into /usr).
    """
    ensure_commands({"dpkg-deb": "dpkg"})
    with tempfile.TemporaryDirectory(prefix="iw-busybox-") as tmp:
        deb = apt_download("busybox-static", Path(tmp) / "debs")
        root = Path(tmp) / "root"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True)
        busybox = root / "bin" / "busybox"
        applets = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True)
        with tarfile.open(out, "w") as tar:
            for name in ("bin", "usr", "etc", "proc", "sys", "dev", "root", "var", "run"):
                _add_dir(tar, name)
            _add_dir(tar, "tmp", 0o1777)
            tar.add(busybox, "bin/busybox")
            for applet in sorted(set(applets.stdout.split()) - {"busybox"}):
                _add_symlink(tar, f"bin/{applet}", "busybox")
            if usr_merged:
                _add_symlink(tar, "lib", "usr/lib")
                _add_symlink(tar, "lib64", "usr/lib64")
            else:
                _add_dir(tar, "lib")
                _add_dir(tar, "lib64")
            passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
            group = b"root:x:0:\nnogroup:x:65534:\n"
            for name, data in (("etc/passwd", passwd), ("etc/group", group)):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))


def busybox_tag() -> str:
    return f"iw-busybox:{recipe_key(BUSYBOX_RECIPE, str(_host_usr_merged()))}"


def ensure_busybox_image(engine: DockerEngine) -> str:
    """The busybox image in ``engine`` (built once per machine, imported once per engine)."""
    tag = busybox_tag()
    if engine.has_image(tag):
        return tag
    merged = _host_usr_merged()
    tarball = cached_file(
        f"busybox-{tag.split(':')[1]}.tar", lambda path: build_busybox_tarball(path, merged)
    )
    return engine.import_tarball(tarball, tag, changes=["ENV PATH=/usr/local/bin:/usr/bin:/bin"])


@pytest.fixture(scope="session")
def busybox_image(docker_engine: DockerEngine) -> str:
    """Tag of a tiny local busybox image (``sh``, ``sleep``, ``wget``...) in ``docker_engine``."""
    try:
        return ensure_busybox_image(docker_engine)
    except InfraError as exc:
        unavailable(f"busybox image: {exc}")
        raise  # unreachable: unavailable() fails or skips


# --------------------------------------------------------------------------- our Python in a container


@dataclass
class PythonContainer:
    """A container running our Python code, its port published on 127.0.0.1."""

    container: Container
    host_port: int
    container_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    @property
    def id(self) -> str:
        return str(self.container.id)

    @property
    def name(self) -> str:
        return str(self.container.name)

    @property
    def host_pid(self) -> int:
        """The host pid of the container's main process (0 once it has stopped)."""
        self.container.reload()
        return int(self.container.attrs["State"]["Pid"])

    def logs(self) -> str:
        return self.container.logs().decode(errors="replace")

    def wait_http(self, path: str = "/", timeout: float = 30.0) -> httpx.Response:
        """Wait until ``GET path`` answers (any HTTP status); fail with the container's logs."""

        def answered() -> httpx.Response | None:
            self.container.reload()
            if self.container.status == "exited":
                raise AssertionError(f"container exited: {self.logs()[-2000:]}")
            try:
                return httpx.get(self.url + path, timeout=2.0)
            except httpx.TransportError:
                return None

        try:
            return wait_for(answered, timeout, f"{self.url}{path} to answer from container {self.name}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- container logs ---\n{self.logs()[-2000:]}") from None


def python_mounts(extra: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Read-only binds that let the host's interpreter, venv and source tree run in busybox."""
    paths = {"/usr", sys.base_prefix, sys.prefix, str(Path(os.path.realpath(sys.executable)).parent), str(ROOT)}
    if not _host_usr_merged():
        paths |= {p for p in ("/lib", "/lib64") if Path(p).is_dir()}
    # Drop paths already covered by a bind of one of their parents.
    kept = sorted(paths)
    kept = [p for p in kept if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in kept)]
    mounts = {p: {"bind": p, "mode": "ro"} for p in kept}
    for host, spec in (extra or {}).items():
        target, _, mode = spec.partition(":")
        mounts[host] = {"bind": target or host, "mode": mode or "rw"}
    return mounts


def run_python_container(
    engine: DockerEngine,
    image: str,
    args: Sequence[str],
    *,
    container_port: int,
    name: str | None = None,
    env: dict[str, str] | None = None,
    mounts: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    host_network: bool = False,
    attempts: int = 3,
) -> PythonContainer:
    """Start ``python ARGS`` in a container of ``image``; ``container_port`` published on 127.0.0.1.

    ``mounts`` maps host paths to ``"container_path[:ro|rw]"`` (writable by default).
    The host port is chosen free here (the engine's own allocator does not know
    about other engines on this machine) and retried if someone takes it first.
    With ``host_network`` the container shares the host's network (``--network
    host``, as many run Ollama): nothing is published, the server itself listens
    on the host's ``container_port``.
    """
    environment = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "HOME": "/tmp", **(env or {})}
    if host_network:
        networking: dict[str, object] = {"network_mode": "host"}
    last: Exception | None = None
    for _ in range(attempts):
        host_port = container_port if host_network else free_port()
        if not host_network:
            networking = {"network": engine.network, "ports": {f"{container_port}/tcp": ("127.0.0.1", host_port)}}
        try:
            container = engine.client.containers.run(
                image,
                [sys.executable, *args],
                name=name,
                detach=True,
                **networking,
                volumes=python_mounts(mounts),
                environment=environment,
                working_dir=str(ROOT),
                labels={LABEL: "1", **(labels or {})},
            )
        except docker.errors.APIError as exc:
            last = exc
            if "already" in str(exc) and ("allocated" in str(exc) or "in use" in str(exc)):
                with contextlib.suppress(Exception):
                    if name:
                        engine.client.containers.get(name).remove(force=True)
                continue
            raise
        return PythonContainer(container, host_port, container_port)
    raise InfraError(f"could not publish a free port after {attempts} attempts: {last}")


@pytest.fixture
def python_containers(docker_engine: DockerEngine, busybox_image: str) -> Iterator[Callable[..., PythonContainer]]:
    """A factory ``start(args, container_port=..., image=None, **kw) -> PythonContainer`` (see
    :func:`run_python_container` for the keywords); every container is removed after the test."""
    started: list[PythonContainer] = []

    def start(args: Sequence[str], *, image: str | None = None, **kwargs: object) -> PythonContainer:
        running = run_python_container(docker_engine, image or busybox_image, args, **kwargs)  # type: ignore[arg-type]
        started.append(running)
        return running

    yield start
    for running in started:
        with contextlib.suppress(docker.errors.NotFound):
            running.container.remove(force=True)

