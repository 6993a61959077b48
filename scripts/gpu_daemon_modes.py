"""The real daemon in front of real servers on real GPUs: ``gpu_validate.py --mode llamacpp|split|nccl``.

Unlike the ``toy`` mode, which runs the probes and the engine inside the
script, these modes start the daemon itself (``python -m watchdog run``, the
same code path as ``watchdogctl run``) with a config written for the run, and
drive a real server through phases while it watches. What the daemon saw is
its own recording: ``incident_context`` and ``recorder_window`` are one hour,
so the first incident's recording holds every record from the daemon's start
to the end of the run. That recording becomes the trace, the phases are placed
on its time line through its ``wall_start``, and an expectation file is written
beside it, so CI replays what the daemon saw on the GPUs.

    llamacpp  llama.cpp's llama-server with CUDA on one GPU (``-ngl 99``):
              load, idle, four concurrent streams, SIGSTOP (hang), restart with
              the target's restart command, recovered, SIGKILL (down). With
              ``--act`` (``policy.mode = "act"``) the daemon runs that command
              itself, after the hang and after the kill, and the script reads
              what it did from ``watchdogctl history --json``.
    split     the same server split over two GPUs (``--split-mode layer
              --tensor-split 1,1``): one target on both GPUs, one incident.
    nccl      two torch ranks joined by NCCL (scripts/gpu_nccl_server.py): idle,
              traffic, a 90 s prefill at 100% (quiet), a stuck collective (hang).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from watchdog.commands.replay import check_expectations, replay_file  # noqa: E402
from watchdog.config import parse_config  # noqa: E402
from watchdog.control.client import ControlClient  # noqa: E402
from watchdog.incidents.model import Incident  # noqa: E402
from watchdog.trace.io import read_trace, write_trace  # noqa: E402
from watchdog.trace.records import Canary, GpuSample  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(text: str) -> None:
    print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {text}", flush=True)


#: What to stop if a run fails half-way (daemons, servers), run by gpu_validate.py in any case.
CLEANUP: list[Callable[[], None]] = []


# --- the daemon -------------------------------------------------------------------------------------

@dataclass
class Phase:
    wall: float
    name: str


@dataclass
class DaemonRun:
    """One run of the real daemon, with the phases the script drove and what it expects."""

    name: str
    out: Path
    work: Path
    targets_toml: str
    gpu_backend: str = "nvml"
    #: "observe" (the script restarts servers itself) or "act" (the daemon does, through the target's restart).
    policy_mode: str = "observe"
    phases: list[Phase] = field(default_factory=list)
    expect: list[dict[str, Any]] = field(default_factory=list)  # times are wall clock until written
    quiet: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def state(self) -> Path:
        return self.work / "state"

    @property
    def socket_path(self) -> Path:
        return self.work / "control.sock"

    def config_text(self) -> str:
        return f"""[watchdog]
state_dir = "{self.state}"
control_socket = "{self.socket_path}"
gpu_backend = "{self.gpu_backend}"
gpu_interval = "1s"
poll_interval = "2s"
process_interval = "2s"
recorder_window = "1h"
incident_context = "1h"
log_format = "text"

[policy]
mode = "{self.policy_mode}"

