"""A real systemd, as PID 1 of a Debian 12 container in the private Docker engine.

``systemd_image`` (session) is a ``debootstrap --variant=minbase`` rootfs of bookworm
with systemd, dbus and python3 (+ venv), built once per machine (about a minute or
two; the tarball is cached under /tmp/iw-test-cache keyed by the recipe) and
imported once per engine. ``systemd_container`` (function) boots a fresh container
of it with systemd as PID 1, waits until ``systemctl is-system-running`` says
running (or degraded), and removes it after the test.

Usage::

    from tests.infra.docker_engine import docker_engine  # noqa: F401
    from tests.infra.systemd_container import systemd_image, systemd_container  # noqa: F401

    @pytest.mark.slow
    def test_x(systemd_container):
        systemd_container.exec(["systemd-run", "--unit=x", "sleep", "60"])
        assert systemd_container.show("x.service", "ActiveState")["ActiveState"] == "active"
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.infra.docker_engine import LABEL, DockerEngine, docker
from tests.infra.system import CACHE_DIR, InfraError, cached_file, ensure_commands, recipe_key, run
from tests.support import unavailable, wait_for

SUITE = "bookworm"
INCLUDE = ("systemd", "systemd-sysv", "dbus", "procps", "python3", "python3-venv")
# procps: /bin/kill (the unit's ExecReload), ps; on every real Debian host, not in minbase.
# Trimmed from the rootfs after debootstrap: nothing a test needs, a third of its size.
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/locale", "usr/share/man")
RECIPE = f"debootstrap --variant=minbase --include={','.join(INCLUDE)} {SUITE}; trim {' '.join(TRIM)}; v1"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BOOT_TIMEOUT = 90.0


@dataclass
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class SystemdContainer:
    """A running container whose PID 1 is systemd: exec commands, copy files in, ask systemctl."""

    def __init__(self, engine: DockerEngine, container: docker.models.containers.Container):
        self.engine = engine
        self.container = container
        self.boot_state = ""

    @property
    def id(self) -> str:
        return str(self.container.id)

    def exec(
        self,
        cmd: Sequence[str] | str,
        *,
        timeout: float = 120,
        check: bool = True,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
    ) -> ExecResult:
        """Run ``cmd`` (a list, or a string for ``/bin/sh -c``) in the container.

        The container's ``timeout`` command bounds it; ``check`` raises with its
        output when it exits non-zero.
        """
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        bounded = ["timeout", "--kill-after=5", f"{timeout:g}", *argv]
        code, (out, err) = self.container.exec_run(bounded, demux=True, environment=env, workdir=workdir)
        result = ExecResult(int(code), (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace"))
        if check and result.exit_code != 0:
            shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
            if result.exit_code == 124:
                shown += f" (killed after {timeout:g}s)"
            raise AssertionError(
                f"in container: {shown} exited {result.exit_code}\n"
                f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
            )
        return result

    def copy_in(self, src: Path, dest_dir: str, *, name: str | None = None) -> str:
        """Copy a host file or directory tree into ``dest_dir`` (created); returns its path there."""
        src = Path(src)
        arcname = name or src.name
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(
                src,
                arcname=arcname,
                filter=lambda info: None if _ignored(info.name) else info,
            )
        self.exec(["mkdir", "-p", dest_dir])
        if not self.container.put_archive(dest_dir, buffer.getvalue()):
            raise AssertionError(f"copying {src} into {dest_dir} failed")
        return f"{dest_dir.rstrip('/')}/{arcname}"

    def write_file(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        data = content.encode() if isinstance(content, str) else content
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(os.path.basename(path))
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        directory = os.path.dirname(path) or "/"
        self.exec(["mkdir", "-p", directory])
        if not self.container.put_archive(directory, buffer.getvalue()):
            raise AssertionError(f"writing {path} failed")

    def read_file(self, path: str) -> str:
        return self.exec(["cat", path]).stdout

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show UNIT -p ...`` as a dict (every property if none named)."""
        cmd = ["systemctl", "show", unit]
        for prop in properties:
            cmd += ["-p", prop]
        out = self.exec(cmd).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, lines: int = 100) -> str:
        return self.exec(["journalctl", "-u", unit, "-n", str(lines), "--no-pager"], check=False).output

    def wait_running(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait until systemd finished booting; returns ``running`` or ``degraded``."""

        def booted() -> str | None:
            self.container.reload()
            if self.container.status != "running":
                raise AssertionError(f"container stopped: {self.container.logs()[-2000:]!r}")
            state = self.exec(["systemctl", "is-system-running"], check=False, timeout=10).stdout.strip()
            return state if state in ("running", "degraded") else None

        self.boot_state = wait_for(booted, timeout, "systemd in the container to finish booting", interval=0.2)
        return self.boot_state


def _ignored(name: str) -> bool:
    """Caches, VCS data and build leftovers of a source tree: never copied into a container."""
    parts = Path(name).parts
    if set(parts) & {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}:
        return True
    top = parts[1] if len(parts) > 1 else ""
    return top in ("build", "dist") or top.endswith(".egg-info")


# --------------------------------------------------------------------------- image


def debian_mirror() -> str:
    """The Debian mirror this host's apt uses ($IW_DEBIAN_MIRROR overrides)."""
    if os.environ.get("IW_DEBIAN_MIRROR"):
        return os.environ["IW_DEBIAN_MIRROR"]
    candidates: list[tuple[str, str]] = []  # (uri, suites)
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        with contextlib.suppress(OSError):
            for stanza in re.split(r"\n\s*\n", path.read_text()):
                lines = [line for line in stanza.splitlines() if not line.startswith("#")]
                fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
                for uri in fields.get("uris", "").split():
                    candidates.append((uri, fields.get("suites", "")))
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for path in lists:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = re.sub(r"\[.*?\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb":
                    candidates.append((words[1], words[2]))
    for uri, suites in candidates:
        if SUITE in suites.split() and "security" not in uri:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def build_systemd_tarball(out: Path) -> None:
    """debootstrap a minimal bookworm with systemd into a temp dir and tar it to ``out``."""
    ensure_commands({"debootstrap": "debootstrap"})
    work = Path(tempfile.mkdtemp(prefix="iw-rootfs-", dir=CACHE_DIR))
    try:
        rootfs = work / "rootfs"
        run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE, str(rootfs), debian_mirror()],
            timeout=900,
            what="debootstrap",
        )
        for rel in TRIM:
            target = rootfs / rel
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        # No machine-id: systemd makes one at boot (an image must not share one).
        (rootfs / "etc" / "machine-id").write_text("")
        run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(out), "."], timeout=300, what="tar")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def systemd_tag() -> str:
    return f"iw-systemd:{recipe_key(RECIPE)}"


