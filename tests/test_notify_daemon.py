"""Alerts from the real daemon: a simulated Ollama hangs and recovers; a webhook stand-in receives it all.

The daemon runs as a subprocess (``watchdogctl run``) watching the simulator;
the receiver is a plain HTTP server on loopback in a thread of the test.
``watchdogctl alert test`` and ``watchdogctl status`` talk to the daemon over
its control socket, as an operator would.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.daemon_support import DaemonProcess, ctl, status_json, write_config
from tests.simulator import sim_factory  # noqa: F401 - fixture
from tests.support import wait_for

FAST_CANARY = {"interval": "2s", "confirm_interval": "1s", "first_token_timeout": "3s", "stall_timeout": "3s",
               "timeout": "10s"}
SECRET_PATH = "/hook/s3cr3t-path-0123456789"


class StandIn:
    """A webhook receiver in a thread: keeps every JSON body with its headers."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.received.append((dict(self.headers), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[str]:
        return [body["event"] for _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_daemon_alerts_on_a_hang_and_its_recovery_and_answers_alert_test(tmp_path: Path, sim_factory) -> None:  # noqa: F811
    receiver = StandIn()
    sim = sim_factory("ollama", gpu_dir=tmp_path / "gpu")
    target = {"name": "ollama", "kind": "ollama", "url": sim.url, "log_file": str(sim.log_path),
              "canary": dict(FAST_CANARY)}
    extra = ('[[alerts]]\nname = "hook"\nkind = "webhook"\nurl = "env:IW_TEST_HOOK"\n'
             '[[alerts]]\nname = "dead"\nkind = "webhook"\nmin_severity = "critical"\nurl = "env:IW_TEST_DEAD"\n')
    config = write_config(tmp_path / "w.toml", tmp_path, [target], gpu_dir=tmp_path / "gpu", extra=extra)
    text = config.read_text().replace('incident_context = "1m"', 'incident_context = "1m"\nflap_window = "2s"')
    config.write_text(text)
    env = {"IW_TEST_HOOK": f"http://127.0.0.1:{receiver.port}{SECRET_PATH}",
           "IW_TEST_DEAD": "http://127.0.0.1:9/nobody-listens"}
    daemon = DaemonProcess(config, tmp_path, env)
    try:
        wait_for(lambda: (s := status_json(config)) and s["daemon"]["ready"], 60, "the daemon to be ready")
        # watchdogctl alert test: one sink delivers, the other cannot (exit 1, the reason, no URL).
        result = ctl(config, "alert", "test", "--timeout", "3")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "delivered" in result.stdout and "connection refused" in result.stdout
        assert "nobody-listens" not in result.stdout
        only = ctl(config, "alert", "test", "hook", "--json")
        assert only.returncode == 0, only.stdout + only.stderr
        assert json.loads(only.stdout)["results"][0]["delivered"] is True
        assert ctl(config, "alert", "test", "nope").returncode == 1
        assert receiver.events() == ["test", "test"]

        # A real hang: one "opened" message with the evidence and the GPU snapshot.
        httpx.post(f"{sim.url}/api/generate", json={"model": sim.model, "prompt": "hi", "stream": False},
                   timeout=30).raise_for_status()
        wait_for(lambda: (s := status_json(config)) and s["targets"][0]["models"], 20, "the model in /api/ps")
        sim.inject("hang")
        wait_for(lambda: "opened" in receiver.events(), 90, "the opened alert")
        headers, opened = receiver.received[receiver.events().index("opened")]
        assert opened["target"] == "ollama" and opened["finding"] == "hang" and opened["severity"] == "critical"
        assert opened["evidence"] and opened["gpus"] and opened["gpus"][0]["index"] == 0
        assert headers["Idempotency-Key"] == opened["id"]
        sim.inject("recover")
        wait_for(lambda: "resolved" in receiver.events(), 120, "the resolved alert")
        assert receiver.events().count("opened") == 1 and receiver.events().count("resolved") == 1

        status = status_json(config)
        sinks = {s["name"]: s for s in status["alerts"]}
        assert sinks["hook"]["state"] == "ok" and sinks["hook"]["pending"] == 0
        assert sinks["dead"]["state"] == "failing" and sinks["dead"]["last_error"] == "connection refused"
        human = ctl(config, "status")
        assert "Alerts" in human.stdout and "hook" in human.stdout
        assert SECRET_PATH not in human.stdout + json.dumps(status) + daemon.log_text()
    finally:
        sim.inject("recover")
        daemon.stop()
        receiver.close()
