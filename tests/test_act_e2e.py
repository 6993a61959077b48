"""End to end: the real daemon (``watchdogctl run``) acting on simulators, asserted through
``watchdogctl`` (status, history --json, resume) as an operator would.

The restart method is ``command``: ``python -m watchdog.sim.relaunch`` stops the
simulator and starts a new one on the same port (``--runs`` counts how often).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon_support import DaemonProcess, ctl, status_json, write_config
from tests.infra.system import free_port
from tests.simulator import sim_factory  # noqa: F401 - fixture
from tests.support import wait_for

FAST_CANARY = {"interval": "2s", "confirm_interval": "1s", "first_token_timeout": "3s", "stall_timeout": "3s",
               "timeout": "10s"}
POLICY = '[policy]\nmode = "act"\ncooldown = "1s"\ngrace = "15s"\nunload_timeout = "8s"\nkill_grace = "2s"\n'


class Relaunched:
    """A simulator started (and restarted) by the relaunch script, on a fixed port."""

    def __init__(self, tmp_path: Path, *sim_args: str, delay: float = 0.0, freeze: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pidfile = tmp_path / "sim.pid"
        self.runs = tmp_path / "runs"
        self.gpu_dir = tmp_path / "gpu"
        args = ["--kind", "ollama", "--gpu-dir", str(self.gpu_dir), "--load-time", "0.2", "--decode-tps", "200",
                *sim_args]
        self.first = [sys.executable, "-m", "watchdog.sim.relaunch", "--pidfile", str(self.pidfile),
                      "--port", str(self.port), "--", *args]
        self.command = [sys.executable, "-m", "watchdog.sim.relaunch", "--pidfile", str(self.pidfile),
                        "--port", str(self.port), "--runs", str(self.runs), "--delay", str(delay),
                        *(["--freeze"] if freeze else []), "--", *args]
        import subprocess

        subprocess.run(self.first, check=True, timeout=60)

    def restarts(self) -> int:
        return len(self.runs.read_text().splitlines()) if self.runs.exists() else 0

    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def inject(self, fault: str, **params: Any) -> None:
        httpx.post(f"{self.url}/_sim/fault", json={"fault": fault, **params}, timeout=5).raise_for_status()

    def stop(self) -> None:
        from watchdog.sim.relaunch import stop

        stop(self.pidfile, grace=1.0)


@pytest.fixture
def relaunched(tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[Relaunched] = []

    def make(*args: str, **kw: Any) -> Relaunched:
        sim = Relaunched(tmp_path, *args, **kw)
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.stop()


def target(url: str, **kw: Any) -> dict[str, Any]:
    return {"name": "ollama", "kind": "ollama", "url": url, "canary": dict(FAST_CANARY), **kw}


def configure(tmp_path: Path, targets: list[dict[str, Any]], gpu_dir: Path, extra: str = "") -> Path:
    config = write_config(tmp_path / "w.toml", tmp_path, targets, gpu_dir=gpu_dir)
    text = config.read_text().replace('[policy]\nmode = "observe"\n', "")
    # [targets.restart] tables must follow their target: write them from the "restart" key.
    config.write_text(POLICY + text + extra)
    return config


def restart_table(command: list[str], **kw: Any) -> str:
    lines = ["[targets.restart]", 'method = "command"', f"command = {json.dumps(command)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in kw.items()]
    return "\n".join(lines) + "\n"


def history(config: Path) -> list[dict[str, Any]]:
    result = ctl(config, "history", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    return data if isinstance(data, list) else data.get("incidents", [])


def await_incident(config: Path, predicate, timeout: float, what: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Wait for an incident; on timeout, say what the incidents were (timelines and all)."""
    try:
        return wait_for(lambda: incident_with(config, predicate), timeout, what)
    except AssertionError as exc:
        seen = [{"findings": [f["finding"] for f in i["findings"]], "actions": i["actions"],
                 "timeline": [e["summary"] for e in i["timeline"]]} for i in history(config)]
        raise AssertionError(f"{exc}; incidents: {json.dumps(seen, indent=1)[:6000]}") from None


def incident_with(config: Path, predicate) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    for incident in history(config):
        if predicate(incident):
            return incident
    return None


def load(url: str, model: str = "llama3.2:1b") -> None:
    httpx.post(f"{url}/api/generate", json={"model": model, "prompt": "hi", "stream": False},
               timeout=30).raise_for_status()


def notes(incident: dict[str, Any]) -> list[str]:
    return [e["summary"] for e in incident.get("timeline", []) if e["kind"] == "note"]


