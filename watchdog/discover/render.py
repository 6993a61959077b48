"""Turn a :class:`Discovery` into a starter config (TOML, with comments) and a summary (pure)."""

from __future__ import annotations

import json
import re

from watchdog.discover.found import Discovery, Server

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_KIND_TITLE = {"ollama": "Ollama", "vllm": "vLLM", "llamacpp": "llama.cpp server", "openai": "OpenAI-compatible server"}


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string for everything json.dumps emits.
    return json.dumps(value, ensure_ascii=False)


def _comment(text: str) -> str:
    return " ".join(text.split())  # never a newline inside a comment line


def target_names(servers: list[Server]) -> list[str]:
    """A unique, valid target name per server: container name, unit name, else kind."""
    names: list[str] = []
    for server in servers:
        place = server.placement
        base = place.container_name or place.unit.removesuffix(".service") or server.identity.kind
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-._")[:50] or server.identity.kind
        if not _NAME_OK.match(base):
            base = server.identity.kind
        name = base
        if name in names:
            name = f"{base}-{server.port}"
        suffix = 2
        while name in names:
            name, suffix = f"{base}-{server.port}-{suffix}", suffix + 1
        names.append(name)
    return names


def where(server: Server) -> str:
    """Where a server runs, in words."""
    place = server.placement
    parts = []
    if place.container_id:
        label = f'container "{place.container_name}"' if place.container_name else f"container {place.container_id[:12]}"
        parts.append(label + (f" ({place.image})" if place.image else ""))
        if place.container_state and place.container_state != "running":
            parts.append(f"container {place.container_state.upper()}")
    elif place.unit:
        parts.append(f"unit {place.unit}")
    if place.pid:
        parts.append(f"pid {place.pid}" + (f" ({place.process})" if place.process else ""))
    if place.via.startswith("docker-proxy") or (not place.pid and place.via and not place.container_id):
        parts.append(place.via)
    return ", ".join(parts) or "process not identified"


def render_config(found: Discovery, *, host: str = "", when: str = "") -> str:
    """A starter watchdog.toml: one target per server found, every choice explained."""
    lines = [
        "# inference-watchdog starter configuration, written by `watchdogctl discover`"
        + (f" on {host}" if host else "")
        + (f" at {when}" if when else "")
        + ".",
        "# Review it, then check it:   watchdogctl config check /etc/inference-watchdog/watchdog.toml",
        "# Every other key, with its default: config/watchdog.example.toml in the source tree.",
        "",
        "[policy]",
        "# Watch and explain only, to begin with. Once the findings look right, set",
        '# mode = "act" to let the watchdog restart servers (each target says how).',
        'mode = "observe"',
    ]
    names = target_names(found.servers)
    for name, server in zip(names, found.servers):
        identity, place = server.identity, server.placement
        title = _KIND_TITLE[identity.kind] + (f" {identity.version}" if identity.version else "")
        lines += ["", _comment(f"# {title} on port {server.port}: {where(server)}.")]
        if not identity.answering:
            lines.append(_comment(f"# It did NOT answer when discovered ({identity.evidence})."))
        if identity.models:
            shown = ", ".join(identity.models[:5]) + (", ..." if len(identity.models) > 5 else "")
            lines.append(_comment(f"# Models it serves: {shown}"))
        lines += [
            "[[targets]]",
            f"name = {_toml_str(name)}",
            f"kind = {_toml_str(identity.kind)}",
            f"url = {_toml_str(server.url)}",
        ]
        if identity.needs_api_key:
            env = re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_") + "_API_KEY"
            lines += [
                "# It asked for an API key. Give it by reference, never literally, e.g.:",
                f'# api_key = "env:{env}"      (or "file:{name}-api-key" with LoadCredential=)',
            ]
        if place.container_id:
            if place.container_name:
                lines.append(f"container = {_toml_str(place.container_name)}")
            else:
                lines += [
                    "# Docker could not be asked for its name; the id changes when the container is",
                    "# re-created, so prefer the name (docker ps).",
                    f"container = {_toml_str(place.container_id[:12])}",
                ]
        elif place.unit:
            lines.append(f"unit = {_toml_str(place.unit)}")
        else:
            lines += [
                "# Neither in a container nor in a systemd unit: found by the process listening",
                "# on the URL's port. Nothing to restart it through, so the watchdog only watches;",
                "# to let it restart the server, give a command (run without a shell), e.g.",
                '# restart = { method = "command", command = ["systemctl", "restart", "my-server"] }',
                "[targets.restart]",
                'method = "none"',
            ]
    if not found.servers:
        lines += [
            "",
            "# No inference server answered. Add one target per server, for example:",
            "# [[targets]]",
            '# name = "ollama"',
            '# kind = "ollama"              # ollama | vllm | llamacpp | openai',
            '# url = "http://127.0.0.1:11434"',
            '# unit = "ollama.service"      # or container = "ollama"',
        ]
    idle = found.unmatched_containers()
    if idle:
        lines += ["", "# Containers of known server images that no answering port was traced to:"]
        for container in idle:
            published = ", ".join(f"{inside}->{outside}" for inside, outside in sorted(container.published.items()))
            lines.append(
                _comment(
                    f'#   "{container.name}" ({container.image}): '
                    + (f"published {published}, not answering (starting? hung?)" if published else
                       f"no port published on this host (network {container.network_mode or 'default'})")
                )
            )
        lines.append("# Add them by hand once they are reachable (a URL the watchdog can connect to).")
    return "\n".join(lines) + "\n"


def render_summary(found: Discovery) -> list[str]:
    """A few lines for stderr: what was found where, what was not, and why."""
    names = target_names(found.servers)
    lines = [f"found {len(found.servers)} inference server(s)"]
    for name, server in zip(names, found.servers):
        identity = server.identity
        what = _KIND_TITLE[identity.kind] + (f" {identity.version}" if identity.version else "")
        if identity.models:
            what += f", {len(identity.models)} model(s)"
        if identity.needs_api_key:
            what += ", needs an API key"
        if not identity.answering:
            what += f", NOT ANSWERING ({identity.evidence})"
        lines.append(f"  {name:<14} {server.url:<26} {what}; {where(server)}")
    for silent in found.silent:
        lines.append(f"  port {silent.port}: {silent.reason}")
    for container in found.unmatched_containers():
        lines.append(f'  container "{container.name}" ({container.image}): running, no server traced to it')
    lines += [f"  note: {note}" for note in found.notes]
    return lines
