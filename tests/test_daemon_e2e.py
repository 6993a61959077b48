"""``watchdogctl run`` end to end: a real daemon process, a real simulator, a real NOTIFY_SOCKET."""

from __future__ import annotations

import json

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.daemon_support import DaemonProcess, NotifySocket, ctl, status_json, write_config
from tests.simulator import sim_factory  # noqa: F401 - fixture
from tests.support import wait_for

FAST_CANARY = {"interval": "2s", "confirm_interval": "1s", "first_token_timeout": "3s", "stall_timeout": "3s",
               "timeout": "10s"}


@pytest.fixture
def notify(tmp_path: Path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def ollama_target(sim) -> dict:  # type: ignore[no-untyped-def]
    return {"name": "ollama", "kind": "ollama", "url": sim.url, "log_file": str(sim.log_path),
            "canary": dict(FAST_CANARY)}


def start(config: Path, tmp_path: Path, notify: NotifySocket | None = None, watchdog_usec: int = 1_000_000):
    env = {}
    if notify is not None:
        env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(watchdog_usec)}
    return DaemonProcess(config, tmp_path, env)


def test_systemd_hears_ready_status_watchdog_and_stopping(tmp_path: Path, notify: NotifySocket, sim_factory) -> None:
    sim = sim_factory("ollama", gpu_dir=tmp_path / "gpu")
    config = write_config(tmp_path / "w.toml", tmp_path, [ollama_target(sim)], gpu_dir=tmp_path / "gpu")
    daemon = start(config, tmp_path, notify)
    try:
        ready = notify.wait("READY=1", 30)
        status = notify.wait("STATUS=", 5)
        assert "1 target" in status, status
        wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 3, 15, "three WATCHDOG=1 pings")
        # A wedged main loop stops the pings: systemd would restart the daemon.
        before = time.monotonic()
        result = ctl(config, "debug", "wedge", "--seconds", "6")
        assert result.returncode == 0, result.stderr
        notify.wait("WATCHDOG=1", 20, after=before + 6.0)  # they come back once the loop runs again
        pings = notify.times("WATCHDOG=1")
        gaps = [round(b - a, 2) for a, b in zip(pings, pings[1:])]
        usual = [g for a, b, g in zip(pings, pings[1:], gaps) if b < before]
        assert usual and max(usual) < 3.0, f"pings every 0.5 s before the wedge: gaps {gaps}"
        assert max(gaps) >= 5.5, f"pings kept coming while the main loop was wedged: gaps {gaps}"
        assert ready
    finally:
        code = daemon.stop()
    notify.wait("STOPPING=1", 5)
    assert code == 0, daemon.log_text()[-2000:]


def test_sighup_with_a_broken_config_keeps_the_old_one(tmp_path: Path, sim_factory) -> None:
    sim = sim_factory("ollama", gpu_dir=tmp_path / "gpu")
    config = write_config(tmp_path / "w.toml", tmp_path, [ollama_target(sim)], gpu_dir=tmp_path / "gpu")
    good = config.read_text()
    daemon = start(config, tmp_path)
    try:
        wait_for(lambda: (s := status_json(config)) and s["daemon"]["ready"], 30, "the daemon to be ready")
        config.write_text(good.replace('interval = "2s"', 'interval = "soon"'))
        daemon.signal(signal.SIGHUP)
        refused = wait_for(lambda: (s := status_json(config)) and s["daemon"].get("last_reload"), 20,
                           "a reload result")
        assert refused["ok"] is False
        assert 'targets[0].canary.interval: expected a duration like "30s", got "soon"' in refused["message"]
        assert daemon.alive()
        snapshot = status_json(config)
        assert snapshot is not None and [t["name"] for t in snapshot["targets"]] == ["ollama"]
        assert any("reload refused" in line.get("msg", "") for line in daemon.log())
        # A good change is taken (through the control socket this time).
        config.write_text(good.replace('name = "ollama"', 'name = "ollama-renamed"'))
        result = ctl(config, "reload")
        assert result.returncode == 0, result.stdout + result.stderr
        renamed = wait_for(lambda: (s := status_json(config)) and [t["name"] for t in s["targets"]]
                           == ["ollama-renamed"] and s, 20, "the renamed target")
        assert renamed["daemon"]["last_reload"]["ok"] is True
    finally:
        assert daemon.stop() == 0


