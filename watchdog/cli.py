"""``watchdogctl``: the one command-line interface.

Global options come before the subcommand (``watchdogctl --config F status``).
Exit codes: 0 success; 2 a usage or configuration error; commands that report
health (status, check) document their own codes.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from watchdog import __version__
from watchdog.config.paths import CONFIG_ENV, DEFAULT_CONFIG_PATH
from watchdog.exitcodes import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE

if TYPE_CHECKING:
    from watchdog.config import Config, ConfigError

# Only click and the constants above are imported at start: each command imports what it
# needs (the config models, the renderer, the control client...), so ``--version`` and
# ``status`` do not pay for pydantic models, loguru or rich they do not use (issue 15).


class Context:
    """What the global options chose, shared with every subcommand."""

    def __init__(self, config_path: str, config_explicit: bool, log_format: str | None, log_level: str | None):
        self.config_path = config_path
        self.config_explicit = config_explicit
        self.log_format = log_format
        self.log_level = log_level

    def load(self, path: str | None = None) -> Config:
        """The config, or exit 2 with every problem listed."""
        from watchdog.config import ConfigError, load_config

        try:
            return load_config(path or self.config_path)
        except ConfigError as exc:
            fail_config(exc)

    def setup_logging(self, config: Config | None = None) -> None:
        fmt = self.log_format or (config.watchdog.log_format if config else "auto")
        level = self.log_level or (config.watchdog.log_level if config else "WARNING")
        from watchdog.logs import setup_logging

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
@click.option("--strict", is_flag=True, help="Treat warnings (a secret that cannot be read now) as errors.")
@pass_ctx
def config_check(obj: Context, file: str | None, strict: bool) -> None:
    """Validate FILE (default: the global --config) and print a summary.

    Exits 0 when valid; otherwise lists every problem with its key path and exits 2.
    An env:/file: secret that cannot be read here is a warning (an error with --strict).
    """
    path = file or obj.config_path
    config = obj.load(path)
    from watchdog.config.check import secret_problems
    from watchdog.config.summary import describe_config

    warnings = secret_problems(config)
    if warnings and strict:
        click.echo(f"error: {len(warnings)} secret(s) cannot be read (--strict):", err=True)
        for problem in warnings:
            click.echo(f"{path}: {problem}", err=True)
        sys.exit(EXIT_USAGE)
    for problem in warnings:
        click.echo(f"warning: {path}: {problem}", err=True)
    click.echo(f"{path}: OK" + (f" ({len(warnings)} warning(s))" if warnings else ""))
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
    from watchdog.commands.replay import check_expectations, findings_as_json_lines, replay_file
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

        from watchdog.commands.explain import explain as render

        render(result, trace, Console(soft_wrap=False))
    else:
        for line in findings_as_json_lines(result.findings):
            click.echo(line)
    if expect_file:
        import json
        from pathlib import Path

        try:
            expectation = json.loads(Path(expect_file).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            click.echo(f"error: cannot read the expectation file {expect_file}: {type(exc).__name__}: "
                       f"{str(exc)[:200]}", err=True)
            sys.exit(EXIT_USAGE)
        try:
            report = check_expectations(result.findings, expectation)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            click.echo(f"error: {expect_file} is not an expectation file (docs/trace-v1.md, \"Expectation "
                       f"files\"): {type(exc).__name__}: {str(exc)[:200]}", err=True)
            sys.exit(EXIT_USAGE)
        click.echo(f"expectations: {report}", err=True)
        if not report.ok:
            sys.exit(EXIT_FAILURE)


# --- talking to the daemon: status, history, reload -------------------------------------------

_socket_option = click.option(
    "--socket", "socket_path", metavar="PATH", default=None,
    help="The daemon's control socket (default: $INFERENCE_WATCHDOG_SOCKET, else control_socket from the config).",
)


def _control_client(obj: Context, socket_path: str | None, validate: bool = True) -> Any:
    from watchdog.config.read import ConfigError
    from watchdog.control.client import ControlClient, resolve_socket_path

    try:
        return ControlClient(resolve_socket_path(socket_path, obj.config_path, obj.config_explicit, validate))
    except ConfigError as exc:
        fail_config(exc)


def _unreachable(exc: Exception) -> Any:

    click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_UNREACHABLE)


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status snapshot as JSON (schema in the README).")
@_socket_option
@pass_ctx
def status_command(obj: Context, as_json: bool, socket_path: str | None) -> None:
    """Show what the running daemon sees: targets, GPUs, findings, open incidents.

    Exit codes: 0 all ok; 1 degraded (a warning finding, or a target not observed
    lately); 2 critical; 3 the daemon is unreachable.
    """
    # No pydantic on this path (issue 15: it was most of the command's 330 ms): the socket is
    # read from the config alone, and the snapshot is checked into plain views (status/view.py).
    import json

    from watchdog.control.client import ControlError, DaemonUnreachable, socket_from_config
    from watchdog.status.summary import exit_code_for
    from watchdog.status.view import SnapshotError, snapshot_view

    client = _control_client(obj, socket_path, validate=False)
    try:
        data = client.status_data()
    except DaemonUnreachable as exc:
        if socket_from_config(socket_path, obj.config_explicit):
            obj.load()  # a config the daemon would refuse says more than "no daemon" (exits 2 if so)
        _unreachable(exc)
    except ControlError as exc:
        _unreachable(exc)
    try:
        snapshot = snapshot_view(data)
    except SnapshotError as exc:
        _unreachable(ControlError(200, f"the daemon's answer is not a status snapshot: {exc}"))
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))  # as the daemon sent it
    else:
        from watchdog.status.render import render_status  # rich: only for the table

        render_status(snapshot)
    sys.exit(exit_code_for(snapshot))


@cli.command("history")
@click.argument("incident_id", metavar="[ID]", required=False, type=int)
@click.option("--since", metavar="24h|ISO", default=None,
              help='Incidents open, or opened or closed since then: a duration ("24h", "7d") or a time.')
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000), help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print the incidents (with timelines) as JSON.")
@click.option("--trace", "trace_id", metavar="ID", type=int, default=None,
              help="Write incident ID's flight recording (trace-v1) for `watchdogctl replay`.")
@click.option("-o", "--output", metavar="FILE", default=None, help="With --trace: the file to write (default stdout).")
@_socket_option
@pass_ctx
def history_command(obj: Context, incident_id: int | None, since: str | None, limit: int, as_json: bool,
                    trace_id: int | None, output: str | None, socket_path: str | None) -> None:
    """Incidents with their timelines (all recent ones, or incident ID in full).

    Exit codes: 0 shown; 1 no such incident or recording; 2 bad arguments; 3 the daemon is unreachable.
    """
    import json

    from watchdog.control.client import ControlError, DaemonUnreachable
    from watchdog.control.params import parse_since
    from watchdog.incidents.render import render_history, render_incident

    if since is not None:
        try:
            parse_since(since, 0.0)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    if output is not None and trace_id is None:
        raise click.UsageError("-o/--output goes with --trace ID")
    client = _control_client(obj, socket_path)
    try:
        if trace_id is not None:
            _write_trace(client, trace_id, output)
            return
        if incident_id is not None:
            incidents = [client.incident(incident_id)]
        else:
            incidents = client.incidents(since=since, limit=limit, timeline=True)
    except DaemonUnreachable as exc:
        _unreachable(exc)
    except ControlError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(EXIT_FAILURE)
    if as_json:
        data = [i.model_dump(mode="json") for i in incidents]
        click.echo(json.dumps(data[0] if incident_id is not None else data, indent=2, ensure_ascii=False))
    elif incident_id is not None:
        render_incident(incidents[0])
    else:
        render_history(incidents)


@cli.command("report")
@click.option("--since", metavar="7d|ISO", default="7d", show_default=True,
              help='Incidents opened and canaries sent since then: a duration ("24h", "30d") or a time.')
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--state-dir", metavar="DIR", default=None, help="Read this state directory (default: the config's).")
@pass_ctx
def report_command(obj: Context, since: str, as_json: bool, state_dir: str | None) -> None:
    """Reliability per target and model: canaries, hangs, restarts, unloads, OOMs, truncations, timings.

    Reads the state directory directly (the daemon need not run). Exit codes: 0 shown; 1 the state
    directory cannot be read; 2 bad arguments.
    """
    import json
    import time

    from watchdog.commands.report import ReportError, build_report, render_report
    from watchdog.control.params import parse_since

    try:
        start = parse_since(since, time.time())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    if state_dir is None:
        state_dir = obj.load().watchdog.state_dir
    try:
        report = build_report(state_dir, start)
    except ReportError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"since": start, "rows": report}, indent=2, ensure_ascii=False))
    else:
        render_report(report, f"since {since}")


def _write_trace(client: Any, incident_id: int, output: str | None) -> None:
    if output is None or output == "-":
        client.trace(incident_id, sys.stdout.buffer)
        sys.stdout.flush()
        return
    try:
        size = client.save_trace(incident_id, output)
    except OSError as exc:
        click.echo(f"error: cannot write {output}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(f"wrote {output} ({size} bytes); replay it with `watchdogctl replay {output}`", err=True)


@cli.command("reload")
@_socket_option
@pass_ctx
def reload_command(obj: Context, socket_path: str | None) -> None:
    """Ask the running daemon to reload its config (like SIGHUP), and say how it went.

    Exit codes: 0 reloaded; 1 the new config was refused (the daemon keeps the old one); 3 unreachable.
    """
    from watchdog.control.client import ControlError, DaemonUnreachable

    client = _control_client(obj, socket_path)
    try:
        result = client.reload()
    except (DaemonUnreachable, ControlError) as exc:
        _unreachable(exc)
    click.echo(("reloaded: " if result.ok else "refused, still running on the old config: ") + result.message)
    sys.exit(EXIT_OK if result.ok else EXIT_FAILURE)


@cli.group("alert")
def alert_group() -> None:
    """Alert sinks ([[alerts]]): test them through the running daemon."""


@alert_group.command("test")
@click.argument("sink", required=False)
@click.option("--timeout", type=click.FloatRange(1, 300), default=20.0, show_default=True,
              help="Seconds to wait for each sink to deliver (retries included).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@_socket_option
@pass_ctx
def alert_test_command(obj: Context, sink: str | None, timeout: float, as_json: bool,
                       socket_path: str | None) -> None:
    """Send a test alert to SINK (or every sink) through the daemon's real path; print delivery per sink.

    Exit codes: 0 every sink delivered; 1 some did not (or no such sink); 3 unreachable.
    """
    from rich.console import Console

    from watchdog.commands.alert import EXIT_FAILED, render
    from watchdog.control.client import ControlError, DaemonUnreachable

    client = _control_client(obj, socket_path)
    try:
        results = client.alert_test(sink, timeout)
    except ControlError as exc:
        if exc.status == 404:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        _unreachable(exc)
    except DaemonUnreachable as exc:
        _unreachable(exc)
    sys.exit(render(results, Console(), as_json))
@cli.command("restart")
@click.argument("target")
@_socket_option
@pass_ctx
def restart_command(obj: Context, target: str, socket_path: str | None) -> None:
    """Restart TARGET now, through the same policy, budget and records as the watchdog's own actions.

    Refused while a model loads or a prefill runs, while the target is paused, or
    when the restart budget is spent. Exit codes: 0 restarted and verified by a
    canary; 1 failed or not verified; 2 refused; 3 the daemon is unreachable.
    """
    from watchdog.commands.act import run_action

    sys.exit(run_action(_control_client(obj, socket_path), "restart", target))


@cli.command("unload")
@click.argument("target")
@click.argument("model", required=False)
@_socket_option
@pass_ctx
def unload_command(obj: Context, target: str, model: str | None, socket_path: str | None) -> None:
    """Force MODEL (default: every loaded model) out of TARGET's memory; check the GPU memory came back."""
    from watchdog.commands.act import run_action

    sys.exit(run_action(_control_client(obj, socket_path), "unload", target, model=model))


