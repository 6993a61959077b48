"""``watchdogctl demo``: the real daemon against simulated servers, with faults on a timeline.

With nothing but this package: a simulated Ollama (GPU 0) and a simulated vLLM
(GPU 1) start with their simulated GPUs, the real daemon (``watchdogctl run``,
a subprocess, in ``mode = "act"``) watches them, and a timeline injects a hang,
a failed unload and a slow leak, plus model loads and a long prompt that must
raise nothing. The daemon fixes each fault: the hang and the leak by a restart
(``restart.method = "command"``: ``python -m watchdog.sim.relaunch`` starts the
simulator again on the same port), the failed unload by killing the orphaned
runner. The terminal shows the live status and each detection and fix with its
evidence, and beside it the alert the daemon sent (to a local webhook stand-in,
through its real outbox); the demo ends with a summary table (what fixed it,
how long until a canary proved it) and exits 0 only if every fault was
detected and fixed and nothing else was raised.

The daemon runs with a demo configuration: the same detectors, with shorter
intervals and thresholds so the story fits in under two minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from watchdog.commands.demo_alerts import AlertCatcher
from watchdog.control.client import ControlClient, ControlError, DaemonUnreachable
from watchdog.exitcodes import EXIT_FAILURE, EXIT_OK
from watchdog.sim.launch import SimulatorError
from watchdog.status import StatusSnapshot
from watchdog.status.render import gpus_table, targets_table

OLLAMA_MODEL = "qwen3:8b"
VLLM_MODEL = "Qwen/Qwen3-4B-AWQ"
DEADLINE_S = 150.0


class DemoError(Exception):
    """The demo could not run (as opposed to running and failing)."""


@dataclass
class Step:
    """Something the demo does to a server at ``at`` seconds, and what the watchdog should say."""

    at: float
    target: str
    what: str
    action: Callable[[], None]
    expect: str | None = None  # the finding it must raise; None: it must raise nothing
    within: float = 45.0
    done_at: float | None = None
    detected_at: float | None = None
    detected_summary: str = ""
    fixed_by: str | None = None  # the action whose verification passed
    recovered_after: float | None = None  # finding raised → canary passes again (from the incident)


@dataclass
class Scoreboard:
    steps: list[Step]
    raised: list[tuple[float, str, str, str]] = field(default_factory=list)  # (t, target, finding, summary)
    false_alarms: list[tuple[float, str, str, str]] = field(default_factory=list)

    def take(self, t: float, target: str, finding: str, summary: str) -> tuple[str, Step | None]:
        """A finding the daemon raised: which step explains it (or a false alarm)."""
        self.raised.append((t, target, finding, summary))
        for step in self.steps:
            if step.expect == finding and step.target == target and step.done_at is not None \
                    and step.done_at - 1.0 <= t:
                if step.detected_at is None:
                    step.detected_at, step.detected_summary = t, summary
                return "detected", step
        self.false_alarms.append((t, target, finding, summary))
        return "false alarm", None

    def take_incident(self, target: str, finding: str, opened: float, fixed_by: str,
                      recovered_after: float) -> Step | None:
        """An incident the daemon closed as recovered: which step's fault it fixed."""
        for step in self.steps:
            if step.expect == finding and step.target == target and step.done_at is not None \
                    and step.done_at - 1.0 <= opened and step.fixed_by is None:
                step.fixed_by, step.recovered_after = fixed_by, recovered_after
                return step
        return None

    @property
    def passed(self) -> bool:
        faults = [s for s in self.steps if s.expect]
        return not self.false_alarms and all(s.detected_at is not None and s.fixed_by for s in faults)

    def complete(self) -> bool:
        faults = [s for s in self.steps if s.expect and s.done_at is not None]
        return all(s.detected_at is not None and s.fixed_by for s in faults) and all(
            s.done_at is not None for s in self.steps)


