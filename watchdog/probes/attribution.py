"""Which processes belong to which supervised server.

Everything the watchdog may later do to a process (kill an orphaned runner
holding VRAM, restart a server) starts here, so the rules are conservative:
a process belongs to a target only by positive evidence, else it belongs to
no one (``None``) and is never touched.

Evidence, per target, strongest first:

1. **container** (``container = "..."``): the process's ``/proc/<pid>/cgroup``
   names the container's id (``/docker/<id>``, ``docker-<id>.scope``), or its
   ancestors include the container's main process (from the Docker API).
2. **unit** (``unit = "..."``): its cgroup path has the unit as a component
   (``/system.slice/ollama.service``).
3. **process tree**: the process is the target's main process or a
   descendant of it. The main process is found by ``process_match`` (a
   regular expression on the command line) or as the process listening on the
   port of the target's URL (local URLs only). Ollama's runner children are
   descendants of ``ollama serve``, so they belong to it.

A process once attributed keeps its owner while it lives (keyed by pid and
start time, so a reused pid is not confused): an orphaned runner whose parent
died still belongs to the server that started it.

All methods here are blocking (``/proc``, psutil, Docker): call them from a
probe's worker thread.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from watchdog.config.model import TargetSettings
from watchdog.logs import LogOnce
from watchdog.probes.dockerapi import DockerAccess, DockerUnavailable

_HEX_ID = re.compile(r"^[0-9a-f]{12,64}$")


@dataclass(frozen=True, slots=True)
class Located:
    """A target's main process, as far as it can be found.

    ``observable`` is False when this host has no way to see the target's
    processes (a remote URL and no container, unit or process_match): then
    there is nothing to report, which is not the same as "gone".
    ``pid`` None with ``observable`` True means the process is gone (or not
    started). ``state`` carries what the container engine or systemd says.
    """

    pid: int | None
    how: str
    observable: bool = True
    state: str | None = None
    detail: str = ""


@dataclass
class _TargetView:
    settings: TargetSettings
    main_pid: int | None = None
    main_ctime: float | None = None
    container_id: str | None = None
    container_pid: int | None = None
    gpus: set[int] = field(default_factory=set)


LISTENING_CACHE_S = 1.0

def unit_name(unit: str) -> str:
    """``ollama`` -> ``ollama.service``; names with a type suffix are kept."""
    return unit if "." in unit else f"{unit}.service"


def cgroup_names_container(cgroup_text: str, container_id: str) -> bool:
    """True if a /proc/<pid>/cgroup text places the process in that container."""
    return bool(container_id) and container_id in cgroup_text


def cgroup_names_unit(cgroup_text: str, unit: str) -> bool:
    """True if some cgroup path of the process has the unit as one of its components."""
    unit = unit_name(unit)
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        if unit in path.split("/"):
            return True
    return False


def is_local_host(host: str | None) -> bool:
    """Loopback, unspecified, or one of this machine's own addresses."""
    if not host:
        return False
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == os.uname().nodename
    if address.is_loopback or address.is_unspecified:
        return True
    try:
        own = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    except OSError:
        return False
    return str(address) in own


def url_port(url: str) -> int | None:
    parts = urlsplit(url)
    if parts.port is not None:
        return parts.port
    return {"http": 80, "https": 443}.get(parts.scheme)