def test_a_hang_is_restarted_and_verified_by_a_canary(tmp_path: Path, relaunched) -> None:
    sim = relaunched()
    config = configure(tmp_path, [target(sim.url)], sim.gpu_dir, restart_table(sim.command))
    daemon = DaemonProcess(config, tmp_path)
    try:
        wait_for(lambda: (s := status_json(config)) and s["daemon"]["ready"], 60, "the daemon to be ready")
        load(sim.url)
        wait_for(lambda: (s := status_json(config)) and s["targets"][0]["models"], 30, "the model in /api/ps")
        old_pid = sim.pid()
        sim.inject("hang")
        incident = await_incident(config, lambda i: i["recovered_after_s"] is not None, 120,
                            "the hang restarted and recovered")
        assert sim.restarts() == 1 and sim.pid() != old_pid
        assert [f["finding"] for f in incident["findings"]] == ["hang"]
        [action] = incident["actions"]
        assert (action["action"], action["method"], action["result"]) == ("restart", "command", "ok")
        assert action["started"] and action["finished"] and action["detail"]
        assert 0 < incident["recovered_after_s"] < 120
        full = json.loads(ctl(config, "history", str(incident["id"]), "--json").stdout)
        lines = notes(full if "timeline" in full else full["incidents"][0])
        assert any("watching → acting: hang: restart" in line for line in lines)
        assert any("verifying → recovered: fixed by restart" in line for line in lines)
        # The restart the watchdog made was never itself reported as "down".
        assert not incident_with(config, lambda i: any(f["finding"] == "down" for f in i["findings"]))
        status = status_json(config)
        assert status["targets"][0]["action"]["restarts_left"] == 2
        # An operator pauses it: a manual restart is refused (exit 2), with the reason.
        paused = ctl(config, "pause", "ollama", "--for", "1h")
        assert paused.returncode == 0 and "paused until" in paused.stdout, paused.stderr
        assert status_json(config)["targets"][0]["action"]["paused_until"] is not None
        refused = ctl(config, "restart", "ollama")
        assert refused.returncode == 2 and "paused" in refused.stderr
        assert ctl(config, "pause", "nope").returncode == 2  # no such target
        assert ctl(config, "resume", "ollama").returncode == 0
        restarted = ctl(config, "restart", "ollama", timeout=90)
        assert restarted.returncode == 0 and "verified" in restarted.stdout, restarted.stdout + restarted.stderr
        assert sim.restarts() == 2
    finally:
        assert daemon.stop() == 0


def test_a_failed_unload_is_fixed_by_unload_then_kill_of_the_orphan(tmp_path: Path, sim_factory) -> None:  # noqa: F811
    sim = sim_factory("ollama", "--load-time", "0.2", gpu_dir=tmp_path / "gpu")
    slow_canary = dict(FAST_CANARY, interval="6s")  # a wide gap between canaries for the unload below
    config = configure(tmp_path, [target(sim.url, detect={"unload_grace": "3s"}, canary=slow_canary)],
                       tmp_path / "gpu",
                       '[targets.restart]\nmethod = "none"\n')
    daemon = DaemonProcess(config, tmp_path)
    try:
        wait_for(lambda: (s := status_json(config)) and s["daemon"]["ready"], 60, "the daemon to be ready")
        load(sim.url, sim.model)
        wait_for(lambda: (s := status_json(config)) and s["targets"][0]["models"]
                 and any(g["target_mem_mib"] for g in s["targets"][0]["gpus"]), 30, "the model's memory seen")
        # Right after a canary: one that chose its model from a poll taken before the unload would
        # load the model again and hide the orphan (a known race in the canary probe, not act's).
        wait_for(lambda: (s := status_json(config)) and (c := s["targets"][0]["last_canary"])
                 and c["age_s"] < 1.5, 30, "a canary that just finished", interval=0.1)
        sim.inject("failed_unload")
        httpx.post(f"{sim.url}/api/generate", json={"model": sim.model, "keep_alive": 0}, timeout=10)
        [orphan] = wait_for(lambda: [o["pid"] for o in sim.state()["orphans"]], 20, "the orphaned runner")
        incident = await_incident(config, lambda i: i["recovered_after_s"] is not None, 120,
                            "the failed unload fixed")
        assert [a["action"] for a in incident["actions"]] == ["unload", "kill_orphans"]
        # The model already left the list: asking Ollama to unload it would load it again first.
        assert [a["result"] for a in incident["actions"]] == ["skipped", "ok"]
        assert "no model is loaded" in incident["actions"][0]["detail"]
        assert str(orphan) in incident["actions"][1]["detail"]
        assert sim.state()["orphans"] == [] and sim.alive()  # the server itself was never touched
        # An operator's unload, through the same records: the memory must come back.
        sim.inject("recover")
        load(sim.url, sim.model)
        wait_for(lambda: (s := status_json(config)) and s["targets"][0]["models"]
                 and any(g["target_mem_mib"] for g in s["targets"][0]["gpus"]), 30, "the model loaded again")
        unloaded = ctl(config, "unload", "ollama", sim.model, timeout=60)
        assert unloaded.returncode == 0 and "verified" in unloaded.stdout, unloaded.stdout + unloaded.stderr
        # (Not asserted: that it stays unloaded. A canary that chose the model from a poll taken
        # just before the unload loads it again: the canary-probe race noted in the report.)
    finally:
        assert daemon.stop() == 0