def ensure_systemd_image(engine: DockerEngine) -> str:
    tag = systemd_tag()
    if engine.has_image(tag):
        return tag
    tarball = cached_file(f"systemd-{SUITE}-{tag.split(':')[1]}.tar", build_systemd_tarball)
    return engine.import_tarball(
        tarball,
        tag,
        changes=[
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV container=docker",
            'CMD ["/lib/systemd/systemd"]',
        ],
    )


@pytest.fixture(scope="session")
def systemd_image(docker_engine: DockerEngine) -> str:
    """Tag of the Debian 12 + systemd image in ``docker_engine``."""
    try:
        return ensure_systemd_image(docker_engine)
    except InfraError as exc:
        unavailable(f"systemd image: {exc}")
        raise  # unreachable


def start_systemd_container(engine: DockerEngine, image: str) -> SystemdContainer:
    """Boot ``image`` with systemd as PID 1, the way that works on these hosts (see the notes)."""
    container = engine.client.containers.run(
        image,
        # systemd makes every mount shared at boot on a host, but not in a container
        # (it leaves that to the container manager, and Docker's are private).
        # Units with LoadCredential= (and other per-unit mounts made in a child
        # namespace) need it: without it their credentials directory stays empty.
        ["/bin/sh", "-c", "mount --make-rshared / && exec /lib/systemd/systemd"],
        detach=True,
        cap_add=["SYS_ADMIN"],
        security_opt=["seccomp=unconfined"],
        volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
        tmpfs={"/run": "", "/run/lock": ""},
        # NVIDIA's character devices (major 195: /dev/nvidia<N>, /dev/nvidiactl) may be
        # opened, as on a GPU host: a unit's device policy can then be tested for real.
        device_cgroup_rules=["c 195:* rwm"],
        environment={"container": "docker"},
        network=engine.network,
        labels={LABEL: "1"},
    )
    booted = SystemdContainer(engine, container)
    try:
        booted.wait_running()
    except AssertionError:
        logs = container.logs()[-3000:].decode(errors="replace")
        container.remove(force=True)
        raise InfraError(f"systemd did not boot in the container:\n{logs}") from None
    return booted


@pytest.fixture
def systemd_container(docker_engine: DockerEngine, systemd_image: str) -> Iterator[SystemdContainer]:
    """A freshly booted systemd container (removed after the test)."""
    try:
        booted = start_systemd_container(docker_engine, systemd_image)
    except (InfraError, docker.errors.DockerException) as exc:
        unavailable(f"systemd container: {exc}")
    try:
        yield booted
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            booted.container.remove(force=True)