class Attributor:
    """Finds each target's processes and tells, for any pid, which target owns it."""

    def __init__(
        self,
        targets: Sequence[TargetSettings],
        *,
        docker: DockerAccess | None = None,
        proc_root: str = "/proc",
        systemctl: Sequence[str] = ("systemctl",),
        rescan_s: float = 5.0,
    ) -> None:
        self._views = {t.name: _TargetView(t) for t in targets if t.enabled}
        self.docker = docker
        self.proc_root = Path(proc_root)
        self.systemctl = list(systemctl)
        self.rescan_s = rescan_s
        self._listening_cache: tuple[float, dict[int, int]] | None = None
        self._sticky: dict[tuple[int, float], str] = {}
        self._last_scan: dict[str, float] = {}
        self._lock = threading.RLock()
        self._log = LogOnce("attribution")
        self._own_pid = os.getpid()

    @property
    def targets(self) -> list[str]:
        return list(self._views)

    # --- GPUs -------------------------------------------------------------------------------

    def gpus_of(self, target: str) -> list[int]:
        """The GPUs the target's processes have been seen on (for ``gpus = "auto"``), or the
        configured list."""
        view = self._views.get(target)
        if view is None:
            return []
        if view.settings.gpus != "auto":
            return list(view.settings.gpus)
        with self._lock:
            return sorted(view.gpus)

    # --- ownership --------------------------------------------------------------------------

    def owners(self, index: int, pids: list[int]) -> dict[int, str | None]:
        """{pid: target or None} for the processes on GPU ``index``; remembers GPU use."""
        result: dict[int, str | None] = {}
        for pid in pids:
            owner = self.owner(pid)
            result[pid] = owner
            if owner is not None:
                with self._lock:
                    self._views[owner].gpus.add(index)
        return result

    def owner(self, pid: int) -> str | None:
        """The target a process belongs to, or None."""
        ctime = _create_time(pid)
        if ctime is None:
            return None
        key = (pid, ctime)
        with self._lock:
            sticky = self._sticky.get(key)
        if sticky is not None and sticky in self._views:
            return sticky
        owner = self._find_owner(pid)
        if owner is not None:
            with self._lock:
                self._sticky[key] = owner
                if len(self._sticky) > 4096:
                    self._prune()
        return owner

    def _find_owner(self, pid: int) -> str | None:
        cgroup = self._read_cgroup(pid)
        views = list(self._views.values())
        for view in views:
            settings = view.settings
            if settings.container:
                cid = self._known_container_id(view)
                if cid and cgroup_names_container(cgroup, cid):
                    return settings.name
            elif settings.unit and cgroup_names_unit(cgroup, settings.unit):
                return settings.name
        ancestry = _ancestry(pid)
        for view in views:
            settings = view.settings
            root = view.container_pid if settings.container else None
            if root is None and not settings.container and not settings.unit:
                root = self.locate(settings.name).pid
            if root is not None and root in ancestry:
                return settings.name
        return None

    def _prune(self) -> None:
        for key in list(self._sticky):
            if _create_time(key[0]) != key[1]:
                del self._sticky[key]

    def _read_cgroup(self, pid: int) -> str:
        try:
            return (self.proc_root / str(pid) / "cgroup").read_text(errors="replace")
        except OSError:
            return ""

    # --- the main process -------------------------------------------------------------------

    def locate(self, target: str) -> Located:
        """The target's main process now."""
        view = self._views[target]
        settings = view.settings
        if settings.container:
            return self._locate_container(view)
        if settings.unit:
            return self._locate_unit(view)
        if settings.process_match:
            return self._locate_tree(view, "process_match", self._match_process)
        port = url_port(settings.url)
        if port is not None and is_local_host(urlsplit(settings.url).hostname):
            return self._locate_tree(view, "port", lambda v: self._listener(port))
        return Located(None, "none", observable=False,
                       detail="remote URL without container, unit or process_match")

    def tree(self, target: str) -> list[int]:
        """The main process and all its descendants (empty when not located)."""
        located = self.locate(target)
        if located.pid is None:
            return []
        try:
            main = psutil.Process(located.pid)
            return [main.pid] + [c.pid for c in main.children(recursive=True)]
        except psutil.Error:
            return []

    def _locate_container(self, view: _TargetView) -> Located:
        name = view.settings.container
        if self.docker is None:
            return Located(None, "container", observable=False, detail="no Docker access configured")
        try:
            info = self.docker.container(name)
        except DockerUnavailable as exc:
            return Located(None, "container", observable=False, detail=str(exc))
        if info is None:
            view.container_pid = None
            return Located(None, "container", state="missing", detail=f"no container {name!r}")
        view.container_id = info.id
        view.container_pid = info.pid if info.status in ("running", "paused", "restarting") else None
        return Located(view.container_pid, "container", state=info.status)

    def _known_container_id(self, view: _TargetView) -> str | None:
        """The container id as last located, without asking Docker: ownership is asked from
        the GPU probe's thread, which must not wait on a slow Docker engine (that would read
        as a GPU that stopped answering)."""
        if view.container_id is None and _HEX_ID.match(view.settings.container):
            return view.settings.container
        return view.container_id

    def refresh(self) -> None:
        """Locate every target now (blocking: Docker, systemctl, process scans).

        The process probe does this every round; call it once before the first
        GPU round so that containers' processes are attributed from the start.
        """
        for name in self._views:
            self.locate(name)

    def _locate_unit(self, view: _TargetView) -> Located:
        unit = unit_name(view.settings.unit)
        props = self._systemctl_show(unit)
        if props is not None:
            pid = int(props.get("MainPID", "0") or 0) or None
            state = props.get("ActiveState")
            if pid is None and state == "active":
                pid = self._unit_root(unit)  # Type=forking without PIDFile, or a scope
            return Located(pid, "unit", state=state, detail=props.get("SubState", ""))
        return Located(self._unit_root(unit), "unit", detail="systemctl unavailable: found through cgroups")

    def _systemctl_show(self, unit: str) -> dict[str, str] | None:
        try:
            out = subprocess.run(
                [*self.systemctl, "show", unit, "-p", "MainPID", "-p", "ActiveState", "-p", "SubState"],
                capture_output=True, text=True, timeout=3.0, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._log.problem("systemctl", f"systemctl unavailable ({type(exc).__name__}); using cgroups",
                              level="INFO")
            return None
        if out.returncode != 0:
            self._log.problem("systemctl", f"systemctl show failed: {out.stderr.strip()[:160]}", level="INFO")
            return None
        props = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        return props

    def _unit_root(self, unit: str) -> int | None:
        members = {}
        for proc in psutil.process_iter(["pid", "ppid"]):
            if cgroup_names_unit(self._read_cgroup(proc.pid), unit):
                members[proc.pid] = proc.info["ppid"]
        roots = sorted(pid for pid, ppid in members.items() if ppid not in members)
        return roots[0] if roots else None

    def _locate_tree(self, view: _TargetView, how: str, find: Callable[[_TargetView], int | None]) -> Located:
        # Keep the main process while it lives and still qualifies; search again at most
        # every rescan_s (a full process scan costs milliseconds).
        if view.main_pid is not None and _create_time(view.main_pid) == view.main_ctime:
            return Located(view.main_pid, how)
        now = time.monotonic()
        if now - self._last_scan.get(view.settings.name, -1e9) < self.rescan_s and view.main_pid is None:
            return Located(None, how)
        self._last_scan[view.settings.name] = now
        pid = find(view)
        view.main_pid, view.main_ctime = pid, _create_time(pid) if pid is not None else None
        return Located(pid, how)

    def _match_process(self, view: _TargetView) -> int | None:
        pattern = re.compile(view.settings.process_match)
        excluded = self._own_family()
        matches: dict[int, tuple[int, float]] = {}
        for proc in psutil.process_iter(["pid", "ppid", "cmdline", "create_time"]):
            info = proc.info
            if info["pid"] in excluded or not info["cmdline"]:
                continue
            if pattern.search(" ".join(info["cmdline"])):
                matches[info["pid"]] = (info["ppid"], info["create_time"] or 0.0)
        roots = [(ctime, pid) for pid, (ppid, ctime) in matches.items() if ppid not in matches]
        return min(roots)[1] if roots else None

    def _own_family(self) -> set[int]:
        """The watchdog and its ancestors (a shell, a test runner) never match process_match."""
        try:
            me = psutil.Process(self._own_pid)
            return {self._own_pid, *(p.pid for p in me.parents())}
        except psutil.Error:
            return {self._own_pid}

    def _listener(self, port: int) -> int | None:
        try:
            listening = self._listening()
        except (psutil.AccessDenied, OSError) as exc:
            self._log.problem(f"port{port}", f"cannot list listening sockets: {exc}")
            return None
        pid = listening.get(port)
        if pid is not None and _is_docker_proxy(pid):
            self._log.problem(
                f"proxy{port}",
                f"port {port} is published by Docker (docker-proxy): set container = ... for this target",
            )
            return None
        return pid

    def _listening(self) -> dict[int, int]:
        """{port: pid} of the host's listening TCP sockets, read at most once a second: listing
        them reads every process's descriptors, and at start-up every target found by its port
        asked in turn (32 targets: 4 s in the first GPU round, issue 15)."""
        cached = self._listening_cache
        now = time.monotonic()
        if cached is not None and now - cached[0] < LISTENING_CACHE_S:
            return cached[1]
        table: dict[int, int] = {}
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.pid:
                table.setdefault(conn.laddr.port, conn.pid)
        self._listening_cache = (now, table)
        return table


def _ancestry(pid: int) -> set[int]:
    try:
        proc = psutil.Process(pid)
        return {pid, *(p.pid for p in proc.parents())}
    except psutil.Error:
        return {pid}


def _create_time(pid: int | None) -> float | None:
    """When ``pid`` started, in clock ticks after boot (field 22 of /proc/PID/stat): with the pid,
    the identity of a process (a reused pid starts later). Read directly: ``psutil.Process(pid)
    .create_time()`` reads the same file and /proc/stat besides, for every process on every GPU
    in every sampling round (issue 15)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return float(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _is_docker_proxy(pid: int) -> bool:
    try:
        return psutil.Process(pid).name() == "docker-proxy"
    except psutil.Error:
        return False