def test_a_server_that_keeps_hanging_spends_the_ladder_is_paused_and_gave_up(tmp_path: Path, relaunched) -> None:
    sim = relaunched(freeze=True)  # every restart brings up a server that hangs again
    config = configure(tmp_path, [target(sim.url)], sim.gpu_dir,
                       restart_table(sim.command, grace="4s"))
    daemon = DaemonProcess(config, tmp_path)
    try:
        wait_for(lambda: (s := status_json(config)) and s["daemon"]["ready"], 60, "the daemon to be ready")
        load(sim.url)
        wait_for(lambda: (s := status_json(config)) and s["targets"][0]["models"], 30, "the model in /api/ps")
        sim.inject("hang")
        status = wait_for(lambda: (s := status_json(config)) and s["targets"][0]["action"]["paused"] and s, 180,
                          "the target paused")
        assert "gave up" in status["targets"][0]["action"]["paused_reason"]
        assert sim.restarts() == 2  # restart → restart → give up
        incident = incident_with(config, lambda i: len(i["actions"]) == 2)
        assert incident is not None and incident["recovered_after_s"] is None
        full = json.loads(ctl(config, "history", str(incident["id"]), "--json").stdout)
        assert any("gave up: the hang ladder is spent" in line for line in notes(full))
        shown = ctl(config, "status")
        assert "paused until resumed" in shown.stdout
        resumed = ctl(config, "resume", "ollama")
        assert resumed.returncode == 0, resumed.stderr
        assert not status_json(config)["targets"][0]["action"]["paused"]
    finally:
        assert daemon.stop() == 0


def test_sigkill_of_the_watchdog_mid_restart_neither_repeats_nor_forgets_it(tmp_path: Path, relaunched) -> None:
    sim = relaunched(delay=4.0)  # a slow restart: the watchdog is killed while it runs
    config = configure(tmp_path, [target(sim.url)], sim.gpu_dir, restart_table(sim.command))
    daemon = DaemonProcess(config, tmp_path)
    db = tmp_path / "state" / "state.db"

    def running_intent() -> bool:
        with sqlite3.connect(db) as conn:
            return bool(conn.execute("SELECT 1 FROM actions WHERE result IS NULL").fetchall())

    try:
        wait_for(lambda: (s := status_json(config)) and s["daemon"]["ready"], 60, "the daemon to be ready")
        load(sim.url)
        wait_for(lambda: (s := status_json(config)) and s["targets"][0]["models"], 30, "the model in /api/ps")
        sim.inject("hang")
        wait_for(running_intent, 90, "the restart's intent written")
    finally:
        daemon.kill()  # SIGKILL, mid-action
    wait_for(lambda: sim.restarts() == 1, 10, "the relaunch (it outlives the killed watchdog)")
    daemon = DaemonProcess(config, tmp_path)
    try:
        incident = await_incident(config, lambda i: i["actions"] and i["actions"][0]["result"] == "interrupted"
                                  and i["recovered_after_s"] is not None, 120,
                                  "the interrupted restart recorded and verified")
        assert [a["result"] for a in incident["actions"]] == ["interrupted"]
        full = json.loads(ctl(config, "history", str(incident["id"]), "--json").stdout)
        assert any("interrupted" in line and "not repeated" in line for line in notes(full))
        assert sim.restarts() == 1  # never carried out again
        # The restart still going on when the new watchdog started was not reported as "down".
        assert not [e for e in full["timeline"] if e["kind"] == "raised" and e["finding"] == "down"]
    finally:
        assert daemon.stop() == 0