@cli.command("pause")
@click.argument("target")
@click.option("--for", "duration", metavar="DURATION", default=None, help='e.g. "1h" (default: until resumed).')
@_socket_option
@pass_ctx
def pause_command(obj: Context, target: str, duration: str | None, socket_path: str | None) -> None:
    """Stop acting on TARGET (it is still watched), until `watchdogctl resume` or for a while."""
    from watchdog.commands.act import run_action
    from watchdog.config.durations import parse_duration

    seconds = None
    if duration is not None:
        try:
            seconds = parse_duration(duration)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--for") from None
        if seconds <= 0:
            raise click.BadParameter("expected a duration above zero", param_hint="--for")
    sys.exit(run_action(_control_client(obj, socket_path), "pause", target, seconds=seconds))


@cli.command("resume")
@click.argument("target")
@_socket_option
@pass_ctx
def resume_command(obj: Context, target: str, socket_path: str | None) -> None:
    """Act on TARGET again after a pause or after the watchdog gave up; the restart budget starts afresh."""
    from watchdog.commands.act import run_action

    sys.exit(run_action(_control_client(obj, socket_path), "resume", target))


@cli.command("demo")
@click.option("--keep", is_flag=True, help="Keep the work directory (daemon log, incidents, recordings).")
@pass_ctx
def demo_command(obj: Context, keep: bool) -> None:
    """Watch simulated Ollama and vLLM servers while a hang, a failed unload and a leak happen.

    Needs nothing but this package. Exits 0 only if every fault was detected and nothing else raised.
    """
    from rich.console import Console

    from watchdog.commands.demo import run_demo

    obj.setup_logging(None)
    sys.exit(run_demo(Console(), keep=keep))