class Demo:
    def __init__(self, console: Console, keep: bool = False, workdir: Path | None = None) -> None:
        self.console = console
        self.keep = keep
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="iw-demo-"))
        self.sims: dict[str, Relaunched] = {}
        self.daemon: subprocess.Popen[bytes] | None = None
        self.events: list[Text] = []
        self.catcher: AlertCatcher | None = None
        self.t0 = 0.0
        self._threads: list[threading.Thread] = []

    # --- the story ---------------------------------------------------------------------------

    def steps(self) -> list[Step]:
        ollama, vllm = self.sims["ollama"], self.sims["vllm"]
        return [
            Step(2, "ollama", f"load {OLLAMA_MODEL} (VRAM rises for 5 s at 0% utilisation)",
                 lambda: self._background(lambda: _generate(ollama.url, OLLAMA_MODEL, "Hello"))),
            Step(10, "vllm", "a long prompt (about 20 s of prefill at 100%, no tokens yet)",
                 lambda: self._background(lambda: _long_prompt(vllm.url, VLLM_MODEL))),
            Step(36, "ollama", "generation hangs (/api/ps still answers)", lambda: ollama.inject("hang"),
                 expect="hang", within=30),
            Step(62, "ollama", f"a user loads {OLLAMA_MODEL} again (after the restart)",
                 lambda: self._background(lambda: _generate(ollama.url, OLLAMA_MODEL, "Hello again"))),
            Step(72, "ollama", f"unload {OLLAMA_MODEL}, but its VRAM is not given back",
                 lambda: (self._after_a_canary("ollama"), ollama.inject("failed_unload"),
                          _unload(ollama.url, OLLAMA_MODEL)),
                 expect="failed_unload", within=30),
            Step(74, "vllm", "a slow leak: GPU memory grows 24 MiB/s", lambda: vllm.inject("leak", mib_per_s=24),
                 expect="memory_growth", within=45),
        ]

    def run(self) -> int:
        live_mode = self.console.is_terminal
        try:
            self._start()
            board = Scoreboard(self.steps())
            self.t0 = time.monotonic()
            self.wall0 = time.time()
            self._event(f"the daemon watches: Ollama on GPU 0, vLLM on GPU 1 (work dir {self.workdir})", "bold")
            client = ControlClient(self.workdir / "control.sock", timeout=5.0)
            seen: set[tuple[str, str]] = set()
            fixed: set[int] = set()
            with Live(console=self.console, refresh_per_second=4, transient=False) if live_mode \
                    else _NoLive() as live:
                while True:
                    now = time.monotonic() - self.t0
                    for step in board.steps:
                        if step.done_at is None and now >= step.at:
                            step.done_at = now
                            step.action()
                            self._event(f"{now:5.1f}s  ▶ {step.target}: {step.what}", "cyan")
                    snapshot = _status(client)
                    if snapshot is not None:
                        self._findings(snapshot, board, seen, now)
                        self._alerts(now)
                        self._fixes(client, board, fixed, now)
                        live.update(self._screen(snapshot, now))
                    if (board.complete() and now >= max(s.at for s in board.steps) + 15) or now > DEADLINE_S:
                        break
                    time.sleep(0.5)
            self._summary(board)
            return EXIT_OK if board.passed else EXIT_FAILURE
        finally:
            self._stop()

    # --- pieces ------------------------------------------------------------------------------

    def _start(self) -> None:
        gpu_dir = self.workdir / "gpu"
        self.console.print(f"[bold]inference-watchdog demo[/bold]: starting a simulated Ollama and vLLM "
                           f"and the daemon (in {self.workdir})")
        common = ("--gpu-mem-mib", "12282", "--gpu-name", "Simulated RTX A2000 12GB")
        self.sims["ollama"] = Relaunched(
            self.workdir, "ollama", "--model", f"{OLLAMA_MODEL}=5600", "--load-time", "5", "--gpu-index", "0",
            *common, gpu_dir=gpu_dir,
        ).start()
        self.sims["vllm"] = Relaunched(
            self.workdir, "vllm", "--model", f"{VLLM_MODEL}=3000", "--gpu-index", "1",
            "--gpu-memory-utilization", "0.6", "--prefill-tps", "1500", *common, gpu_dir=gpu_dir,
        ).start()
        config = self.workdir / "watchdog.toml"
        config.write_text(demo_config(self.workdir, self.sims["ollama"], self.sims["vllm"]))
        self.catcher = AlertCatcher()
        env = dict(os.environ, PYTHONUNBUFFERED="1", IW_DEMO_ALERT_URL=self.catcher.url)
        env.pop("NOTIFY_SOCKET", None)
        self._daemon_log = open(self.workdir / "daemon.log", "wb")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "watchdog", "--config", str(config), "--log-format", "json", "run"],
            stdout=self._daemon_log, stderr=subprocess.STDOUT, env=env,
        )
        client = ControlClient(self.workdir / "control.sock", timeout=5.0)
        deadline = time.monotonic() + 30
        while True:
            snapshot = _status(client)
            if snapshot is not None and snapshot.daemon.ready:
                return
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                self.keep = True  # the log is the evidence: keep it
                raise DemoError(f"the daemon did not become ready; see {self.workdir / 'daemon.log'}")
            time.sleep(0.2)

    def _findings(self, snapshot: StatusSnapshot, board: Scoreboard, seen: set[tuple[str, str]],
                  now: float) -> None:
        current = {(f.target, f.finding): f for t in snapshot.targets for f in t.findings}
        current.update({(f.target, f.finding): f for g in snapshot.gpus for f in g.findings})
        for key, finding in current.items():
            if key in seen:
                continue
            seen.add(key)
            verdict, step = board.take(now, key[0], key[1], finding.summary)
            if step is not None:
                self._event(f"{now:5.1f}s  ● {key[1]} on {key[0]}, {now - (step.done_at or now):.1f} s after "
                            f"the fault: {finding.summary}", "bold red")
            else:
                self._event(f"{now:5.1f}s  ✗ unexpected {key[1]} on {key[0]}: {finding.summary}", "bold yellow")
        for key in list(seen):
            if key not in current:
                seen.discard(key)
                self._event(f"{now:5.1f}s  ✓ {key[1]} on {key[0]} cleared", "green")

    def _alerts(self, now: float) -> None:
        """Show each alert the daemon delivered to the stand-in, as it arrives."""
        if self.catcher is None:
            return
        for alert in self.catcher.take():
            self._event(f"{now:5.1f}s    ✉ alert sent: {alert.get('headline', '?')}", "magenta")
    def _after_a_canary(self, target: str, timeout: float = 6.0) -> None:
        """Wait until a canary has just finished. A canary that chose its model from a poll taken
        before an unload would load the model again (Ollama loads what it is asked for) and hide
        the orphan this step is about; right after one, the next is seconds away."""
        client = ControlClient(self.workdir / "control.sock", timeout=5.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snapshot = _status(client)
            if snapshot is not None:
                canary = next((t.last_canary for t in snapshot.targets if t.name == target), None)
                if canary is not None and canary.age_s < 0.5:
                    return
            time.sleep(0.1)

    def _fixes(self, client: ControlClient, board: Scoreboard, fixed: set[int], now: float) -> None:
        """Incidents the daemon closed as recovered: what fixed them, and after how long."""
        try:
            incidents = client.incidents(limit=50)
        except (DaemonUnreachable, ControlError):
            return
        for incident in incidents:
            if incident.id in fixed or incident.recovered_after_s is None:
                continue
            fixed.add(incident.id)
            done = [a for a in incident.actions if a.result in ("ok", "interrupted")]
            fixed_by = done[-1].action if done else "?"
            opened = incident.opened_at.timestamp() - self.wall0
            finding = incident.findings[0].finding if incident.findings else "?"
            board.take_incident(incident.target, finding, opened, fixed_by, incident.recovered_after_s)
            self._event(f"{now:5.1f}s  ✔ {finding} on {incident.target} fixed by {fixed_by}, recovered "
                        f"{incident.recovered_after_s:.1f} s after it was raised", "bold green")

    def _event(self, text: str, style: str = "") -> None:
        line = Text(text, style=style)
        self.events.append(line)
        if not self.console.is_terminal:
            self.console.print(line)

    def _screen(self, snapshot: StatusSnapshot, now: float) -> Group:
        log = Table.grid()
        for line in self.events[-14:]:
            log.add_row(line)
        return Group(Text(f"demo time {now:5.1f} s", style="bold"), targets_table(snapshot),
                     gpus_table(snapshot), log)

    def _summary(self, board: Scoreboard) -> None:
        table = Table(title="demo summary")
        for column in ("at", "target", "what was done", "expected", "detected", "after", "fixed by",
                       "recovered after", "alerted"):
            table.add_column(column, overflow="fold")
        sent = self.catcher.alerts if self.catcher is not None else []
        for step in board.steps:
            expected = step.expect or "nothing"
            if step.expect:
                detected = step.detected_summary or "[red]MISSED[/red]"
                after = f"{step.detected_at - step.done_at:.1f} s" if step.detected_at and step.done_at else "-"
                fixed_by = step.fixed_by or "[red]NOT FIXED[/red]"
                recovered = f"{step.recovered_after:.1f} s" if step.recovered_after is not None else "-"
            else:
                detected, after, fixed_by, recovered = "nothing (correct)", "-", "-", "-"
            at = f"{step.done_at:.0f} s" if step.done_at is not None else "not reached"
            alerted = ", ".join(a["event"] for a in sent
                                if step.expect and a.get("target") == step.target and a.get("finding") == step.expect)
            table.add_row(at, step.target, step.what, expected, detected, after, fixed_by, recovered,
                          alerted or "-")
        self.console.print(table)
        if board.false_alarms:
            self.console.print("[bold red]false alarms:[/bold red]")
            for t, target, finding, summary in board.false_alarms:
                self.console.print(f"  {t:5.1f} s {finding} on {target}: {summary}")
        else:
            self.console.print("false alarms: none")
        if sent:
            self.console.print(f"alerts: {len(sent)} message(s) delivered to the local webhook stand-in "
                               f"({', '.join(sorted({a['event'] for a in sent}))})")
        if board.passed:
            self.console.print("[bold green]PASS[/bold green]: every fault was detected and fixed, and nothing else "
                               "was raised")
        else:
            self.console.print(f"[bold red]FAIL[/bold red]: see {self.workdir / 'daemon.log'}")
            self.keep = True

    def _background(self, work: Callable[[], None]) -> None:
        thread = threading.Thread(target=_quietly(work), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(20)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
        for sim in self.sims.values():
            sim.stop()
        if self.catcher is not None:
            self.catcher.close()
        if hasattr(self, "_daemon_log"):
            self._daemon_log.close()
        if self.keep:
            self.console.print(f"kept {self.workdir} (daemon.log, the state dir with incidents and recordings)")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


class Relaunched:
    """A simulator on a fixed port, started (and restarted by the daemon) with ``watchdog.sim.relaunch``."""

    def __init__(self, workdir: Path, kind: str, *args: str, gpu_dir: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{kind}.log"
        self.pidfile = workdir / f"{kind}.pid"
        sim_args = ["--kind", kind, "--gpu-dir", str(gpu_dir), "--log-file", str(self.log_path), *args]
        self.restart_command = [sys.executable, "-m", "watchdog.sim.relaunch", "--pidfile", str(self.pidfile),
                                "--port", str(self.port), "--", *sim_args]

    def start(self) -> "Relaunched":
        result = subprocess.run(self.restart_command, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise SimulatorError(f"the {self.kind} simulator did not start: {result.stderr.strip()[-500:]}")
        return self

    def inject(self, fault: str, **params: Any) -> None:
        httpx.post(f"{self.url}/_sim/fault", json={"fault": fault, **params}, timeout=5).raise_for_status()

    def stop(self) -> None:
        from watchdog.sim.relaunch import stop

        stop(self.pidfile, grace=2.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_config(workdir: Path, ollama: Relaunched, vllm: Relaunched) -> str:
    """The daemon's config for the demo: real detectors, demo-sized intervals and thresholds."""
    return f"""# Written by `watchdogctl demo`: intervals and thresholds shortened so the story fits in 2 minutes.
[watchdog]
state_dir = "{workdir / 'state'}"
control_socket = "{workdir / 'control.sock'}"
gpu_backend = "sim"
sim_gpu_dir = "{workdir / 'gpu'}"
gpu_interval = "1s"
poll_interval = "1s"
process_interval = "1s"
incident_context = "1m"
# A short flap window: the "resolved" alert waits this long for the target to stay quiet.
flap_window = "5s"

[detect]
stall_after = "6s"
unload_grace = "4s"
growth_min_mib = 400
growth_fraction = 0.05
growth_window = "12s"
busy_stall_after = "2m"

[policy]
mode = "act"
cooldown = "3s"
grace = "20s"
drain_timeout = "30s"
unload_timeout = "8s"
kill_grace = "3s"

# The alerts go to a local stand-in for a webhook (the demo shows each one as it arrives).
[[alerts]]
name = "demo-webhook"
kind = "webhook"
url = "env:IW_DEMO_ALERT_URL"

[[targets]]
name = "ollama"
kind = "ollama"
url = "{ollama.url}"
gpus = [0]
log_file = "{ollama.log_path}"
[targets.canary]
interval = "3s"
confirm_interval = "1s"
first_token_timeout = "3s"
stall_timeout = "3s"
timeout = "20s"
[targets.restart]
method = "command"
command = {json.dumps(ollama.restart_command)}
timeout = "30s"

[[targets]]
name = "vllm"
kind = "vllm"
url = "{vllm.url}"
gpus = [1]
log_file = "{vllm.log_path}"
[targets.canary]
interval = "3s"
confirm_interval = "1s"
first_token_timeout = "3s"
stall_timeout = "3s"
timeout = "20s"
[targets.restart]
method = "command"
command = {json.dumps(vllm.restart_command)}
timeout = "30s"
"""


class _NoLive:
    """Stands in for rich's Live when the output is not a terminal (CI logs)."""

    def __enter__(self) -> "_NoLive":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, _: Any) -> None:
        return None


def _status(client: ControlClient) -> StatusSnapshot | None:
    try:
        return client.status()
    except (DaemonUnreachable, ControlError):
        return None


def _quietly(work: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            work()
        except httpx.HTTPError:
            pass

    return run


def _generate(url: str, model: str, prompt: str) -> None:
    httpx.post(f"{url}/api/generate", json={"model": model, "prompt": prompt, "stream": False}, timeout=60)


def _long_prompt(url: str, model: str) -> None:
    # About 30,000 tokens: within vLLM's 32,768-token context (a longer one is refused at once, and
    # shows as `truncation`), 20 s of prefill at the simulator's 1,500 tokens/s.
    prompt = "Summarise the following log. " + "GPU 0 utilisation 97 percent, memory held. " * 2790
    httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 8}, timeout=120)


def _unload(url: str, model: str) -> None:
    httpx.post(f"{url}/api/generate", json={"model": model, "keep_alive": 0}, timeout=30)


def run_demo(console: Console | None = None, keep: bool = False) -> int:
    console = console or Console()
    try:
        return Demo(console, keep=keep).run()
    except (DemoError, SimulatorError) as exc:
        console.print(f"[bold red]error[/bold red]: {exc}")
        return EXIT_FAILURE

