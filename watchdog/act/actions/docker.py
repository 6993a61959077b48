"""Restart a Docker container (name, id, or Compose service label) through the Docker SDK."""

from __future__ import annotations

from typing import Any

from watchdog.act.actions.base import Outcome, blocking, brief

COMPOSE_SERVICE = "com.docker.compose.service"


def find_container(client: Any, ref: str) -> Any:
    """A container by name or id, else by its Compose service label (exactly one must match)."""
    from docker.errors import NotFound

    try:
        return client.containers.get(ref)
    except NotFound:
        pass
    matches = client.containers.list(all=True, filters={"label": f"{COMPOSE_SERVICE}={ref}"})
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LookupError(f"no container named {ref!r} (nor a Compose service of that name)")
    names = ", ".join(sorted(c.name for c in matches))
    raise LookupError(f"Compose service {ref!r} has {len(matches)} containers ({names}): name one in container =")


def _state(container: Any) -> dict[str, Any]:
    container.reload()
    attrs = container.attrs
    state = attrs.get("State") or {}
    health = (state.get("Health") or {}).get("Status")
    return {"status": state.get("Status"), "restart_count": attrs.get("RestartCount"), "health": health,
            "pid": state.get("Pid") or None, "container_id": attrs.get("Id", "")[:12]}


async def restart_container(ref: str, *, timeout: float, stop_timeout: float,
                            base_url: str | None = None) -> Outcome:
    """``docker restart`` with a stop timeout; then read the state, restart count and health.

    A paused container (``docker pause``: a frozen server) is unpaused first, since
    the engine refuses to stop a paused one.
    """

    def work() -> dict[str, Any]:
        import docker

        client = (docker.DockerClient(base_url=base_url, timeout=int(timeout) + 5) if base_url
                  else docker.from_env(timeout=int(timeout) + 5))
        try:
            container = find_container(client, ref)
            before = _state(container)
            if before["status"] == "paused":
                container.unpause()
            container.restart(timeout=int(max(1, stop_timeout)))
            after = _state(container)
            after["before"] = before["status"]
            after["name"] = container.name
            return after
        finally:
            client.close()

    try:
        facts = await blocking(work, timeout)
    except TimeoutError:
        return Outcome("timeout", f"docker restart {ref} did not finish within {timeout:.0f} s")
    except ImportError:
        return Outcome("failed", "the docker Python SDK is not installed")
    except Exception as exc:  # noqa: BLE001 - engine gone, permission denied, no such container
        return Outcome("failed", f"docker restart {ref}: {brief(exc)}")
    text = f"container {facts['name']} {facts['before']} → {facts['status']}"
    if facts.get("health"):
        text += f", health {facts['health']}"
    if facts["status"] != "running":
        return Outcome("failed", text + " (not running after the restart)", facts)
    if facts.get("health") == "unhealthy":
        return Outcome("failed", text, facts)
    return Outcome("ok", text, facts)