@cli.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the status snapshot as JSON (as `status --json`).")
@click.option("--no-canary", is_flag=True, help="Do not send canary prompts.")
@pass_ctx
def check_command(obj: Context, as_json: bool, no_canary: bool) -> None:
    """One round of every probe without a daemon, judged at once (for cron and Nagios-style checks).

    Exit codes as `status`: 0 all ok, 1 degraded, 2 critical (a config error also exits 2).
    """
    import asyncio
    import json

    from watchdog.commands.check import run_check
    from watchdog.status import exit_code_for, render_status

    config = obj.load()
    obj.setup_logging(config)
    snapshot = asyncio.run(run_check(config, obj.config_path, canaries=not no_canary))
    if as_json:
        click.echo(json.dumps(snapshot.model_dump(mode="json"), indent=2))
    else:
        render_status(snapshot)
    sys.exit(exit_code_for(snapshot))


@cli.group("debug")
def debug_group() -> None:
    """Tools for testing the watchdog itself."""


@debug_group.command("wedge")
@click.option("--seconds", type=float, default=60.0, show_default=True)
@_socket_option
@pass_ctx
def debug_wedge(obj: Context, seconds: float, socket_path: str | None) -> None:
    """Block the daemon's main loop for SECONDS, to prove systemd's WatchdogSec restarts it.

    Refused unless the config says [debug] allow_wedge = true.
    """
    from watchdog.control.client import ControlError, DaemonUnreachable

    client = _control_client(obj, socket_path)
    try:
        client.wedge(seconds)
    except ControlError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    except DaemonUnreachable as exc:
        _unreachable(exc)
    click.echo(f"the daemon's main loop is blocked for {seconds:g} s")


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

    from watchdog.commands.probe import json_lines, probe_once, render

    config = obj.load()
    # The tables say what went wrong; the log only adds what they cannot (unless asked).
    from watchdog.logs import setup_logging

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


