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


@cli.command("replay")
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--config", "replay_config", metavar="FILE", default=None,
              help="Take detector thresholds from this config (else the global --config, if given).")
@click.option("--explain", is_flag=True, help="Print a readable timeline instead of JSON lines.")
@click.option("--expect", "expect_file", metavar="FILE", default=None,
              help="Also judge the findings against an expectation file (NAME.expect.json); exit 1 if off.")
@pass_ctx
def replay_command(obj: Context, trace: str, replay_config: str | None, explain: bool,
                   expect_file: str | None) -> None:
    """Run the detectors over a recorded TRACE (trace-v1) and print what they find.

    One JSON object per change of a finding: {"t", "target", "finding", "state", "summary"}.
    Broken trace lines are reported on stderr with their line numbers and skipped.
    """
    from watchdog.replay import check_expectations, findings_as_json_lines, replay_file
    from watchdog.trace.io import TraceError

    config = None
    if replay_config or obj.config_explicit:
        config = obj.load(replay_config)
    try:
        result = replay_file(trace, config, keep_context=explain)
    except TraceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    for problem in result.problems:
        click.echo(f"{trace}: {problem}", err=True)
    if explain:
        from rich.console import Console

        from watchdog.explain import explain as render

        render(result, trace, Console(soft_wrap=False))
    else:
        for line in findings_as_json_lines(result.findings):
            click.echo(line)
    if expect_file:
        import json

        report = check_expectations(result.findings, json.loads(open(expect_file, encoding="utf-8").read()))
        click.echo(f"expectations: {report}", err=True)
        if not report.ok:
            sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    try:
        cli.main(args=argv, prog_name="watchdogctl", standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()