{self.targets_toml}
"""

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.state, ignore_errors=True)  # an earlier run's recordings are not this run's
        self.state.mkdir()
        config = self.work / "watchdog.toml"
        config.write_text(self.config_text())
        (self.out / f"{self.name}.watchdog.toml").write_text(self.config_text())
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, "-m", "watchdog", "--config", str(config), "run"],
                                     stdout=open(self.out / f"{self.name}.daemon.log", "ab"),
                                     stderr=subprocess.STDOUT, env=env, cwd=self.work)
        CLEANUP.append(self.stop)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}; see {self.name}.daemon.log")
            try:
                ControlClient(self.socket_path, timeout=3).status()
                log(f"daemon up (pid {self.proc.pid})")
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.3)
        raise RuntimeError("the daemon's control socket did not answer within 60 s")

    def phase(self, name: str) -> float:
        wall = time.time()
        self.phases.append(Phase(wall, name))
        log(f"phase: {name}")
        return wall

    def incidents(self) -> list[Incident]:
        try:
            return ControlClient(self.socket_path, timeout=10).incidents(limit=100, timeline=True)
        except Exception as exc:  # noqa: BLE001
            log(f"incidents: {exc!r}")
            return []

    def wait_for(self, finding: str, target: str, after_wall: float, timeout: float) -> float | None:
        """Wait until the daemon has raised ``finding`` after ``after_wall``; the wall time it did."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for incident in self.incidents():
                if incident.target != target:
                    continue
                for entry in incident.timeline:
                    if entry.kind == "raised" and entry.finding == finding and entry.at.timestamp() >= after_wall - 1:
                        return entry.at.timestamp()
            time.sleep(1.0)
        return None

    def wait_action(self, finding: str, target: str, after_wall: float, timeout: float) -> tuple[Incident, Any] | None:
        """Wait until the daemon's own action on ``finding`` (started after ``after_wall``) has
        finished and the incident says it recovered (act mode); the incident and the action."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for incident in self.incidents():
                if incident.target != target:
                    continue
                for action in incident.actions:
                    if (action.finding == finding and action.started.timestamp() >= after_wall - 1
                            and action.finished is not None):
                        verified = any(e.evidence.get("fixed_by") and e.at.timestamp() >= action.started.timestamp()
                                       for e in incident.timeline)
                        if verified or action.result != "ok":
                            return incident, action
            time.sleep(0.5)
        return None

    def history_json(self) -> list[dict[str, Any]]:
        """``watchdogctl history --json`` against the running daemon, kept beside the results."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        done = subprocess.run([sys.executable, "-m", "watchdog", "--config", str(self.work / "watchdog.toml"),
                               "history", "--json", "--limit", "100"], capture_output=True, env=env, timeout=60,
                              check=False)
        (self.out / f"{self.name}.history.json").write_bytes(done.stdout)
        if done.returncode != 0:
            log(f"history --json exited {done.returncode}: {done.stderr.decode(errors='replace')[-500:]}")
            return []
        return json.loads(done.stdout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def finish(self, extra_checks: Callable[[dict[str, Any]], list[str]] | None = None) -> dict[str, Any]:
        """Stop the daemon, take its recording as the trace, check it, write the report section."""
        incidents = self.incidents()
        self.stop()
        (self.out / f"{self.name}.incidents.json").write_text(
            json.dumps([i.to_json() for i in incidents], indent=1, default=str))
        recordings = sorted((self.state / "recordings").glob("incident-*.trace.jsonl"),
                            key=lambda p: int(p.name.split("-")[1].split(".")[0]))
        result: dict[str, Any] = {"name": self.name, "incidents": [i.to_json() for i in incidents]}
        if not recordings:
            result["problems"] = ["the daemon made no recording (no incident)"]
            return result
        source = recordings[0]
        trace_path = self.out / f"{self.name}.trace.jsonl"
        shutil.copyfile(source, self.out / f"{self.name}.recording.jsonl")
        trace = read_trace(source)
        # The daemon appends records in the order they reach its pipeline, and a probe's record can
        # arrive a few milliseconds after a later-stamped one: the trace is put in time order.
        backwards = sum(1 for p in trace.problems if "backwards" in p.message)
        if backwards:
            self.notes.append(f"the daemon's recording had {backwards} record(s) a few ms out of time order; "
                              "the trace is the recording sorted by t")
        trace.records.sort(key=lambda r: r.t if r.t is not None else float("-inf"))
        write_trace(trace_path, trace.header, trace.records)
        wall_start = float(trace.header.extra.get("wall_start") or trace.header.extra.get("wall_zero"))
        duration = max((r.t for r in trace.records if r.t is not None), default=0.0)

        def t(wall: float) -> float:
            return round(wall - wall_start, 2)

        expect_items = []
        for item in self.expect:
            converted = dict(item)
            for key in ("onset", "raise_by", "until"):
                if converted.get(key) is not None:
                    converted[key] = t(converted[key])
            expect_items.append({k: v for k, v in converted.items() if v is not None and not k.startswith("_")})
        quiet = [{"from": t(q["from"]), "to": t(q["to"]), "note": q["note"]} for q in self.quiet]
        expect = {
            "trace": trace_path.name,
            "source": self.source,
            "duration": round(duration, 1),
            "expect": expect_items,
            "tolerate": [],
            "quiet": quiet,
        }
        (self.out / f"{self.name}.expect.json").write_text(json.dumps(expect, indent=1) + "\n")
        replay = replay_file(trace_path, parse_config(self.config_text()))
        (self.out / f"{self.name}.config.toml").write_text(
            "# The thresholds this trace was recorded with (tests/test_detect_traces.py replays with them).\n"
            + self.targets_toml)
        report = check_expectations(replay.findings, expect)
        phases = [(t(p.wall), p.name) for p in self.phases]
        checks = extra_checks(expect | {"header": trace.header, "records": trace.records}) if extra_checks else []
        live = []
        for phase_item in self.expect:
            raised = phase_item.get("_live_raised")
            live.append(round(raised - phase_item["onset"], 1) if raised else None)
        result.update({
            "trace": trace_path.name, "records": len(trace.records), "duration": duration,
            "replay_findings": [f.to_json() for f in replay.findings], "expect": expect,
            "ok": report.ok and not checks, "report": str(report), "checks": checks, "phases": phases,
            "live_after": live, "recordings": [p.name for p in recordings], "notes": self.notes,
        })
        result["markdown"] = self.markdown(trace, phases, replay.findings, report, expect, live, checks, wall_start)
        (self.out / f"{self.name}.result.json").write_text(json.dumps(
            {k: v for k, v in result.items() if k != "markdown"}, indent=1, default=str))
        (self.out / f"{self.name}.md").write_text(result["markdown"])
        return result

    source: str = ""

    def markdown(self, trace: Any, phases: list[tuple[float, str]], findings: list[Any], report: Any,
                 expect: dict[str, Any], live: list[float | None], checks: list[str], wall_start: float) -> str:
        records = trace.records
        ends = [p[0] for p in phases[1:]] + [expect["duration"]]
        gpus = sorted({r.index for r in records if isinstance(r, GpuSample)})
        lines = [f"### `{self.name}`", "", "| t (s) | phase | " + " | ".join(
            f"GPU {g} util median / max | GPU {g} memory of the target" for g in gpus) + " | canaries ok / sent |",
            "| --- | --- | " + " | ".join("--- | ---" for _ in gpus) + " | --- |"]
        for (start, name), end in zip(phases, ends, strict=True):
            cells = [_gpu_cells(records, g, start, end) for g in gpus]
            canaries = [r for r in records if isinstance(r, Canary) and start <= r.t < end]
            ok = sum(1 for c in canaries if c.ok)
            lines.append(f"| {start:.1f} | {name} | " + " | ".join(cells) + f" | {ok} / {len(canaries)} |")
        lines += ["", "What the daemon raised (replayed from its own recording; the live daemon's incidents "
                  f"are in `{self.name}.incidents.json`):", "", "| t (s) | finding | state | summary |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {f.t:.1f} | {f.finding} | {f.state} | {f.summary} |" for f in findings]
        lines += ["", "| expected | onset (s) | raised at (s) | after (replay) | after (live daemon) | window |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for item, after_live in zip(expect["expect"], live, strict=True):
            hit = next((f for it, f in report.detected if it is item or (
                it["finding"] == item["finding"] and it["onset"] == item["onset"])), None)
            raised_at = f"{hit.t:.1f}" if hit else "-"
            after = f"{hit.t - item['onset']:.1f} s" if hit else "MISSED"
            after_daemon = f"{after_live:.1f} s" if after_live is not None else "-"
            lines.append(f"| {item['finding']} | {item['onset']:.1f} | {raised_at} | {after} | {after_daemon} | "
                         f"{item['raise_by'] - item['onset']:.0f} s |")
        lines += ["", f"False positives: {len(report.false_positives)}" + (
            "" if not report.false_positives else "\n\n" + "\n".join(f"- {x}" for x in report.false_positives))]
        for check in checks:
            lines.append(f"- check failed: {check}")
        for note in self.notes:
            lines.append(f"- {note}")
        lines += ["", f"Result: **{'PASS' if report.ok and not checks else 'FAIL'}**", ""]
        return "\n".join(lines)


def _gpu_cells(records: list[Any], index: int, start: float, end: float) -> str:
    samples = [r for r in records if isinstance(r, GpuSample) and r.index == index and start <= r.t < end
               and r.util is not None]
    if not samples:
        return "- | -"
    utils = sorted(r.util for r in samples)
    held = [sum(p.mem_mib or 0 for p in r.procs if p.target) for r in samples]
    return f"{statistics.median(utils):.0f}% / {utils[-1]:.0f}% | {min(held) / 1024:.1f}–{max(held) / 1024:.1f} GiB"


# --- traffic ----------------------------------------------------------------------------------------

class Streams:
    """Client threads streaming chat completions until stopped; counts the tokens they got."""

    def __init__(self, url: str, model: str, clients: int, max_tokens: int = 256) -> None:
        self.url, self.model, self.clients, self.max_tokens = url, model, clients, max_tokens
        self.tokens = 0
        self.errors = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = 0.0
        self.ended = 0.0

    def __enter__(self) -> "Streams":
        self.started = time.monotonic()
        for _ in range(self.clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)
        self.ended = time.monotonic()

    @property
    def rate(self) -> float:
        return self.tokens / max(1e-6, self.ended - self.started)

    def _run(self) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": self.max_tokens, "stream": True, "ignore_eos": True}
        while not self._stop.is_set():
            try:
                with httpx.stream("POST", self.url + "/v1/chat/completions", json=body, timeout=120) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: {"):
                            self.tokens += 1
            except httpx.HTTPError:
                self.errors += 1
                time.sleep(0.5)


def sleep_until(wall: float) -> None:
    while (left := wall - time.time()) > 0:
        time.sleep(min(left, 1.0))


# --- llama.cpp --------------------------------------------------------------------------------------

class LlamaServer:
    """llama-server started through a restart script: the same script the target's restart command runs."""

    def __init__(self, binary: Path, model: Path, work: Path, port: int, args: list[str], gpus: str = "") -> None:
        self.binary, self.model, self.work, self.port = binary, model, work, port
        self.pidfile = work / "llama.pid"
        self.script = work / "restart-llama.sh"
        command = " ".join([str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                            "--metrics", "--slots", "-np", "8", "-c", "16384", *args])
        self.script.write_text(
            "#!/bin/sh\n# The target's restart command: stop the old server (whatever state it is in), start anew.\n"
            f'if [ -f "{self.pidfile}" ]; then kill -9 "$(cat "{self.pidfile}")" 2>/dev/null; fi\n'
            "sleep 0.5\n"
            + (f"CUDA_VISIBLE_DEVICES={gpus} " if gpus else "")
            + f'LD_LIBRARY_PATH="{binary.parent}:$LD_LIBRARY_PATH" setsid {command} '
            f'>> "{work}/llama-server.log" 2>&1 < /dev/null &\n'
            f'echo $! > "{self.pidfile}"\n')
        self.script.chmod(0o755)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def restart(self) -> None:
        subprocess.run(["/bin/sh", str(self.script)], check=True)

    def wait_healthy(self, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.time()
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"llama-server did not become healthy; see {self.work}/llama-server.log")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, FileNotFoundError, ValueError):
            pass


def llama_target(name: str, port: int, server: LlamaServer, gpus: str = '"auto"') -> str:
    return f"""[[targets]]
name = "{name}"
kind = "llamacpp"
url = "http://127.0.0.1:{port}"
gpus = {gpus}
[targets.canary]
interval = "5s"
[targets.restart]
method = "command"
command = ["/bin/sh", "{server.script}"]
"""


def run_llamacpp(out: Path, work: Path, binary: Path, model: Path, source: str, gpu_backend: str = "nvml",
                 ngl: str = "99", act: bool = False) -> dict[str, Any]:
    """One GPU: idle, load, traffic, SIGSTOP hang → restart → recovered, kill → down.

    ``act``: ``policy.mode = "act"``: the daemon restarts the server itself through the target's
    ``restart.command`` (after the hang, and after the kill), verifies with a canary and records
    the action; the script only waits for it. Otherwise the script runs the restart command.
    """
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    server = LlamaServer(binary, model, work, port, ["-ngl", ngl], gpus="0" if gpu_backend == "nvml" else "")
    CLEANUP.append(server.kill)
    run = DaemonRun("llamacpp", out, work, llama_target("llama", port, server), gpu_backend=gpu_backend,
                    policy_mode="act" if act else "observe")
    run.source = source
    if act:
        run.notes.append("policy.mode = \"act\": the daemon restarted the server itself, through the target's "
                         "restart.command (the script sent the signals only)")
    else:
        run.notes.append("policy.mode = \"observe\": the script ran the target's own restart command after the "
                         "hang, as the daemon would in act mode")
    first = run.phase("load: llama-server starts and loads the model onto the GPU, the daemon starts")
    server.restart()
    run.start()
    server.wait_healthy()
    time.sleep(4)
    run.phase("idle with the model held")
    time.sleep(20)
    run.phase("traffic: four concurrent streams")
    with Streams(server.url, "model", 4) as streams:
        time.sleep(30)
    run.notes.append(f"traffic: {streams.tokens} tokens streamed at {streams.rate:.0f} tokens/s over 4 streams "
                     f"({streams.errors} client errors)")
    run.phase("idle after traffic")
    time.sleep(12)
    run.quiet.append({"from": first, "to": time.time(), "note": "start, load, idle with the model held, "
                      "four concurrent streams, idle"})
    onset = run.phase("SIGSTOP: the server freezes with its model held")
    old_pid = server.pid
    server.signal(signal.SIGSTOP)
    item: dict[str, Any] = {"finding": "hang", "target": "llama", "onset": onset, "raise_by": onset + 30}
    run.expect.append(item)
    raised = run.wait_for("hang", "llama", onset, 45)
    item["_live_raised"] = raised
    if act:
        acted = _daemon_restart(run, server, "hang", onset, old_pid, "restart by the daemon: its restart.command "
                                "(kill -9, start again), then a verification canary")
        restart = acted or time.time()
        healthy = server.wait_healthy()
    else:
        time.sleep(3)
        restart = run.phase("restart: the target's restart command (kill -9, start again)")
        server.restart()
        healthy = server.wait_healthy()
        run.notes.append(f"restart command to /health answering: {healthy - restart:.1f} s")
    item["until"] = time.time() + 20
    run.phase("recovered: idle, then one stream")
    time.sleep(10)
    with Streams(server.url, "model", 1):
        time.sleep(10)
    time.sleep(6)
    run.quiet.append({"from": item["until"], "to": time.time(), "note": "after the restart: recovered, serving"})
    onset = run.phase("SIGKILL: the server dies" + (" (the daemon restarts it)" if act else
                                                    " and nothing restarts it"))
    old_pid = server.pid
    server.kill()
    down: dict[str, Any] = {"finding": "down", "target": "llama", "onset": onset, "raise_by": onset + 30}
    run.expect.append(down)
    down["_live_raised"] = run.wait_for("down", "llama", onset, 40)
    if act:
        _daemon_restart(run, server, "down", onset, old_pid, "restart by the daemon after the kill, then a "
                        "verification canary")
        down["until"] = server.wait_healthy() + 10
        run.phase("recovered again: idle")
        time.sleep(15)
        run.quiet.append({"from": down["until"], "to": time.time(), "note": "after the second restart"})
        run.history_json()
    else:
        time.sleep(3)
    run.phase("end")
    result = run.finish(lambda data: _recovery(data, restart - 0.0, run) + (_act_checks(run) if act else []))
    return result


#: What the daemon did in act mode, per finding: raised, action started/finished, recovered (wall times).
ACTED: dict[str, dict[str, Any]] = {}


def _daemon_restart(run: DaemonRun, server: LlamaServer, finding: str, onset: float, old_pid: int,
                    phase: str) -> float | None:
    """Wait for the daemon's restart after ``finding``; put its start on the time line; the wall time."""
    found = run.wait_action(finding, "llama", onset, 150)
    if found is None:
        run.notes.append(f"act: the daemon did not act on {finding} within 150 s")
        ACTED[finding] = {"problem": "no action"}
        return None
    incident, action = found
    started = action.started.timestamp()
    run.phases.append(Phase(started, phase))
    log(f"phase (from the daemon's action record): {phase}")
    raised = next((f.raised_at.timestamp() for f in incident.findings if f.finding == finding), None)
    recovered_entry = next((e for e in incident.timeline if e.evidence.get("fixed_by")
                            and e.at.timestamp() >= started), None)
    ACTED[finding] = {
        "incident": incident.id, "onset": onset, "raised": raised, "action": action.action,
        "method": action.method, "result": action.result, "detail": action.detail,
        "started": started, "finished": action.finished.timestamp() if action.finished else None,
        "recovered_at": recovered_entry.at.timestamp() if recovered_entry else None,
        "recovered_after_s": recovered_entry.evidence.get("recovered_after_s") if recovered_entry else None,
        "verified": recovered_entry.evidence.get("verified") if recovered_entry else None,
        "old_pid": old_pid, "new_pid": server.pid,
    }
    a = ACTED[finding]
    text = (f"act on {finding}: {action.action} ({action.method}) {action.result}; started "
            f"{started - onset:.1f} s after the onset" + (f", {started - raised:.1f} s after the raise" if raised else "")
            + (f", command took {a['finished'] - started:.2f} s" if a["finished"] else "")
            + f"; recovered_after_s {a['recovered_after_s']} ({a['verified']}); pid {old_pid} → {a['new_pid']}")
    run.notes.append(text)
    log(text)
    return started


def _act_checks(run: DaemonRun) -> list[str]:
    """Act mode: each finding got exactly one restart by the daemon, ok and verified."""
    problems = []
    (run.out / f"{run.name}.acted.json").write_text(json.dumps(ACTED, indent=1))
    history = json.loads((run.out / f"{run.name}.history.json").read_text() or "[]")
    actions = [a for i in history for a in i.get("actions", [])]
    for finding in ("hang", "down"):
        mine = [a for a in actions if a.get("finding") == finding]
        if len(mine) != 1 or mine[0]["action"] != "restart" or mine[0]["result"] != "ok":
            problems.append(f"{finding}: actions {mine}, not one restart that went ok")
        if not ACTED.get(finding, {}).get("recovered_after_s"):
            problems.append(f"{finding}: no recovered_after_s")
    if any(a.get("manual") for a in actions):
        problems.append("a manual action was recorded")
    return problems


def _recovery(data: dict[str, Any], restart_wall: float, run: DaemonRun) -> list[str]:
    """Time from the restart to the first canary that passed again (noted, not a check)."""
    header = data["header"]
    wall_start = float(header.extra.get("wall_start") or header.extra.get("wall_zero"))
    restart_t = restart_wall - wall_start
    passed = [r for r in data["records"] if isinstance(r, Canary) and r.ok and r.t >= restart_t]
    if passed:
        run.notes.append(f"restart to the first passing canary: {passed[0].t - restart_t:.1f} s")
    else:
        return ["no canary passed after the restart"]
    return []


# --- llama.cpp split over two GPUs ------------------------------------------------------------------

def run_split(out: Path, work: Path, binary: Path, model: Path, source: str) -> dict[str, Any]:
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    server = LlamaServer(binary, model, work, port, ["-ngl", "99", "--split-mode", "layer", "--tensor-split", "1,1"],
                         gpus="0,1")
    CLEANUP.append(server.kill)
    run = DaemonRun("split", out, work, llama_target("llama-split", port, server))
    run.source = source
    first = run.phase("load: llama-server split over GPUs 0 and 1 (--split-mode layer --tensor-split 1,1)")
    server.restart()
    run.start()
    server.wait_healthy()
    time.sleep(3)
    run.phase("idle with the model held on both GPUs")
    time.sleep(12)
    run.phase("traffic: four concurrent streams")
    with Streams(server.url, "model", 4) as streams:
        time.sleep(20)
    run.notes.append(f"traffic: {streams.tokens} tokens at {streams.rate:.0f} tokens/s over 4 streams")
    run.phase("idle after traffic")
    time.sleep(8)
    run.quiet.append({"from": first, "to": time.time(), "note": "load over two GPUs, idle, traffic, idle"})
    onset = run.phase("SIGSTOP: the one process that holds both GPUs freezes")
    server.signal(signal.SIGSTOP)
    item: dict[str, Any] = {"finding": "hang", "target": "llama-split", "onset": onset, "raise_by": onset + 30}
    run.expect.append(item)
    item["_live_raised"] = run.wait_for("hang", "llama-split", onset, 45)
    time.sleep(15)
    run.phase("end")
    pid = server.pid
    incidents = run.incidents()
    result = run.finish(lambda data: _split_checks(data, incidents, pid))
    server.kill()
    return result


def _split_checks(data: dict[str, Any], incidents: list[Incident], pid: int) -> list[str]:
    problems = []
    header = data["header"]
    target = header.target("llama-split")
    if target is None or sorted(target.gpus) != [0, 1]:
        problems.append(f"the recording's header gives the target GPUs {target.gpus if target else None}, not [0, 1]")
    for index in (0, 1):
        seen = [p for r in data["records"] if isinstance(r, GpuSample) and r.index == index
                for p in r.procs if p.pid == pid]
        if not seen or any(p.target != "llama-split" for p in seen):
            problems.append(f"GPU {index}: pid {pid} not attributed to llama-split in every sample")
    hangs = [i for i in incidents if any(f.finding == "hang" for f in i.findings)]
    if len(hangs) != 1:
        problems.append(f"{len(hangs)} hang incidents, not one")
    others = [i for i in incidents if i.target != "llama-split"]
    if others:
        problems.append(f"incidents on other targets: {[(i.target, i.title) for i in others]}")
    return problems


# --- two torch ranks over NCCL ----------------------------------------------------------------------

def run_nccl(out: Path, work: Path, source: str, device: str = "cuda", prefill_s: float = 90.0,
             busy_stall_after: float | None = None, expect_within: float | None = 60.0) -> dict[str, Any]:
    """``expect_within``: how soon the hang must come (60 s: the engine-step rule's goal).

    ``busy_stall_after`` overrides the target's threshold; with ``expect_within`` None the hang
    is expected from that busy fallback, 40 s after it at the latest (how the first run went,
    before the engine-step rule).
    """
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    targets = f"""[[targets]]
name = "tp2"
kind = "vllm"
url = "http://127.0.0.1:{port}"
[targets.canary]
interval = "5s"
[targets.restart]
method = "none"
"""
    if busy_stall_after is not None:
        targets += f'[targets.detect]\nbusy_stall_after = "{busy_stall_after:g}s"\n'
    run = DaemonRun("nccl", out, work, targets, gpu_backend="nvml" if device == "cuda" else "none")
    run.source = source
    if expect_within is None:
        if busy_stall_after is None:
            raise ValueError("without expect_within, give busy_stall_after (the fallback to expect)")
        run.notes.append(f"busy_stall_after = {busy_stall_after:g} s for this target (default 300 s): the stuck "
                         "collective is expected from the busy fallback, which must stay above the "
                         f"{prefill_s:g} s prefill")
    else:
        run.notes.append(f"the hang is expected within {expect_within:g} s (the engine-step rule)"
                         + (f"; busy_stall_after = {busy_stall_after:g} s" if busy_stall_after else ""))
    first = run.phase("load: two ranks join over NCCL, each holds its shard on its GPU (the daemon starts once "
                      "rank 0 listens: before that there is no process to attribute)")
    args = [sys.executable, str(ROOT / "scripts" / "gpu_nccl_server.py"), "--port", str(port), "--device", device]
    if device == "cpu":
        args += ["--weights-mib", "64", "--matrix", "256", "--step-pause", "0.02"]
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
    server = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(work / "nccl-server.log", "ab"),
                              start_new_session=True, env=env)
    assert server.stdout is not None
    ready = json.loads(server.stdout.readline() or b"{}")
    if not ready:
        raise RuntimeError(f"the NCCL pair did not start; see {work}/nccl-server.log")
    CLEANUP.append(lambda: os.killpg(server.pid, signal.SIGKILL))
    run.start()
    url = f"http://127.0.0.1:{port}"
    run.notes.append(f"rank 0 pid {ready['pid']} (serves HTTP), rank 1 pid {ready['rank1_pid']} (its child)")
    time.sleep(5)
    run.phase("idle with both shards held")
    time.sleep(20)
    run.phase("traffic: two streams (every token an all-reduce over both GPUs)")
    with Streams(url, "toy-tp2", 2) as streams:
        time.sleep(20)
    run.notes.append(f"traffic: {streams.tokens} tokens at {streams.rate:.0f} tokens/s over 2 streams")
    run.phase("idle")
    time.sleep(5)
    prefill = run.phase(f"long prefill: {prefill_s:g} s at 100% on both GPUs, no token, steps and prompt tokens move")
    httpx.post(url + f"/_toy/prefill?seconds={prefill_s:g}&tokens=32", timeout=10)
    sleep_until(prefill + prefill_s)
    run.phase("prefill done: its tokens flow, canaries answer again")
    time.sleep(15)
    run.quiet.append({"from": first, "to": time.time(), "note": f"load, idle, traffic, a {prefill_s:g} s prefill "
                      "at 100% without tokens, then progress"})
    with Streams(url, "toy-tp2", 1, max_tokens=100000):
        time.sleep(3)
        onset = run.phase("stuck collective: rank 1 stops joining; rank 0 spins in the all-reduce")
        httpx.post(url + "/_toy/stick", timeout=10)
        limit = expect_within if expect_within is not None else (busy_stall_after or 300.0) + 40
        item: dict[str, Any] = {"finding": "hang", "target": "tp2", "onset": onset, "raise_by": onset + limit}
        run.expect.append(item)
        item["_live_raised"] = run.wait_for("hang", "tp2", onset, limit + 5)
        time.sleep(4)
        run.phase("end")
        os.killpg(server.pid, signal.SIGKILL)
    return run.finish()