def test_sigkill_mid_incident_keeps_it_across_a_restart(tmp_path: Path, sim_factory) -> None:
    sim = sim_factory("ollama", gpu_dir=tmp_path / "gpu")
    config = write_config(tmp_path / "w.toml", tmp_path, [ollama_target(sim)], gpu_dir=tmp_path / "gpu")
    daemon = start(config, tmp_path)
    try:
        wait_for(lambda: (s := status_json(config)) and s["daemon"]["ready"], 30, "the daemon to be ready")
        # A user loads the model; then generation hangs (/api/ps keeps answering).
        httpx.post(f"{sim.url}/api/generate", json={"model": sim.model, "prompt": "hi", "stream": False},
                   timeout=30).raise_for_status()
        wait_for(lambda: (s := status_json(config)) and s["targets"][0]["models"], 20, "the model in /api/ps")
        sim.inject("hang")
        snapshot = wait_for(lambda: (s := status_json(config)) and s["targets"][0]["incident"] and s, 60,
                            "a hang incident")
        incident = snapshot["targets"][0]["incident"]
        assert "hang" in incident["findings"]
        assert ctl(config, "status").returncode == 2  # critical
    finally:
        daemon.kill()  # SIGKILL, mid-incident
    daemon = start(config, tmp_path)
    try:
        wait_for(lambda: status_json(config), 30, "the restarted daemon")
        history = ctl(config, "history", str(incident["id"]))
        assert history.returncode == 0, history.stderr
        assert "hang" in history.stdout
        assert "open" in history.stdout.lower()
        trace = tmp_path / "incident.trace.jsonl"
        saved = ctl(config, "history", "--trace", str(incident["id"]), "-o", str(trace))
        assert saved.returncode == 0, saved.stderr
        replayed = ctl(config, "replay", str(trace))
        assert replayed.returncode == 0
        assert '"finding": "hang"' in replayed.stdout
        # The reliability report reads the state directory while the daemon runs.
        assert ctl(config, "report").returncode == 0
        wait_for(lambda: (s := status_json(config)) and s["targets"][0]["last_canary"], 30, "a canary")
    finally:
        sim.inject("recover")
        assert daemon.stop() == 0
    # A clean stop writes the canary counts (the SIGKILLed run's, not yet written, are lost).
    report = ctl(config, "report", "--json")
    assert report.returncode == 0, report.stderr
    rows = {(r["target"], r["model"]): r for r in json.loads(report.stdout)["rows"]}
    row = rows[("ollama", sim.model)]
    assert row["hangs"] == 1 and row["canaries_sent"] >= 1


def test_status_of_a_running_daemon_shows_every_field(tmp_path: Path, sim_factory) -> None:
    sim = sim_factory("ollama", gpu_dir=tmp_path / "gpu")
    config = write_config(tmp_path / "w.toml", tmp_path, [ollama_target(sim)], gpu_dir=tmp_path / "gpu")
    daemon = start(config, tmp_path)
    try:
        wait_for(lambda: (s := status_json(config)) and s["daemon"]["ready"], 30, "the daemon to be ready")
        httpx.post(f"{sim.url}/api/generate", json={"model": sim.model, "prompt": "hi", "stream": False},
                   timeout=30).raise_for_status()
        snapshot = wait_for(lambda: (s := status_json(config)) and s["targets"][0]["last_canary"]
                            and s["targets"][0]["last_canary"]["ok"] and s, 30, "a canary in the status")
        target = snapshot["targets"][0]
        assert target["state"] == "ok" and target["kind"] == "ollama"
        assert target["models"][0]["name"] == sim.model and target["models"][0]["vram_mib"] > 0
        canary = target["last_canary"]
        assert canary["ttft_s"] > 0 and canary["tokens_per_s"] > 0 and canary["age_s"] >= 0
        assert target["gpus"][0]["index"] == 0 and target["gpus"][0]["util"] is not None
        assert target["gpus"][0]["target_mem_mib"] > 0
        assert target["incident"] is None
        gpu = snapshot["gpus"][0]
        assert gpu["mem_used_mib"] > 0 and gpu["mem_total_mib"] > 0 and gpu["temp_c"] is not None
        assert gpu["xids"] == [] and gpu["targets"] == ["ollama"]
        assert snapshot["daemon"]["config_path"] == str(config)
        table = ctl(config, "status")
        assert table.returncode == 0, table.stdout + table.stderr
        for text in ("ollama", sim.model, "TTFT", "GPU"):
            assert text in table.stdout, text
        sim.inject("xid", xid=13)
        flagged = wait_for(lambda: (s := status_json(config)) and s["gpus"][0]["xids"] and s, 20, "the XID")
        assert flagged["gpus"][0]["xids"][0]["xid"] == 13
        assert ctl(config, "status").returncode == 2  # a GPU fault is critical
    finally:
        assert daemon.stop() == 0
