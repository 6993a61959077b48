"""The I/O of ``watchdogctl discover``: ask ports, read /proc, ask Docker.

Every step is bounded and read-only: short HTTP deadlines (a hung server costs
one timeout, then the port is reported as not answering), bodies read up to a
limit, and nothing is ever sent that changes a server's state (only GETs of
status endpoints).
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from watchdog.discover.found import (
    Answer,
    Discovery,
    Identity,
    KnownContainer,
    Placement,
    Server,
    Silent,
)
from watchdog.discover.identify import (
    DEFAULT_PORT,
    PROBE_PATHS,
    WELL_KNOWN_PORTS,
    describe_non_server,
    identify,
    image_kind,
)
from watchdog.discover.placement import container_id, service_unit

MAX_BODY = 1 << 20  # status answers are small; a huge one is read no further than this
LOOPBACK_OR_ANY = {"", "0.0.0.0", "127.0.0.1", "::", "::1"}


def discover(
    ports: Iterable[int] = (),
    *,
    host: str = "127.0.0.1",
    docker_host: str | None = None,
    use_docker: bool = True,
    timeout: float = 2.0,
) -> Discovery:
    """Find inference servers on this host: well-known ports, ``ports``, and known containers."""
    found = Discovery()
    containers = _known_containers(docker_host, found.notes) if use_docker else []
    found.containers = containers
    candidates = dict.fromkeys([*WELL_KNOWN_PORTS, *ports])
    for container in containers:
        # A known image published on another host port (-p 9000:8000) is probed there too.
        for inside, outside in sorted(container.published.items()):
            if inside == DEFAULT_PORT.get(container.kind):
                candidates.setdefault(outside)
    listeners = _listeners(host)
    if listeners is None:
        found.notes.append("cannot list listening sockets here: processes not identified (run as root)")
        listeners = {}
    own_container = container_id(_read_cgroup(os.getpid()))
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda port: (port, _ask(host, port, timeout)), candidates))
    for port, answers in results:
        try:
            identity = identify(answers)
        except Exception as exc:  # noqa: BLE001 - one strange server must not cost the other results
            found.silent.append(Silent(port, f"answers that cannot be understood ({type(exc).__name__})"))
            continue
        publisher = next((c for c in containers if port in c.published.values()), None)
        if identity is None and publisher is not None and all(a.status is None for a in answers.values()):
            # A known server image publishes this port but does not answer (starting, or
            # hung: the very case to watch). Its image says what it is.
            reason = describe_non_server(answers)
            identity = Identity(publisher.kind, evidence=f"image {publisher.image}; {reason}", answering=False)
        if identity is None:
            found.silent.append(Silent(port, describe_non_server(answers)))
            continue
        placement = _place(port, listeners.get(port), containers, own_container)
        found.servers.append(Server(port, f"http://{_url_host(host)}:{port}", identity, placement))
    if any(s.placement.pid is None and not s.placement.container_id for s in found.servers) and os.geteuid() != 0:
        found.notes.append("not root: the processes of other users' servers cannot be identified")
    return found


# --------------------------------------------------------------------------- HTTP


def _ask(host: str, port: int, timeout: float) -> dict[str, Answer]:
    """GET each probe path; stop early when nothing listens or the server does not answer."""
    answers: dict[str, Answer] = {}
    limits = httpx.Timeout(timeout, connect=min(timeout, 1.0))
    # identity: no compressed bodies, so MAX_BODY bounds memory (a gzip bomb cannot inflate here).
    with httpx.Client(timeout=limits, follow_redirects=False, trust_env=False,
                      headers={"Accept-Encoding": "identity"}) as client:
        for path in PROBE_PATHS:
            answer = _get(client, f"http://{_url_host(host)}:{port}{path}", deadline=timeout * 2)
            answers[path] = answer
            if answer.status is None:
                break  # refused or hung: asking the other paths would only cost more timeouts
    return answers


def _get(client: httpx.Client, url: str, deadline: float = 4.0) -> Answer:
    """One GET, its body cut at MAX_BODY and its time at ``deadline`` (a server trickling
    bytes resets httpx's read timeout with every byte)."""
    ends = time.monotonic() + deadline
    try:
        with client.stream("GET", url) as response:
            body = bytearray()
            for chunk in response.iter_raw():
                body += chunk
                if len(body) >= MAX_BODY:
                    break
                if time.monotonic() > ends:
                    return Answer(None, error="connected, but the answer trickles in too slowly (hung?)")
            return Answer(response.status_code, bytes(body[:MAX_BODY]).decode("utf-8", "replace"))
    except httpx.ConnectError:
        return Answer(None, error="nothing listening")
    except httpx.TimeoutException:
        return Answer(None, error="connected, but no answer in time (hung?)")
    except httpx.HTTPError as exc:
        return Answer(None, error=f"not HTTP ({type(exc).__name__})")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------- processes


def _listeners(host: str) -> dict[int, int | None] | None:
    """{port: pid} of TCP sockets listening where ``host`` reaches them; None if not readable."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    ports: dict[int, int | None] = {}
    for conn in connections:
        reachable = conn.laddr and (conn.laddr.ip in LOOPBACK_OR_ANY or conn.laddr.ip == host)
        listening = conn.status == psutil.CONN_LISTEN and reachable
        if listening and ports.get(conn.laddr.port) is None:
            ports[conn.laddr.port] = conn.pid
    return ports


def _read_cgroup(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""


def _short(cmdline: list[str], limit: int = 72) -> str:
    text = shlex.join(cmdline)
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _command(pid: int) -> tuple[str, list[str]]:
    try:
        process = psutil.Process(pid)
        return process.name(), process.cmdline()
    except (psutil.Error, OSError):
        return "", []


def _place(
    port: int, pid: int | None, containers: list[KnownContainer], own_container: str
) -> Placement:
    """Where the server on ``port`` runs: its listener's cgroup, else a container publishing the port."""
    name, cmdline = _command(pid) if pid else ("", [])
    process = _short(cmdline) if cmdline else name
    published = next((c for c in containers if port in c.published.values()), None)
    if pid and name != "docker-proxy":
        cgroup = _read_cgroup(pid)
        cid = container_id(cgroup)
        if cid and cid != own_container:
            known = next((c for c in containers if c.id == cid), None)
            return Placement(
                pid, process, cid, known.name if known else "", known.image if known else "",
                via="cgroup", container_state=known.state if known else "",
            )
        unit = service_unit(cgroup)
        if unit:
            return Placement(pid, process, unit=unit, via="cgroup")
    if published is not None:
        # Published with -p: the host's listener is docker-proxy (or an iptables rule).
        return Placement(
            published.pid or None, f"container {published.name}", published.id, published.name, published.image,
            via=f"port {port} published by the container", container_state=published.state,
        )
    if name == "docker-proxy":
        return Placement(pid, process, via="docker-proxy: a container's published port (Docker not reachable to name it)")
    return Placement(pid, process, via="listening socket" if pid else "")


# --------------------------------------------------------------------------- Docker


def _known_containers(docker_host: str | None, notes: list[str]) -> list[KnownContainer]:
    """Running containers of known server images; a note (never an error) if Docker is not there."""
    base_url = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if base_url.startswith("unix://") and not Path(base_url[len("unix://"):]).exists():
        notes.append(f"Docker: no socket at {base_url[len('unix://'):]} (containers not listed)")
        return []
    try:
        import docker
        from docker.errors import DockerException

        client = docker.DockerClient(base_url=base_url, timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure here only means "no Docker"
        notes.append(f"Docker: not reachable at {base_url} ({exc})")
        return []
    try:
        found: list[KnownContainer] = []
        # Not only "running": a paused container is a hung server, a restarting one a crashing one.
        for summary in client.api.containers():
            image = str(summary.get("Image", ""))
            kind = image_kind(image)
            if kind is None:
                continue
            info = client.api.inspect_container(summary["Id"])
            found.append(
                KnownContainer(
                    id=summary["Id"],
                    name=str(info.get("Name", "")).lstrip("/"),
                    image=image,
                    kind=kind,
                    pid=int(info.get("State", {}).get("Pid") or 0),
                    published=_published(info),
                    network_mode=str(info.get("HostConfig", {}).get("NetworkMode", "")),
                    state=str(info.get("State", {}).get("Status", "")),
                )
            )
        return found
    except DockerException as exc:
        notes.append(f"Docker: listing containers at {base_url} failed ({exc})")
        return []
    finally:
        client.close()


def _published(info: dict) -> dict[int, int]:  # type: ignore[type-arg]
    """{container port: host port} for TCP ports published on loopback or every address."""
    ports: dict[int, int] = {}
    for spec, bindings in (info.get("NetworkSettings", {}).get("Ports") or {}).items():
        inside, _, proto = spec.partition("/")
        if proto != "tcp" or not bindings:
            continue
        for binding in bindings:
            if binding.get("HostIp", "") in LOOPBACK_OR_ANY and str(binding.get("HostPort", "")).isdigit():
                ports[int(inside)] = int(binding["HostPort"])
                break
    return ports
