"""Where a process runs, read from its ``/proc/<pid>/cgroup`` text (pure).

Docker puts a container's processes in a cgroup named after the container id:
``/docker/<id>`` with the cgroupfs driver (cgroup v1 and v2), or
``/system.slice/docker-<id>.scope`` with the systemd driver. systemd puts a
service's processes in ``.../<name>.service``. Both survive restarts of the
watchdog and need no privilege to read.
"""

from __future__ import annotations

import re

_CONTAINER = re.compile(r"(?:/docker/|/docker-|/libpod-|/cri-containerd-)([0-9a-f]{64})(?:\.scope)?(?:/|$)")
# A unit of the system manager; user@UID.service is a user's manager, not a server.
_SERVICE = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.service$")
# The container engines' own units: a process there (docker-proxy, containerd-shim)
# belongs to the engine, not to a server unit.
ENGINE_UNITS = frozenset({"docker.service", "containerd.service", "podman.service"})


def _paths(cgroup_text: str) -> list[str]:
    """The cgroup paths of the unified hierarchy and of name=systemd first, then the rest."""
    preferred, others = [], []
    for line in cgroup_text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" or controllers == "name=systemd":
            preferred.append(path)
        else:
            others.append(path)
    return preferred + others


def container_id(cgroup_text: str) -> str:
    """The full id of the container a process runs in ("" if none)."""
    for path in _paths(cgroup_text):
        match = _CONTAINER.search(path)
        if match:
            return match.group(1)
    return ""


def service_unit(cgroup_text: str) -> str:
    """The system service a process runs in ("" for none, a user's session, or a container engine)."""
    for path in _paths(cgroup_text):
        parts = [p for p in path.split("/") if p]
        if any(p.startswith("user@") or p == "user.slice" for p in parts):
            continue
        services = [p for p in parts if _SERVICE.match(p)]
        if services:
            unit = services[-1]
            return "" if unit in ENGINE_UNITS else unit
    return ""
