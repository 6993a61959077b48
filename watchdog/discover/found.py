"""What ``watchdogctl discover`` found: plain data, filled by the scan, read by the renderers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Answer:
    """One HTTP GET on a candidate port: its status (None: no HTTP answer) and a bounded body."""

    status: int | None
    body: str = ""
    error: str = ""

    def json(self) -> object:
        """The body as JSON, or None when it is not JSON (never raises)."""
        import json

        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            return None


@dataclass(frozen=True)
class Identity:
    """What kind of inference server answered, and what it said about itself."""

    kind: str  # ollama | vllm | llamacpp | openai (the config's target kinds)
    version: str = ""
    models: tuple[str, ...] = ()
    needs_api_key: bool = False
    evidence: str = ""  # which answers identified it, for the summary
    answering: bool = True  # False: known only from its container's image (starting, or hung)


@dataclass(frozen=True)
class Placement:
    """Where a server's process runs: a container, a systemd unit, or neither."""

    pid: int | None = None
    process: str = ""  # a short command line
    container_id: str = ""
    container_name: str = ""
    image: str = ""
    unit: str = ""
    via: str = ""  # how the placement was found (cgroup, published port...)
    container_state: str = ""  # Docker's state of the container, when it was asked


@dataclass(frozen=True)
class KnownContainer:
    """A running container of a known inference-server image (from the Docker API)."""

    id: str
    name: str
    image: str
    kind: str
    pid: int
    published: dict[int, int] = field(default_factory=dict)  # container port -> host port on loopback/any
    network_mode: str = ""
    state: str = ""  # Docker's: running, paused, restarting


@dataclass(frozen=True)
class Server:
    port: int
    url: str
    identity: Identity
    placement: Placement


@dataclass(frozen=True)
class Silent:
    """A probed port with no inference server: nothing listening, or something else, or no answer."""

    port: int
    reason: str


@dataclass
class Discovery:
    servers: list[Server] = field(default_factory=list)
    silent: list[Silent] = field(default_factory=list)
    containers: list[KnownContainer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def unmatched_containers(self) -> list[KnownContainer]:
        """Known-image containers that no answering server was traced to."""
        matched = {s.placement.container_id for s in self.servers}
        return [c for c in self.containers if c.id not in matched]
