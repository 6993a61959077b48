"""The Docker engine, as the probes need it: a container's id, main pid and state, and its logs.

Calls are blocking (the Docker SDK); callers run them in a probe's worker
thread. Answers are cached for a second so that one round of several probes
asks the engine once. An engine that cannot be reached is reported once and
asked again later, never raised into the daemon.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from watchdog.logs import LogOnce


class DockerUnavailable(Exception):
    """The engine cannot be asked right now (not running, no permission, no SDK)."""


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    name: str
    status: str  # running, paused, exited, restarting, created, dead
    pid: int | None  # the container's main process on this host, None when not running


class DockerAccess:
    """A cached view of containers through the Docker SDK."""

    def __init__(self, base_url: str | None = None, *, timeout: float = 3.0, cache_s: float = 1.0) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.cache_s = cache_s
        self._client: Any = None
        self._cache: dict[str, tuple[float, ContainerInfo | None]] = {}
        self._lock = threading.Lock()
        self._log = LogOnce("docker")
        self._retry_at = 0.0

    def client(self) -> Any:
        """The SDK client (made on first use). Raises DockerUnavailable."""
        if self._client is not None:
            return self._client
        if time.monotonic() < self._retry_at:
            raise DockerUnavailable("the Docker engine did not answer recently")
        try:
            import docker
            from docker.errors import DockerException

            if self.base_url:
                client = docker.DockerClient(base_url=self.base_url, timeout=int(max(1, self.timeout)))
            else:
                client = docker.from_env(timeout=int(max(1, self.timeout)))
            client.ping()
        except ImportError:
            raise DockerUnavailable("the docker Python SDK is not installed") from None
        except (DockerException, OSError, Exception) as exc:  # noqa: BLE001 - requests errors too
            self._retry_at = time.monotonic() + 10.0
            message = f"Docker engine unavailable: {_brief(exc)}"
            self._log.problem("engine", message)
            raise DockerUnavailable(message) from None
        self._log.ok("engine", "Docker engine reachable again")
        self._client = client
        return client

    def container(self, name: str) -> ContainerInfo | None:
        """The container by name or id; None if it does not exist. Raises DockerUnavailable."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and now - cached[0] < self.cache_s:
                return cached[1]
        client = self.client()
        from docker.errors import NotFound

        try:
            container = client.containers.get(name)
            attrs = container.attrs
        except NotFound:
            info = None
        except Exception as exc:  # noqa: BLE001 - the engine went away mid-call
            self._client = None
            self._retry_at = time.monotonic() + 5.0
            message = f"Docker engine unavailable: {_brief(exc)}"
            self._log.problem("engine", message)
            raise DockerUnavailable(message) from None
        else:
            state = attrs.get("State") or {}
            pid = state.get("Pid") or None
            info = ContainerInfo(
                id=str(attrs.get("Id", "")),
                name=str(attrs.get("Name", name)).lstrip("/"),
                status=str(state.get("Status", "unknown")),
                pid=int(pid) if pid else None,
            )
        with self._lock:
            self._cache[name] = (now, info)
        return info

    def logs_tail(self, name: str, lines: int) -> bytes:
        client = self.client()
        container = client.containers.get(name)
        return container.logs(stream=False, tail=lines, stdout=True, stderr=True)

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
            self._client = None


def _brief(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
