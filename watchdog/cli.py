"""``watchdogctl``: the one command-line interface.

Global options come before the subcommand (``watchdogctl --config F status``).
Exit codes: 0 success; 2 a usage or configuration error; commands that report
health (status, check) document their own codes.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from watchdog import __version__
from watchdog.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from watchdog.logs import setup_logging

EXIT_USAGE = 2


class Context:
    """What the global options chose, shared with every subcommand."""

    def __init__(self, config_path: str, config_explicit: bool, log_format: str | None, log_level: str | None):
        self.config_path = config_path
        self.config_explicit = config_explicit
        self.log_format = log_format
        self.log_level = log_level

    def load(self, path: str | None = None) -> Config:
        """The config, or exit 2 with every problem listed."""
        try:
            return load_config(path or self.config_path)
        except ConfigError as exc:
            fail_config(exc)

    def setup_logging(self, config: Config | None = None) -> None:
        fmt = self.log_format or (config.watchdog.log_format if config else "auto")
        level = self.log_level or (config.watchdog.log_level if config else "WARNING")
        setup_logging(fmt, level)  # type: ignore[arg-type]


def fail_config(exc: ConfigError) -> Any:
    click.echo(f"error: invalid configuration ({len(exc.problems)} problem(s)):", err=True)
    click.echo(str(exc), err=True)
    sys.exit(EXIT_USAGE)


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="watchdogctl")
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    envvar=CONFIG_ENV,
    default=None,
    help=f"Config file (default {DEFAULT_CONFIG_PATH}, or ${CONFIG_ENV}).",
)
@click.option("--log-format", type=click.Choice(["auto", "text", "json"]), default=None,
              help="Log lines for a terminal (text) or journald (json). Default: from the config, else auto.")
@click.option("--log-level", type=click.Choice(["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"],
              case_sensitive=False), default=None, help="Default: from the config.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, log_format: str | None, log_level: str | None) -> None:
    """Supervise self-hosted LLM inference servers (Ollama, vLLM, llama.cpp, OpenAI-compatible)."""
    ctx.obj = Context(
        config_path or DEFAULT_CONFIG_PATH,
        config_explicit=config_path is not None,
        log_format=log_format,
        log_level=log_level.upper() if log_level else None,
    )


@cli.group("config")
def config_group() -> None:
    """Inspect configuration files."""


@config_group.command("check")
@click.argument("file", required=False)
@pass_ctx
def config_check(obj: Context, file: str | None) -> None:
    """Validate FILE (default: the global --config) and print a summary.

    Exits 0 when valid; otherwise lists every problem with its key path and exits 2.
    """
    path = file or obj.config_path
    config = obj.load(path)
    from watchdog.config.summary import describe_config

    click.echo(f"{path}: OK")
    for line in describe_config(config):
        click.echo(f"  {line}")


@cli.command("probe")
@click.argument("targets", nargs=-1)
@click.option("--all", "all_targets", is_flag=True, help="Every enabled target.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON lines: a trace-v1 header, then the records (replayable).")
@click.option("--no-canary", is_flag=True, help="Do not send canary prompts.")
@click.option("--no-logs", is_flag=True, help="Do not read the targets' logs.")
@pass_ctx
def probe(obj: Context, targets: tuple[str, ...], all_targets: bool, as_json: bool, no_canary: bool,
          no_logs: bool) -> None:
    """Run one round of every probe against TARGETS (or --all) and print what was seen.

    Nothing is changed on any server: canaries only go to models that are
    already loaded and never extend their keep_alive. Exits 2 on a usage or
    configuration error, else 0 (it reports; it does not judge).
    """
    import asyncio

    from watchdog.probes.oneshot import json_lines, probe_once, render

    config = obj.load()
    # The tables say what went wrong; the log only adds what they cannot (unless asked).
    setup_logging(obj.log_format or "text", obj.log_level or "ERROR")  # type: ignore[arg-type]
    known = [t.name for t in config.targets if t.enabled]
    if all_targets == bool(targets):
        raise click.UsageError("name one or more TARGETS, or give --all")
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise click.UsageError(
            f"unknown or disabled target(s): {', '.join(unknown)} (enabled: {', '.join(known) or 'none'})"
        )
    report = asyncio.run(
        probe_once(config, list(targets) if targets else None, canary=not no_canary, logs=not no_logs)
    )
    if as_json:
        for line in json_lines(report):
            click.echo(line)
        return
    from rich.console import Console

    render(report, Console())


def _port_list(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[int]:
    ports: list[int] = []
    for value in values:
        for word in value.replace(",", " ").split():
            if not word.isdigit() or not 1 <= int(word) <= 65535:
                raise click.BadParameter(f"expected port numbers like 9000,9001, got {word!r}")
            ports.append(int(word))
    return ports


@cli.command("discover")
@click.option("--ports", "ports", multiple=True, callback=_port_list, metavar="N[,N...]",
              help="More ports to probe, besides 11434, 8000 and 8080 (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to probe the ports on.")
@click.option("--docker-host", default=None, metavar="URL",
              help="Docker API to list containers from (default $DOCKER_HOST, else /var/run/docker.sock).")
@click.option("--no-docker", is_flag=True, help="Do not ask Docker for containers.")
@click.option("--timeout", default=2.0, show_default=True, type=click.FloatRange(0.1, 60),
              help="Seconds to wait for each answer.")
def discover_command(ports: list[int], host: str, docker_host: str | None, no_docker: bool, timeout: float) -> None:
    """Find inference servers on this host and print a starter config.

    Probes Ollama (11434), vLLM (8000), llama.cpp (8080) and --ports, finds the
    process, container or systemd unit behind each, and lists running containers
    of known images. The config goes to stdout, a summary to stderr:

        watchdogctl discover > watchdog.toml

    Exits 0 when it found at least one server, 1 when it found none.
    """
    import socket
    from datetime import UTC, datetime

    from watchdog.discover import discover, render_config, render_summary

    found = discover(ports, host=host, docker_host=docker_host, use_docker=not no_docker, timeout=timeout)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    click.echo(render_config(found, host=socket.gethostname(), when=when), nl=False)
    for line in render_summary(found):
        click.echo(line, err=True)
    sys.exit(0 if found.servers else 1)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    try:
        cli.main(args=argv, prog_name="watchdogctl", standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()

