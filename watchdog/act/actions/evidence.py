"""Per-pid proof that a process belongs to a target, checked right before any signal.

Attribution (watchdog/probes/attribution.py) is generous on purpose: it only
labels GPU memory. A kill needs more (review finding 18): a process is signalled
only with live evidence about *that* pid, strongest first:

- **container-cgroup**: the target has ``container``; the pid's own
  ``/proc/<pid>/cgroup`` names the container's full id, as Docker says it is now;
- **unit-cgroup**: the target has ``unit``; the pid's cgroup path has the unit as
  a component;
- **listener-tree**: neither; the pid is a descendant of the process that
  listens on the target's (local) port *now*, that listener is the process the
  watchdog has been watching as the target's main process, it has answered the
  target's API since it started, and (if set) its command line matches
  ``process_match``. A wrong ``process_match`` or a port taken over by another
  program fails one of these, and nothing is signalled.

Never: pid 1, the watchdog and its ancestors, the main process itself (a main
process is restarted, not killed), a pid younger than its proof (reused).
Blocking (psutil, /proc): run in a thread.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from watchdog.config.model import TargetSettings
from watchdog.probes.attribution import (
    cgroup_names_container,
    cgroup_names_unit,
    is_local_host,
    url_port,
)


@dataclass(frozen=True, slots=True)
class Proof:
    pid: int
    create_time: float
    how: str  # container-cgroup, unit-cgroup, listener-tree
    detail: str


@dataclass(frozen=True, slots=True)
class Refusal:
    pid: int
    reason: str


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _protected() -> set[int]:
    me = os.getpid()
    try:
        return {1, me, *(p.pid for p in psutil.Process(me).parents())}
    except psutil.Error:
        return {1, me}


def listener_of(port: int) -> int | None:
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    except (psutil.Error, OSError):
        return None
    return None


def prove(
    pid: int,
    settings: TargetSettings,
    *,
    main_pid: int | None,
    pid_served: bool,
    container_id: str | None = None,
    proc_root: str = "/proc",
) -> Proof | Refusal:
    """Proof that ``pid`` belongs to the target, or why not."""
    if pid in _protected():
        return Refusal(pid, "the watchdog itself, one of its ancestors, or init")
    ctime = _create_time(pid)
    if ctime is None:
        return Refusal(pid, "no such process")
    try:
        cgroup = (Path(proc_root) / str(pid) / "cgroup").read_text(errors="replace")
    except OSError:
        cgroup = ""
    if settings.container:
        if not container_id:
            return Refusal(pid, f"container {settings.container!r}: its id is unknown (Docker not reachable)")
        if cgroup_names_container(cgroup, container_id):
            return Proof(pid, ctime, "container-cgroup", f"cgroup names container {container_id[:12]}")
        return Refusal(pid, f"its cgroup does not name container {container_id[:12]}")
    if settings.unit:
        if cgroup_names_unit(cgroup, settings.unit):
            return Proof(pid, ctime, "unit-cgroup", f"cgroup names unit {settings.unit}")
        return Refusal(pid, f"its cgroup does not name unit {settings.unit}")
    return _prove_tree(pid, ctime, settings, main_pid=main_pid, pid_served=pid_served)


def _prove_tree(pid: int, ctime: float, settings: TargetSettings, *, main_pid: int | None,
                pid_served: bool) -> Proof | Refusal:
    port = url_port(settings.url)
    if port is None or not is_local_host(urlsplit(settings.url).hostname):
        return Refusal(pid, "the target's URL is not on this host: no listener to prove ownership by")
    listener = listener_of(port)
    if listener is None:
        return Refusal(pid, f"nothing listens on port {port}")
    if main_pid is None or listener != main_pid:
        return Refusal(pid, f"the listener on port {port} (pid {listener}) is not the process watched as the "
                            f"target's main process (pid {main_pid}): misconfigured process_match, or the port "
                            "was taken over")
    if not pid_served:
        return Refusal(pid, f"the listener on port {port} (pid {listener}) has not answered the target's API")
    if settings.process_match:
        try:
            cmdline = " ".join(psutil.Process(listener).cmdline())
        except psutil.Error:
            cmdline = ""
        if not re.search(settings.process_match, cmdline):
            return Refusal(pid, f"the listener (pid {listener}) does not match process_match")
    if pid == listener:
        return Refusal(pid, "the main process itself (restart it instead)")
    try:
        ancestors = {p.pid for p in psutil.Process(pid).parents()}
    except psutil.Error:
        return Refusal(pid, "no such process")
    if listener not in ancestors:
        return Refusal(pid, f"not a descendant of the listener on port {port} (pid {listener})")
    listener_ctime = _create_time(listener)
    if listener_ctime is None or ctime < listener_ctime:
        return Refusal(pid, "older than the listener it descends from (a reused pid)")
    return Proof(pid, ctime, "listener-tree", f"descendant of pid {listener}, the listener on port {port}")