@cli.command("run")
@pass_ctx
def run_command(obj: Context) -> None:
    """Run the watchdog daemon in the foreground (what the systemd unit starts).

    SIGTERM stops it; SIGHUP reloads the config (a broken one is refused and the
    running config kept). Exits 2 if the config cannot be used at start.
    """
    import asyncio

    from loguru import logger

    from watchdog.daemon.daemon import run_daemon

    config = obj.load()
    obj.setup_logging(config)
    try:
        code = asyncio.run(run_daemon(obj.config_path, config, obj.log_format, obj.log_level))
    except Exception as exc:  # noqa: BLE001 - one clear line for the journal, then exit for systemd
        logger.opt(exception=exc).critical(f"the daemon failed: {exc!r}")
        code = EXIT_FAILURE
    sys.exit(code)


@cli.group("cloudwatch")
def cloudwatch_group() -> None:
    """CloudWatch dashboards and alarms for the watchdog's metrics (needs the [cloudwatch] extra)."""


@cloudwatch_group.command("dashboard")
@click.option("--host", "hosts", multiple=True, metavar="H",
              help="A Host dimension to show (repeat for several hosts). Default: this host.")
@click.option("--name", default="InferenceWatchdog", show_default=True, help="The dashboard's name.")
@click.option("--apply", is_flag=True, help="Put the dashboard (else only print its body).")
@pass_ctx
def cloudwatch_dashboard(obj: Context, hosts: tuple[str, ...], name: str, apply: bool) -> None:
    """Print the dashboard body (health, canaries, GPUs, incidents); --apply puts it."""
    from watchdog.commands.cloudwatch import dashboard_command

    config = obj.load()
    obj.setup_logging(config)
    sys.exit(dashboard_command(config, hosts, name, apply))


@cloudwatch_group.command("alarms")
@click.option("--host", "hosts", multiple=True, metavar="H", help="A Host dimension (repeat). Default: this host.")
@click.option("--gpu", "gpus", multiple=True, type=int, metavar="N",
              help="GPU indexes to alarm on (repeat). Default: the GPUs the host has reported.")
@click.option("--sns-topic", metavar="ARN", default=None, help="Notify this SNS topic on alarm and on OK.")
@click.option("--periods", default=3, show_default=True, type=click.IntRange(1, 100),
              help="Unhealthy for this many periods before the alarm fires.")
@click.option("--apply", is_flag=True, help="Create the alarms (else only print them).")
@pass_ctx
def cloudwatch_alarms(obj: Context, hosts: tuple[str, ...], gpus: tuple[int, ...], sns_topic: str | None,
                      periods: int, apply: bool) -> None:
    """Print the alarms (target unhealthy, GPU memory above 95%, any XID error); --apply creates them."""
    from watchdog.commands.cloudwatch import alarms_command

    config = obj.load()
    obj.setup_logging(config)
    sys.exit(alarms_command(config, hosts, gpus, sns_topic, periods, apply))


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
    sys.exit(EXIT_OK if found.servers else EXIT_FAILURE)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    try:
        cli.main(args=argv, prog_name="watchdogctl", standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":  # pragma: no cover
    main()

