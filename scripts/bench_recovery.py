#!/usr/bin/env python3
"""Detection and recovery of hangs, against what users run instead (issue 15).

One run of the REAL daemon (``watchdogctl run`` as a subprocess, default settings)
watching four servers at once, with hangs injected into each, staggered so that they
overlap in time:

- ``llama``: llama.cpp's own ``llama-server`` (the test fixture's binary and tiny
  model), SIGSTOPped: the kernel still accepts connections, nothing answers,
  ``/health`` included;
- ``llama-gen``: a second ``llama-server`` behind an HTTP proxy that holds only the
  generation routes: ``/health``, ``/metrics`` and ``/slots`` keep answering;
- ``ollama`` and ``vllm``: the simulator's flavours with their ``hang`` fault:
  generation never answers while ``/``, ``/api/ps`` and ``/health`` keep answering.

Beside the daemon, on the same servers and the same faults, the bench runs the
alternatives as live probe loops of its own:

- a Kubernetes liveness probe at Kubernetes' defaults: an HTTP GET every 10 s (a fixed
  ticker), 1 s timeout, failure threshold 3, on ``/health`` (Ollama: ``/``);
- a Docker HEALTHCHECK at Docker's defaults: ``curl -f URL || exit 1`` every 30 s
  (counted from the end of the previous check), killed after 30 s, 3 retries;
- the client-side timeout pattern (300 s per call, 3 attempts): a generation request
  sent at the fault's onset with a 300 s timeout, measured live on the first fault of
  each target (``--client-faults``); the 3 attempts' ~900 s follow from its parameters.

A fault's alternative fires only on failures that fault caused (a streak counted from
its onset). Per fault it records onset -> finding raised (the incident timeline's
timestamp) -> action started -> canary passes again. In ``--mode observe`` the daemon
only detects: the bench itself recovers each fault (a restart of ``llama-server`` on
its port, the simulator's ``recover``) once the daemon and the Kubernetes probe have
had their chance (``--docker-faults`` SIGSTOPs are held until Docker fires too), and
measures from that recovery to the daemon's next passing canary. In ``--mode act``
the daemon restarts the server itself through ``restart.method = "command"`` (the
fixture's ``restart_command``; ``python -m watchdog.sim.relaunch`` for a simulator:
a new process on the same port), with ``max_restarts`` raised (the default budget
would stop after 3), and the bench reads the incident's actions and its
"verifying → recovered" note; the slow alternatives get no long holds there.

Traffic goes only to 127.0.0.1; the run stops by itself (``--faults`` per target, or
after ``--minutes``, whichever comes first; SIGINT/SIGTERM stop it cleanly).

    nice -n 10 python scripts/bench_recovery.py [--faults 20] [--json out.json]
    nice -n 10 python scripts/bench_recovery.py --mode act --targets llama,llama-gen,vllm
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.infra.http_hold_proxy import HttpHoldProxy
from tests.infra.llamacpp import LlamaServer, start_llama_server
from tests.infra.system import free_port
from watchdog.config.model import CanarySettings
from watchdog.control.client import ControlClient, DaemonUnreachable
from watchdog.sim.launch import Simulator

K8S = {"period": 10.0, "timeout": 1.0, "threshold": 3}
DOCKER = {"interval": 30.0, "timeout": 30.0, "retries": 3}
CLIENT = {"timeout": 300.0, "attempts": 3}
CRITICAL = ("hang", "down")


def now() -> float:
    return time.time()


# --------------------------------------------------------------------------- the alternatives


@dataclass
class Probe:
    start: float
    end: float
    ok: bool


class ProbeLoop(threading.Thread):
    """One alternative's probe loop against one URL; records every probe and every time it fires."""

    threshold = 3

    def __init__(self, name: str, url: str, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.url = url
        self.stop_event = stop
        self.probes: list[Probe] = []
        self.fires: list[float] = []
        self.failures = 0

    def record(self, start: float, ok: bool, threshold: int) -> None:
        end = now()
        self.probes.append(Probe(start, end, ok))
        self.failures = 0 if ok else self.failures + 1
        if self.failures >= threshold:
            self.fires.append(end)  # k8s restarts the container, Docker marks it unhealthy
            self.failures = 0

    def probes_between(self, t0: float, t1: float) -> list[Probe]:
        return [p for p in self.probes if t0 <= p.start <= t1]

    def fired_between(self, t0: float, t1: float) -> float | None:
        """When this fault alone made it fire: the end of the ``threshold``-th failure in a row
        among the probes started from ``t0`` (less a second, for one in flight at the onset).

        Failures left over from a previous fault (back-to-back faults, no passing probe
        between them) are not counted: each fault is judged as if it came on its own.
        """
        streak = 0
        for probe in self.probes:
            if probe.start < t0 - 1.0 or probe.start > t1:
                continue
            streak = 0 if probe.ok else streak + 1
            if streak >= self.threshold and probe.end <= t1:
                return probe.end
        return None


class KubeletProbe(ProbeLoop):
    """httpGet liveness probe: a fixed 10 s ticker, 1 s timeout, 200-399 passes, 3 failures fire."""

    threshold = int(K8S["threshold"])

    def run(self) -> None:
        with httpx.Client(timeout=K8S["timeout"]) as client:
            next_tick = now() + random.uniform(0, K8S["period"])
            while not self.stop_event.is_set():
                self.stop_event.wait(max(0.0, next_tick - now()))
                if self.stop_event.is_set():
                    return
                start = now()
                try:
                    ok = 200 <= client.get(self.url).status_code < 400
                except httpx.HTTPError:
                    ok = False
                self.record(start, ok, int(K8S["threshold"]))
                next_tick += K8S["period"]
                while next_tick < now():  # a ticker drops the ticks it missed
                    next_tick += K8S["period"]


class DockerHealthcheck(ProbeLoop):
    """``HEALTHCHECK CMD curl -f URL || exit 1``: the interval starts when the previous check ends."""

    threshold = int(DOCKER["retries"])

    def run(self) -> None:
        while not self.stop_event.wait(DOCKER["interval"]):
            start = now()
            try:
                ok = subprocess.run(["curl", "-f", "-s", "-o", "/dev/null", self.url], check=False,
                                    timeout=DOCKER["timeout"], stdin=subprocess.DEVNULL).returncode == 0
            except subprocess.TimeoutExpired:  # Docker kills the check at its timeout
                ok = False
            self.record(start, ok, int(DOCKER["retries"]))


class ClientCall(threading.Thread):
    """One generation request with the client pattern's 300 s timeout; when it gave up, if it did."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        super().__init__(name="client-timeout", daemon=True)
        self.url, self.body = url, body
        self.started = now()
        self.failed_at: float | None = None
        self.answered_at: float | None = None
        self.error = ""

    def run(self) -> None:
        try:
            httpx.post(self.url, json=self.body, timeout=CLIENT["timeout"]).raise_for_status()
            self.answered_at = now()
        except httpx.HTTPError as exc:
            self.failed_at = now()
            self.error = type(exc).__name__


# --------------------------------------------------------------------------- the targets


class Rig:
    """One watched server: how to hang it, recover it, probe its health and call it."""

    name: str
    kind: str
    fault: str
    health_url: str
    health_survives: bool  # does the health endpoint keep answering during the hang?

    def prepare(self) -> None: ...
    def inject(self) -> None: ...
    def recover(self) -> None: ...
    def target(self, mode: str) -> dict[str, Any]: ...
    def client_call(self) -> tuple[str, dict[str, Any]]: ...
    def close(self) -> None: ...


class LlamaRig(Rig):
    def __init__(self, work: Path) -> None:
        (work / "llama").mkdir()
        self.server: LlamaServer = start_llama_server(work / "llama")
        self.name, self.kind, self.fault = "llama", "llamacpp", "SIGSTOP"
        self.health_url = f"{self.server.url}/health"
        self.health_survives = False

    def inject(self) -> None:
        self.server.pause()

    def recover(self) -> None:
        self.server.restart(wait=True)

    def target(self, mode: str) -> dict[str, Any]:
        t: dict[str, Any] = {"name": self.name, "kind": self.kind, "url": self.server.url, "gpus": [],
                             "log_file": str(self.server.log_path),
                             "process_match": rf"llama-server .*--port {self.server.port}\b"}
        if mode == "act":
            t["restart"] = {"method": "command", "command": self.server.restart_command}
        return t

    def client_call(self) -> tuple[str, dict[str, Any]]:
        return (f"{self.server.url}/v1/chat/completions",
                {"model": "tiny", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8})

    def close(self) -> None:
        self.server.close()


class LlamaGenerationRig(LlamaRig):
    """A second ``llama-server`` behind a proxy that holds only generation: ``/health`` keeps answering."""

    def __init__(self, work: Path) -> None:
        (work / "llama-gen").mkdir()
        self.server = start_llama_server(work / "llama-gen")
        self.proxy = HttpHoldProxy(self.server.url).start()
        self.name, self.kind, self.fault = "llama-gen", "llamacpp", "generation held"
        self.health_url = f"{self.proxy.url}/health"
        self.health_survives = True
        restart = self.server.restart

        def restart_and_release(wait: bool = True) -> None:  # what restart.method = "command" runs (act)
            restart(wait=wait)
            self.proxy.release()

        self.server.restart = restart_and_release  # type: ignore[method-assign]

    def inject(self) -> None:
        self.proxy.hold()

    def recover(self) -> None:
        self.server.restart(wait=True)

    def target(self, mode: str) -> dict[str, Any]:
        return {**super().target(mode), "url": self.proxy.url}

    def client_call(self) -> tuple[str, dict[str, Any]]:
        url, body = super().client_call()
        return url.replace(self.server.url, self.proxy.url), body

    def close(self) -> None:
        self.proxy.close()
        self.server.close()


class SimRig(Rig):
    """A simulator. Observe mode: the bench's child, recovered by clearing its fault. Act mode:
    started by ``python -m watchdog.sim.relaunch`` on a fixed port, which is also its restart
    command: a new process on the same port (a real restart; the old runner goes with it)."""

    def __init__(self, kind: str, gpu: int, work: Path, mode: str) -> None:
        self.name, self.kind, self.fault, self.gpu, self.mode = kind, kind, "hang", gpu, mode
        self.log_path = work / f"{kind}.log"
        self.sim: Simulator | None = None
        if mode == "act":
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            self.pidfile = work / f"{kind}.pid"
            self.relaunch = [sys.executable, "-m", "watchdog.sim.relaunch", "--pidfile", str(self.pidfile),
                             "--port", str(port), "--", "--kind", kind, "--gpu-dir", str(work / "gpu"),
                             "--gpu-index", str(gpu), "--log-file", str(self.log_path)]
            subprocess.run(self.relaunch, check=True, timeout=60, cwd=ROOT)
            if kind == "ollama":
                self.model = httpx.get(f"{self.url}/api/tags", timeout=10).json()["models"][0]["name"]
            else:
                self.model = httpx.get(f"{self.url}/v1/models", timeout=10).json()["data"][0]["id"]
        else:
            self.sim = Simulator(kind, "--gpu-index", str(gpu), gpu_dir=work / "gpu", log_path=self.log_path,
                                 workdir=work).start()
            self.url, self.model = self.sim.url, self.sim.model
        self.health_url = f"{self.url}/" if kind == "ollama" else f"{self.url}/health"
        self.health_survives = True
        self.prepare()

    def prepare(self) -> None:
        """Ollama: a model held in memory, as a server in use has (canaries go only to loaded
        models); after a restart a user's next request loads it again, and so does this."""
        if self.kind == "ollama":
            httpx.post(f"{self.url}/api/generate", json={"model": self.model, "prompt": "hi", "stream": False,
                                                          "keep_alive": -1}, timeout=60).raise_for_status()

    def _fault(self, fault: str) -> None:
        httpx.post(f"{self.url}/_sim/fault", json={"fault": fault}, timeout=10).raise_for_status()

    def inject(self) -> None:
        self._fault("hang")

    def recover(self) -> None:
        self._fault("recover")

    def target(self, mode: str) -> dict[str, Any]:
        t: dict[str, Any] = {"name": self.name, "kind": self.kind, "url": self.url, "gpus": [self.gpu],
                             "log_file": str(self.log_path)}
        if mode == "act":
            t["restart"] = {"method": "command", "command": self.relaunch}
        return t

    def client_call(self) -> tuple[str, dict[str, Any]]:
        if self.kind == "ollama":
            return (f"{self.url}/api/generate", {"model": self.model, "prompt": "Say hi.", "stream": False})
        return (f"{self.url}/v1/chat/completions",
                {"model": self.model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8})

    def close(self) -> None:
        if self.sim is not None:
            self.sim.stop()
        else:
            from watchdog.sim.relaunch import stop

            stop(self.pidfile)


# --------------------------------------------------------------------------- the daemon


def toml_value(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, lists of them: JSON spells them as TOML does


def write_config(work: Path, rigs: list[Rig], mode: str, max_restarts: int) -> Path:
    """Default settings: only paths, the simulated GPUs, the targets and (act) the restart budget."""
    lines = ["[watchdog]", f'state_dir = "{work / "state"}"', f'control_socket = "{work / "control.sock"}"',
             'gpu_backend = "sim"', f'sim_gpu_dir = "{work / "gpu"}"', "[policy]", f'mode = "{mode}"']
    if mode == "act":
        lines.append(f"max_restarts = {max_restarts}")
    for rig in rigs:
        lines.append("[[targets]]")
        target = rig.target(mode)
        restart = target.pop("restart", None)
        lines += [f"{key} = {toml_value(value)}" for key, value in target.items()]
        if restart:
            lines.append("[targets.restart]")
            lines += [f"{key} = {toml_value(value)}" for key, value in restart.items()]
    config = work / "watchdog.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


class StatusWatch(threading.Thread):
    """Polls the daemon's status once a second (in process, through its socket)."""

    def __init__(self, socket: Path, stop: threading.Event) -> None:
        super().__init__(name="status", daemon=True)
        self.client = ControlClient(socket)
        self.stop_event = stop
        self.snapshot: Any = None
        self.taken_at = 0.0
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                snap = self.client.status()
                with self.lock:
                    self.snapshot, self.taken_at = snap, now()
            except (DaemonUnreachable, httpx.HTTPError, ValueError):
                pass
            self.stop_event.wait(1.0)

    def target(self, name: str) -> tuple[Any, float]:
        with self.lock:
            snap, at = self.snapshot, self.taken_at
        if snap is None:
            return None, at
        return next((t for t in snap.targets if t.name == name), None), at


# --------------------------------------------------------------------------- one fault


@dataclass
class Fault:
    target: str
    index: int
    fault: str
    onset: float
    held_for: str = "short"  # short, docker, client
    raised: float | None = None
    finding: str | None = None
    rule: str | None = None
    action_started: float | None = None
    action: str | None = None
    recovered: float | None = None  # act: the canary that proved the fix
    released: float | None = None  # observe: the bench's own recovery
    canary_again: float | None = None
    user_answered: float | None = None  # act, Ollama: the first user request after the restart answered
    k8s_fired: float | None = None
    k8s_probes: int = 0
    k8s_failed: int = 0
    docker_fired: float | None = None
    docker_probes: int = 0
    docker_failed: int = 0
    client_failed: float | None = None
    client_error: str = ""
    complete: bool = False  # measured to the end (a fault cut short by a stop is left out of the numbers)
    notes: list[str] = field(default_factory=list)

    def since_onset(self, t: float | None) -> float | None:
        return None if t is None else round(t - self.onset, 2)


def wait_until(condition: Any, timeout: float, interval: float = 0.5) -> Any:
    deadline = now() + timeout
    while True:
        value = condition()
        if value:
            return value
        if now() > deadline:
            return None
        time.sleep(interval)


def to_ts(value: datetime) -> float:
    return value.replace(tzinfo=value.tzinfo or UTC).timestamp()


class FaultRunner(threading.Thread):
    """Injects hangs into one server, one after another, and measures each."""

    def __init__(self, rig: Rig, status: StatusWatch, control: ControlClient, args: argparse.Namespace,
                 start_delay: float, deadline: float) -> None:
        super().__init__(name=f"faults-{rig.name}", daemon=True)
        self.rig, self.status, self.control, self.args = rig, status, control, args
        self.start_delay, self.deadline = start_delay, deadline
        self.stop_event = threading.Event()
        self.k8s = KubeletProbe(f"k8s-{rig.name}", rig.health_url, self.stop_event)
        self.docker = DockerHealthcheck(f"docker-{rig.name}", rig.health_url, self.stop_event)
        self.faults: list[Fault] = []
        self.log: list[str] = []
        self.canary_interval = CanarySettings().interval

    def say(self, text: str) -> None:
        line = f"{datetime.now(UTC):%H:%M:%S} {self.rig.name}: {text}"
        self.log.append(line)
        print(line, flush=True)

    def healthy_since(self, t0: float) -> float | None:
        """When a canary that started after ``t0`` passed with no hang or down raised; None if not (yet).

        Other findings (a ``failed_unload`` seen at start-up, say) are reported, not waited out.
        """
        target, at = self.status.target(self.rig.name)
        if target is None or target.last_canary is None or not target.last_canary.ok \
                or any(f.finding in CRITICAL for f in target.findings):
            return None
        passed = at - target.last_canary.age_s
        return passed if passed > t0 else None

    def run(self) -> None:
        self.k8s.start()
        self.docker.start()
        time.sleep(self.start_delay)
        for index in range(self.args.faults):
            if now() > self.deadline:
                self.say(f"deadline reached after {index} faults")
                break
            try:
                self.one(index)
            except Exception as exc:  # noqa: BLE001 - a broken fault is reported, the run goes on
                self.say(f"fault {index} failed: {exc!r}")
                with contextlib.suppress(Exception):
                    self.rig.recover()
        self.stop_event.set()

    def one(self, index: int) -> None:
        ready_from = self.faults[-1].released or self.faults[-1].onset if self.faults else 0.0
        with contextlib.suppress(httpx.HTTPError):
            self.rig.prepare()
        if not wait_until(lambda: self.healthy_since(ready_from or 0.0), 300):
            self.say("not healthy 300 s after the last fault; injecting anyway")
        # Onset uniformly spread over the canary cycle, so the median is not a lucky phase.
        time.sleep(random.uniform(0, self.canary_interval))
        held_for = "client" if index < self.args.client_faults else "short"
        if held_for == "short" and not self.rig.health_survives and index < self.args.client_faults + \
                self.args.docker_faults:
            held_for = "docker"
        fault = Fault(self.rig.name, index, self.rig.fault, now(), held_for)
        self.rig.inject()
        client = None
        if held_for == "client":
            client = ClientCall(*self.rig.client_call())
            client.start()
        self.faults.append(fault)

        # The daemon's finding (from status; exact time from the incident's timeline below).
        # In act mode a finding can be raised and cleared by the restart between two status polls
        # (1 s apart): the incident history is read too, every 3 s.
        history_read = [now()]

        def raised() -> float | None:
            target, at = self.status.target(self.rig.name)
            if target is not None and any(f.finding in CRITICAL and to_ts(f.since) >= fault.onset - 1
                                          for f in target.findings):
                return at
            if now() - history_read[0] >= 3.0:
                history_read[0] = now()
                self.read_incident(fault, now())
            return fault.raised

        act = self.args.mode == "act"
        if not wait_until(raised, self.args.detect_cap):
            fault.notes.append(f"no hang/down raised within {self.args.detect_cap:.0f} s")
        # Hold the fault: the Kubernetes probe gets 3 probes (or fires), the long ones wait for
        # Docker / the client's timeout. In act mode the daemon's restart ends the fault.
        hold_min = fault.onset + K8S["threshold"] * K8S["period"] + 3
        caps = {"short": 60.0, "docker": 240.0, "client": CLIENT["timeout"] + 30}

        def held_enough() -> bool:
            t = now()
            if t - fault.onset > caps[held_for]:
                return True
            if t < hold_min:
                return False
            if not self.rig.health_survives and self.k8s.fired_between(fault.onset, t) is None:
                return False
            if held_for == "docker" and self.docker.fired_between(fault.onset, t) is None:
                return False
            return not (held_for == "client" and client is not None and client.is_alive())

        if act:
            # A restarted Ollama holds no model, and the watchdog never loads one to send a
            # canary to (that would take VRAM nobody asked for). Its verdict is "answers and is
            # ready"; then, as a user would, the bench's next request loads the model, and the
            # canaries resume on it.
            if self.rig.kind == "ollama" and wait_until(
                    lambda: self.read_incident(fault, now()) or fault.recovered,
                    self.args.detect_cap + 60, interval=1.0):
                fault.user_answered = self.user_request()
            recovered = wait_until(lambda: self.healthy_since(fault.onset), self.args.detect_cap + 300)
            fault.canary_again = recovered
        else:
            wait_until(held_enough, caps[held_for] + 5)
            fault.released = now()
            self.rig.recover()
            fault.canary_again = wait_until(lambda: self.healthy_since(fault.released or 0), 300)
        end = fault.released or fault.canary_again or now()
        self.measure(fault, end, client)
        # In act mode the next fault waits for the watchdog's own verdict ("verifying → recovered"):
        # a hang injected while it still verifies the last restart would be a server that hangs
        # again right after its restart, which the policy rightly treats otherwise (grace, ladder).
        if act and fault.raised is not None and not wait_until(
                lambda: self.read_incident(fault, now()) or fault.recovered, 180, interval=1.0):
            fault.notes.append("no verified recovery in the incident's timeline within 180 s")
        fault.complete = True
        self.say(self.describe(fault))

    def user_request(self) -> float | None:
        """A user's generation request after a restart (Ollama loads the model for it): when it answered."""
        url, body = self.rig.client_call()
        try:
            httpx.post(url, json={**body, "keep_alive": -1}, timeout=120).raise_for_status()
        except httpx.HTTPError:
            return None
        return now()

    def measure(self, fault: Fault, end: float, client: ClientCall | None) -> None:
        k8s = self.k8s.probes_between(fault.onset, end)
        docker = self.docker.probes_between(fault.onset, end)
        fault.k8s_probes, fault.k8s_failed = len(k8s), sum(not p.ok for p in k8s)
        fault.docker_probes, fault.docker_failed = len(docker), sum(not p.ok for p in docker)
        fault.k8s_fired = self.k8s.fired_between(fault.onset, end + K8S["timeout"] + 0.5)
        fault.docker_fired = self.docker.fired_between(fault.onset, end + DOCKER["timeout"] + 0.5)
        if client is not None:
            client.join(5)
            fault.client_failed = client.failed_at
            fault.client_error = client.error or ("answered" if client.answered_at else "still waiting")
        self.read_incident(fault, end)

    def read_incident(self, fault: Fault, end: float) -> None:
        """The finding's time, the first action and the verified recovery, from ``history``."""
        try:
            incidents = self.control.incidents(since="3h", limit=200, timeline=True)
        except (DaemonUnreachable, httpx.HTTPError) as exc:
            fault.notes.append(f"history unreadable: {exc}")
            return
        for incident in incidents:
            if incident.target != self.rig.name:
                continue
            for entry in incident.timeline:
                at = to_ts(entry.at)
                if entry.evidence.get("recovered_after_s") is not None and fault.raised is not None \
                        and at >= fault.raised and (fault.recovered is None or at < fault.recovered):
                    fault.recovered = at  # "verifying → recovered": this episode's verifying canary passed
                if entry.kind == "raised" and entry.finding in CRITICAL and fault.onset <= at <= end \
                        and (fault.raised is None or at < fault.raised):
                    fault.raised, fault.finding = at, entry.finding
                    fault.rule = str(entry.evidence.get("rule") or "")
            for action in getattr(incident, "actions", []) or []:
                started = to_ts(action.started)
                if fault.onset <= started <= end and (fault.action_started is None or started < fault.action_started):
                    fault.action_started, fault.action = started, f"{action.action} ({action.method}): {action.result}"

    def describe(self, f: Fault) -> str:
        def s(t: float | None) -> str:
            v = f.since_onset(t)
            return "-" if v is None else f"{v:.1f}s"

        parts = [f"#{f.index} {f.fault} ({f.held_for})", f"raised {s(f.raised)} {f.finding or ''}/{f.rule or ''}"]
        if f.action_started:
            parts.append(f"action {s(f.action_started)}")
        if f.released:
            parts.append(f"released {s(f.released)}")
        if f.user_answered:
            parts.append(f"user request answered {s(f.user_answered)}")
        parts.append(f"canary again {s(f.canary_again)}")
        parts.append(f"k8s {s(f.k8s_fired)} ({f.k8s_failed}/{f.k8s_probes} failed)")
        parts.append(f"docker {s(f.docker_fired)} ({f.docker_failed}/{f.docker_probes} failed)")
        if f.held_for == "client":
            parts.append(f"client {s(f.client_failed)} {f.client_error}")
        return "; ".join(parts + f.notes)


# --------------------------------------------------------------------------- the numbers


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "median": pct(values, 50), "p95": pct(values, 95),
            "min": min(values) if values else None, "max": max(values) if values else None}


def summarise(runners: list[FaultRunner], mode: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for runner in runners:
        faults = [f for f in runner.faults if f.complete]
        n = len(faults)

        def delays(attr: str, among: list[Fault] | None = None, faults: list[Fault] = faults) -> list[float]:
            return [v for f in (among if among is not None else faults)
                    if (v := f.since_onset(getattr(f, attr))) is not None]

        row: dict[str, Any] = {"faults": n, "fault": runner.rig.fault, "health_url": runner.rig.health_url,
                               "health_answers_during_hang": runner.rig.health_survives}
        row["watchdog_raised"] = stats(delays("raised"))
        row["watchdog_findings"] = sorted({f"{f.finding}/{f.rule}" for f in faults if f.finding})
        if mode == "act":  # recovered: the daemon's verifying canary (recovered_after_s), else the status's
            row["watchdog_action_started"] = stats(delays("action_started"))
            row["watchdog_recovered"] = stats([v for f in faults if (v := f.since_onset(f.recovered or f.canary_again))
                                               is not None])
            row["canary_passes_again"] = stats(delays("canary_again"))
            if any(f.user_answered for f in faults):
                row["user_request_answered"] = stats(delays("user_answered"))
        else:
            row["bench_recovery_to_canary"] = stats([f.canary_again - f.released for f in faults
                                                     if f.canary_again and f.released])
        k8s_chances = [f for f in faults if f.k8s_probes >= K8S["threshold"]]
        row["k8s"] = {**stats(delays("k8s_fired", k8s_chances)), "faults_with_3_probes": len(k8s_chances),
                      "fired": sum(f.k8s_fired is not None for f in k8s_chances),
                      "probes_failed": sum(f.k8s_failed for f in faults),
                      "probes": sum(f.k8s_probes for f in faults)}
        docker_long = [f for f in faults if f.held_for in ("docker", "client")]
        row["docker"] = {**stats(delays("docker_fired", docker_long)), "faults_held_for_it": len(docker_long),
                         "fired": sum(f.docker_fired is not None for f in docker_long),
                         "fired_on_short_faults": sum(f.docker_fired is not None for f in faults
                                                      if f.held_for == "short"),
                         "probes_failed": sum(f.docker_failed for f in faults),
                         "probes": sum(f.docker_probes for f in faults)}
        client = [f for f in faults if f.held_for == "client"]
        row["client_timeout"] = {**stats(delays("client_failed", client)), "faults_held_for_it": len(client),
                                 "errors": [f.client_error for f in client]}
        out[runner.rig.name] = row
    return out


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(summary: dict[str, Any], mode: str) -> str:
    lines = ["| target (fault) | mechanism | fired | median s | p95 s | max s |", "|---|---|---|---|---|---|"]
    for name, row in summary.items():
        head = f"{name} ({row['fault']}, n={row['faults']})"
        w = row["watchdog_raised"]
        lines.append(f"| {head} | watchdog: finding raised | {w['n']}/{row['faults']} | {fmt(w['median'])} | "
                     f"{fmt(w['p95'])} | {fmt(w['max'])} |")
        if mode == "act":
            for key, label in (("watchdog_action_started", "watchdog: action started"),
                               ("watchdog_recovered", "watchdog: verified recovered (its verdict)"),
                               ("user_request_answered", "a user's request answered (loads the model)"),
                               ("canary_passes_again", "a canary passes again (status)")):
                if key not in row:
                    continue
                s = row[key]
                lines.append(f"| | {label} | {s['n']}/{row['faults']} | {fmt(s['median'])} | {fmt(s['p95'])} | "
                             f"{fmt(s['max'])} |")
        else:
            s = row["bench_recovery_to_canary"]
            lines.append(f"| | (observe) bench's recovery → daemon's canary passes | {s['n']}/{row['faults']} | "
                         f"{fmt(s['median'])} | {fmt(s['p95'])} | {fmt(s['max'])} |")
        k = row["k8s"]
        if mode == "act" and not k["faults_with_3_probes"]:
            lines.append("| | k8s liveness (10 s/1 s/3) | not reached: the watchdog's restart came first | - | - | - |")
        elif k["fired"] == 0 and k["faults_with_3_probes"]:
            lines.append(f"| | k8s liveness (10 s/1 s/3) | never (0/{k['faults_with_3_probes']}; "
                         f"{k['probes_failed']}/{k['probes']} probes failed) | never | never | never |")
        else:
            lines.append(f"| | k8s liveness (10 s/1 s/3) | {k['fired']}/{k['faults_with_3_probes']} | "
                         f"{fmt(k['median'])} | {fmt(k['p95'])} | {fmt(k['max'])} |")
        d = row["docker"]
        if d["faults_held_for_it"] and d["fired"] == 0:
            lines.append(f"| | Docker HEALTHCHECK (30 s/30 s/3) | never (0/{d['faults_held_for_it']} held ≥ 330 s; "
                         f"{d['probes_failed']}/{d['probes']} checks failed) | never | never | never |")
        else:
            lines.append(f"| | Docker HEALTHCHECK (30 s/30 s/3) | {d['fired']}/{d['faults_held_for_it']} held for it | "
                         f"{fmt(d['median'])} | {fmt(d['p95'])} | {fmt(d['max'])} |")
        c = row["client_timeout"]
        lines.append(f"| | client timeout (300 s × 3), 1st attempt live | {c['n']}/{c['faults_held_for_it']} | "
                     f"{fmt(c['median'])} | {fmt(c['p95'])} | {fmt(c['max'])} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def start_daemon(config: Path, work: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("NOTIFY_SOCKET", None)
    log = open(work / "daemon.log", "wb")  # noqa: SIM115 - closed with the process
    daemon = subprocess.Popen([sys.executable, "-m", "watchdog", "--config", str(config), "--log-format", "json",
                               "run"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    client = ControlClient(work / "control.sock")
    deadline = now() + 90
    while now() < deadline:
        with contextlib.suppress(DaemonUnreachable, httpx.HTTPError):
            if client.status().daemon.ready:
                return daemon
        if daemon.poll() is not None:
            break
        time.sleep(0.5)
    daemon.kill()
    raise SystemExit(f"the daemon did not become ready; log: {(work / 'daemon.log').read_text()[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", type=int, default=20, help="hangs per target (default 20)")
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="stop injecting after this long (default 60); a fault under way is finished")
    parser.add_argument("--client-faults", type=int, default=1,
                        help="faults per target held until the client's 300 s timeout fires (default 1)")
    parser.add_argument("--docker-faults", type=int, default=2,
                        help="further faults per target whose health dies, held until Docker's check fires (2)")
    parser.add_argument("--detect-cap", type=float, default=180.0, help="give up waiting for a finding after this")
    parser.add_argument("--mode", choices=("observe", "act"), default="observe")
    parser.add_argument("--max-restarts", type=int, default=100,
                        help="act mode: the restart budget per hour (the default 3 would stop acting after 3 faults)")
    parser.add_argument("--targets", default="llama,llama-gen,ollama,vllm",
                        help="any of llama (SIGSTOP), llama-gen (a second llama-server behind a proxy that holds "
                             "only generation), ollama, vllm (the simulator's hang)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench-recovery.json")
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    if args.mode == "act":  # the daemon's restart ends each fault: nothing is held for the slow alternatives
        args.client_faults = args.docker_faults = 0
    random.seed(args.seed)
    # SIGINT or SIGTERM (even when started in the background, where SIGINT is ignored): stop
    # injecting, stop the daemon and the servers, and report what was measured.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="iw-bench-recovery-"))
    started = now()
    rigs: list[Rig] = []
    daemon = None
    stop = threading.Event()
    runners: list[FaultRunner] = []
    try:
        names = args.targets.split(",")
        for gpu, name in enumerate(names):
            if name in ("llama", "llama-gen"):
                rigs.append(LlamaRig(work) if name == "llama" else LlamaGenerationRig(work))
            else:
                rigs.append(SimRig(name, gpu, work, args.mode))
        config = write_config(work, rigs, args.mode, args.max_restarts)
        daemon = start_daemon(config, work)
        print(f"daemon ready (mode {args.mode}, defaults); work dir {work}", flush=True)
        status = StatusWatch(work / "control.sock", stop)
        status.start()
        deadline = started + args.minutes * 60
        runners = [FaultRunner(rig, status, ControlClient(work / "control.sock", timeout=30), args,
                               start_delay=5.0 * i, deadline=deadline) for i, rig in enumerate(rigs)]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join()
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", flush=True)
    finally:
        stop.set()
        for runner in runners:
            runner.stop_event.set()
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.wait(30)
        for rig in rigs:
            with contextlib.suppress(Exception):
                rig.close()
    summary = summarise(runners, args.mode)
    result = {
        "bench": "recovery", "mode": args.mode, "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
        "load_avg_at_end": os.getloadavg(), "wall_s": round(now() - started, 1), "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "alternatives": {"k8s": K8S, "docker": DOCKER, "client": CLIENT},
        "summary": summary,
        "probes": {f"{kind}:{r.rig.name}": [[round(p.start - started, 2), round(p.end - started, 2), p.ok]
                                             for p in loop.probes]
                   for r in runners for kind, loop in (("k8s", r.k8s), ("docker", r.docker))},
        "started": started,
        "faults": [{**asdict(f), **{f"{k}_s": f.since_onset(getattr(f, k)) for k in (
            "raised", "action_started", "released", "canary_again", "k8s_fired", "docker_fired", "client_failed",
            "recovered")}} for r in runners for f in r.faults],
    }
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print()
    print(f"{sum(len(r.faults) for r in runners)} hangs in {result['wall_s']:.0f} s, mode {args.mode}; "
          f"seconds from the fault's onset")
    print(table(summary, args.mode))
    print("\nclient-side timeout (300 s × 3 attempts): the first attempt fails at ≥ 300 s (live above); "
          "the caller gives up at ≥ 900 s plus its retry backoff (from the parameters, not measured)")
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
