"""The real daemon in front of llama.cpp's real C++ server (``llama-server``), not our simulator.

Every test runs ``watchdogctl run`` as a subprocess against a ``llama-server`` built from
llama.cpp's source (``scripts/build_llama_server.sh``) serving a tiny random model, and
injects faults from outside: SIGSTOP, a proxy that stops forwarding, SIGKILL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon_support import DaemonProcess, ctl, status_json, write_config
from tests.infra.http_hold_proxy import HttpHoldProxy
from tests.infra.llamacpp import LlamaServer, llama_server, tiny_gguf  # noqa: F401 - fixtures
from tests.infra.tcp_proxy import TcpProxy
from tests.paths import ROOT
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# Canaries for the fault tests: a canary every 3 s with 5 s to its first token, so that a
# hang is found in well under a minute. The tiny model answers in about 0.1 s, so 5 s is
# still a generous deadline on a loaded 2-core machine.
FAULT_CANARY = {"interval": "3s", "confirm_interval": "1s", "first_token_timeout": "5s",
                "stall_timeout": "5s", "timeout": "20s"}


def llama_target(server: LlamaServer, url: str | None = None, canary: dict[str, Any] | None = None) -> dict[str, Any]:
    """A llamacpp target for ``server`` (through ``url`` if a proxy stands in front of it).

    The process is named by its command line: with a proxy in front, the process
    listening on the URL's port is the test itself. Observe mode: nothing acts (the
    act-mode tests at the end restart it through ``server.restart_command``).
    """
    return {
        "name": "llama",
        "kind": "llamacpp",
        "url": url or server.url,
        "log_file": str(server.log_path),
        "process_match": rf"llama-server .*--port {server.port}\b",
        "restart": {"method": "none"},
        "canary": dict(canary or FAULT_CANARY),
    }


def start_daemon(tmp_path: Path, target: dict[str, Any]) -> tuple[Path, DaemonProcess]:
    config = write_config(tmp_path / "w.toml", tmp_path, [target], gpu_dir=None)
    daemon = DaemonProcess(config, tmp_path)
    wait_for(lambda: (s := status_json(config)) and s["daemon"]["ready"], 60, "the daemon to be ready")
    return config, daemon


def target_status(config: Path) -> dict[str, Any] | None:
    snapshot = status_json(config)
    return snapshot["targets"][0] if snapshot else None


def passing_canary(config: Path, newer_than_s: float = 60.0) -> dict[str, Any] | None:
    """The target's status once its last canary passed within ``newer_than_s`` seconds."""
    target = target_status(config)
    canary = target and target["last_canary"]
    return target if canary and canary["ok"] and canary["age_s"] <= newer_than_s else None


def raised(config: Path, finding: str) -> dict[str, Any] | None:
    """The target's status once ``finding`` is raised on it."""
    target = target_status(config)
    return target if target and any(f["finding"] == finding for f in target["findings"]) else None


def incidents(config: Path) -> list[dict[str, Any]]:
    result = ctl(config, "history", "--json", "--since", "1h")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def raised_entries(config: Path, finding: str) -> list[dict[str, Any]]:
    """Every timeline entry that raised ``finding``, across the incidents."""
    return [entry for incident in incidents(config) for entry in incident["timeline"]
            if entry["kind"] == "raised" and entry["finding"] == finding]


def stream_tokens(url: str, index: int, max_tokens: int) -> int:
    """One streaming chat completion through the openai client; the number of chunks with text."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="none", timeout=300, max_retries=0)
    chunks = 0
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": f"Write story number {index}."}],
        max_tokens=max_tokens, stream=True, extra_body={"ignore_eos": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
    return chunks


def test_idle_then_concurrent_streams_raise_nothing(tmp_path: Path, llama_server: LlamaServer) -> None:
    # Idle for two minutes with a canary every 5 s rather than the default 15 s: 24
    # canaries, as many chances to misjudge an idle server as six minutes at the default
    # cadence; polls (1 s) and canary deadlines otherwise stay what users run.
    canary = {"interval": "5s"}
    config, daemon = start_daemon(tmp_path, llama_target(llama_server, canary=canary))
    try:
        wait_for(lambda: passing_canary(config), 60, "a passing canary")
        idle_until = time.monotonic() + 120
        while time.monotonic() < idle_until:  # observe the idle server, failing at the first finding
            target = target_status(config)
            assert target is not None and not target["findings"], target
            assert daemon.alive(), daemon.log_text()[-3000:]
            time.sleep(1)
        idle = passing_canary(config, newer_than_s=15)
        assert idle is not None, target_status(config)
        assert idle["server"]["state"] == "ready" and idle["models"], idle

        # Then six concurrent streams of 500 tokens on two slots: two generate while four
        # wait their turn, for half a minute or so.
        busy: list[dict[str, Any]] = []
        with ThreadPoolExecutor(6) as pool:
            streams = [pool.submit(stream_tokens, llama_server.url, i, 500) for i in range(6)]
            while not all(s.done() for s in streams):
                target = target_status(config)
                assert target is not None and not target["findings"], target
                if target["server"] and (target["server"]["running"] or 0) > 0:
                    busy.append(target["server"])
                time.sleep(0.5)
            counts = [s.result() for s in streams]
        assert all(count > 100 for count in counts), counts
        assert busy, "the daemon never saw a request running (from /slots and /metrics)"
        assert max(s["running"] for s in busy) == 2, busy  # -np 2: two slots busy at once
        assert max(s["waiting"] or 0 for s in busy) >= 1, busy  # llamacpp:requests_deferred
        print(f"traffic: {counts} chunks per stream; the daemon saw running/waiting "
              f"{sorted({(s['running'], s['waiting']) for s in busy})} in {len(busy)} status reads")
        # A canary after the traffic passes, and nothing was ever raised.
        wait_for(lambda: passing_canary(config, newer_than_s=4), 60, "a passing canary after the traffic")
        assert incidents(config) == []
        assert ctl(config, "status").returncode == 0
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def test_sigstop_is_a_hang_and_sigcont_clears_it(tmp_path: Path, llama_server: LlamaServer) -> None:
    config, daemon = start_daemon(tmp_path, llama_target(llama_server))
    try:
        wait_for(lambda: passing_canary(config), 60, "a passing canary")
        llama_server.pause()
        stopped_at = time.monotonic()
        # The kernel still accepts connections; nothing answers.
        with pytest.raises(httpx.TimeoutException):
            httpx.get(f"{llama_server.url}/health", timeout=2)
        hung = wait_for(lambda: raised(config, "hang"), 90, "hang raised on the stopped server")
        took = time.monotonic() - stopped_at
        assert hung["state"] == "critical"
        assert not any(f["finding"] == "down" for f in hung["findings"]), hung["findings"]
        assert ctl(config, "status").returncode == 2
        entries = raised_entries(config, "hang")
        assert entries, incidents(config)
        print(f"hang raised {took:.1f} s after SIGSTOP ({entries[0]['evidence'].get('rule')}): "
              f"{entries[0]['summary']}")
        llama_server.resume()
        wait_for(lambda: (t := target_status(config)) and not t["findings"], 60, "the hang to clear after SIGCONT")
        assert passing_canary(config, newer_than_s=30)
    finally:
        llama_server.resume()
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def test_api_that_never_answers_is_a_hang_from_the_canaries(tmp_path: Path, llama_server: LlamaServer) -> None:
    with TcpProxy(llama_server.port) as proxy:
        config, daemon = start_daemon(tmp_path, llama_target(llama_server, url=proxy.url))
        try:
            wait_for(lambda: passing_canary(config), 60, "a passing canary through the proxy")
            proxy.hold()
            held_at = time.monotonic()
            hung = wait_for(lambda: raised(config, "hang"), 90, "hang raised while the API is silent")
            took = time.monotonic() - held_at
            # The server itself is alive, running and answering: only its API, as the watchdog
            # sees it, is silent. So the hang can only have come from the canaries.
            assert llama_server.alive()
            assert httpx.get(f"{llama_server.url}/health", timeout=10).json() == {"status": "ok"}
            entry = raised_entries(config, "hang")[0]
            assert entry["evidence"]["rule"] == "canaries", entry
            assert proxy.held_connections >= 2
            print(f"hang raised {took:.1f} s after the proxy stopped forwarding: {hung['findings'][0]['summary']}")
            proxy.release()
            wait_for(lambda: (t := target_status(config)) and not t["findings"], 60, "the hang to clear")
        finally:
            assert daemon.stop() == 0, daemon.log_text()[-3000:]


def test_generation_held_while_health_answers_is_a_hang_from_the_canaries(tmp_path: Path,
                                                                          llama_server: LlamaServer) -> None:
    # The case a /health probe cannot see: the HTTP layer answers, completions never come.
    with HttpHoldProxy(llama_server.url) as proxy:
        config, daemon = start_daemon(tmp_path, llama_target(llama_server, url=proxy.url))
        try:
            wait_for(lambda: passing_canary(config), 60, "a passing canary through the proxy")
            proxy.hold()
            held_at = time.monotonic()
            hung = wait_for(lambda: raised(config, "hang"), 90, "hang raised while generation is held")
            took = time.monotonic() - held_at
            # Through the proxy, what a liveness probe asks still answers.
            assert httpx.get(f"{proxy.url}/health", timeout=5).json() == {"status": "ok"}
            assert httpx.get(f"{proxy.url}/slots", timeout=5).status_code == 200
            assert proxy.held >= 2
            entry = raised_entries(config, "hang")[0]
            assert entry["evidence"]["rule"] == "canaries", entry
            print(f"hang raised {took:.1f} s after generation was held, /health answering: "
                  f"{hung['findings'][0]['summary']}")
            proxy.release()
            wait_for(lambda: (t := target_status(config)) and not t["findings"], 60, "the hang to clear")
        finally:
            assert daemon.stop() == 0, daemon.log_text()[-3000:]


def test_killed_server_is_down(tmp_path: Path, llama_server: LlamaServer) -> None:
    config, daemon = start_daemon(tmp_path, llama_target(llama_server))
    try:
        wait_for(lambda: passing_canary(config), 60, "a passing canary")
        llama_server.kill()
        killed_at = time.monotonic()
        down = wait_for(lambda: raised(config, "down"), 90, "down raised on the killed server")
        took = time.monotonic() - killed_at
        assert down["state"] == "critical"
        assert not any(f["finding"] == "hang" for f in down["findings"]), down["findings"]
        entry = raised_entries(config, "down")[0]
        print(f"down raised {took:.1f} s after SIGKILL ({entry['evidence'].get('rule')}): {entry['summary']}")
        # Started again by hand (on the same port), it recovers.
        llama_server.start(wait=True)
        wait_for(lambda: (t := target_status(config)) and not t["findings"], 90, "down to clear")
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def test_discover_finds_it_and_its_config_works(tmp_path: Path, llama_server: LlamaServer) -> None:
    found = subprocess.run(
        [sys.executable, "-m", "watchdog", "discover", "--ports", str(llama_server.port), "--no-docker"],
        check=False, capture_output=True, text=True, timeout=60, cwd=ROOT, env=dict(os.environ, COLUMNS="200"),
    )
    assert found.returncode == 0, found.stdout + found.stderr
    assert "llamacpp" in found.stderr and llama_server.url in found.stderr, found.stderr
    assert 'kind = "llamacpp"' in found.stdout and f'url = "{llama_server.url}"' in found.stdout, found.stdout
    config = tmp_path / "discovered.toml"
    config.write_text(found.stdout)
    checked = ctl(config, "config", "check", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # It works: the same config with the daemon's paths moved into the test's folder
    # watches the server, and its canary passes.
    assert "[watchdog]" not in found.stdout  # the paths below would be a second table
    config.write_text(f'[watchdog]\nstate_dir = "{tmp_path / "state"}"\n'
                      f'control_socket = "{tmp_path / "control.sock"}"\n{found.stdout}')
    daemon = DaemonProcess(config, tmp_path)
    try:
        target = wait_for(lambda: passing_canary(config), 90, "a passing canary with the discovered config")
        assert target["kind"] == "llamacpp" and target["state"] == "ok", target
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def test_restart_command_restarts_a_stopped_server_on_the_same_port(llama_server: LlamaServer) -> None:
    # What restart.method = "command" will run once the watchdog acts: here run by hand.
    old_pid = llama_server.pid
    llama_server.pause()
    done = subprocess.run(llama_server.restart_command, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == f"ok {llama_server.pid}" and llama_server.pid != old_pid, done.stdout
    assert httpx.get(f"{llama_server.url}/health", timeout=10).json() == {"status": "ok"}
    assert not Path(f"/proc/{old_pid}").exists()  # killed and reaped, not left a zombie


# --- act mode: the daemon restarts the real server through its restart command ------------------

ACT_POLICY = '[policy]\nmode = "act"\ncooldown = "1s"\ngrace = "30s"\n'


def start_acting_daemon(tmp_path: Path, server: LlamaServer) -> tuple[Path, DaemonProcess]:
    """A daemon in act mode whose target restarts ``server`` on its port (``restart_command``)."""
    target = llama_target(server)
    target.pop("restart")
    config = write_config(tmp_path / "w.toml", tmp_path, [target], gpu_dir=None)
    text = config.read_text().replace('[policy]\nmode = "observe"\n', "")
    restart = ("[targets.restart]\nmethod = \"command\"\n"
               f"command = {json.dumps(server.restart_command)}\ntimeout = \"90s\"\n")
    config.write_text(ACT_POLICY + text + restart)
    daemon = DaemonProcess(config, tmp_path)
    wait_for(lambda: (s := status_json(config)) and s["daemon"]["ready"], 60, "the daemon to be ready")
    return config, daemon


def recovered(config: Path, finding: str) -> dict[str, Any] | None:
    """The first incident of ``finding`` once a verification canary passed after its action."""
    for incident in incidents(config):
        if any(f["finding"] == finding for f in incident["findings"]) and incident["recovered_after_s"] is not None:
            return incident
    return None


def assert_restarted(incident: dict[str, Any], old_pid: int, server: LlamaServer) -> None:
    restarts = [a for a in incident["actions"] if a["action"] == "restart"]
    assert restarts and (restarts[0]["method"], restarts[0]["result"]) == ("command", "ok"), incident["actions"]
    assert restarts[0]["started"] and restarts[0]["finished"]
    assert server.pid != old_pid and server.alive()
    assert 0 < incident["recovered_after_s"] < 180


def test_sigstop_hang_is_restarted_by_the_daemon_and_a_canary_passes_again(
        tmp_path: Path, llama_server: LlamaServer) -> None:
    config, daemon = start_acting_daemon(tmp_path, llama_server)
    try:
        wait_for(lambda: passing_canary(config), 60, "a passing canary")
        old_pid = llama_server.pid
        llama_server.pause()
        stopped_at = time.monotonic()
        incident = wait_for(lambda: recovered(config, "hang"), 180, "the hang restarted and recovered")
        took = time.monotonic() - stopped_at
        assert_restarted(incident, old_pid, llama_server)
        assert not any(f["finding"] == "down" for f in incident["findings"]), incident["findings"]
        assert httpx.get(f"{llama_server.url}/health", timeout=10).json() == {"status": "ok"}
        seen_at = time.monotonic()
        wait_for(lambda: passing_canary(config, newer_than_s=time.monotonic() - seen_at), 60,
                 "a passing canary after the recovery was seen")
        # The reaped pid is not hung again once the new server answers (bench_recovery: "process N
        # is stopped for 10 s" raised from the old pid's samples after the recovery).
        entries = raised_entries(config, "hang")
        assert len(entries) == 1, [e["summary"] for e in entries]
        print(f"SIGSTOP → hang → restart → recovered in {took:.1f} s "
              f"(recovered_after_s {incident['recovered_after_s']:.1f})")
    finally:
        llama_server.resume()
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def test_killed_server_is_down_then_restarted_and_recovered(tmp_path: Path, llama_server: LlamaServer) -> None:
    config, daemon = start_acting_daemon(tmp_path, llama_server)
    try:
        wait_for(lambda: passing_canary(config), 60, "a passing canary")
        old_pid = llama_server.pid
        llama_server.kill()
        killed_at = time.monotonic()
        incident = wait_for(lambda: recovered(config, "down"), 180, "down restarted and recovered")
        took = time.monotonic() - killed_at
        assert_restarted(incident, old_pid, llama_server)
        wait_for(lambda: (t := target_status(config)) and not t["findings"], 60, "down to clear")
        print(f"SIGKILL → down → restart → recovered in {took:.1f} s")
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
