"""Each action against the real part it acts on: a Docker engine, systemd, processes, the simulator.

- A ``docker pause``d container running the simulator is a real hang: the Docker
  action (found by its Compose service label) unpauses and restarts it, and the
  simulator answers again.
- systemd in a container: a unit restarted (a new MainPID, active), and a unit
  that fails to start again (the outcome says so).
- Kills: an Ollama simulator's orphaned runner (the ``failed_unload`` fault) is
  proven by the listener's process tree and killed, and its GPU memory comes
  back; processes outside the target are never signalled, whatever the
  configuration says (a wrong ``process_match``, a port taken over by another
  program).
- A forced unload through Ollama's API.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from tests.infra.docker_engine import (  # noqa: F401 - fixtures
    LABEL,
    DockerEngine,
    busybox_image,
    docker_engine,
    python_mounts,
)
from tests.infra.system import free_port
from tests.infra.systemd_container import systemd_container, systemd_image  # noqa: F401 - fixtures
from tests.paths import ROOT
from tests.simulator import sim_factory  # noqa: F401 - fixture
from tests.support import wait_for
from watchdog.act.actions.docker import restart_container
from watchdog.act.actions.evidence import Proof, Refusal, prove
from watchdog.act.actions.kill import kill_processes
from watchdog.act.actions.systemd import restart_unit, show
from watchdog.act.actions.unload import request_unload
from watchdog.config.model import TargetSettings

pytestmark = pytest.mark.asyncio


def settings(url: str, **kw: object) -> TargetSettings:
    return TargetSettings(name="llm", kind="ollama", url=url, restart={"method": "none"}, **kw)


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/version", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- Docker ---------------------------------------------------------------------------------------

@pytest.mark.slow
async def test_a_paused_container_is_restarted_by_its_compose_service_and_answers_again(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path  # noqa: F811
) -> None:
    port = free_port()
    service = f"ollama-{uuid.uuid4().hex[:6]}"
    container = docker_engine.client.containers.run(
        busybox_image,
        [sys.executable, "-m", "watchdog.sim", "--kind", "ollama", "--host", "0.0.0.0", "--port", "8000",
         "--gpu-dir", str(tmp_path), "--load-time", "0.2"],
        name=f"iw-act-{uuid.uuid4().hex[:8]}", detach=True, network=docker_engine.network,
        ports={"8000/tcp": ("127.0.0.1", port)},
        volumes={**python_mounts(), str(tmp_path): {"bind": str(tmp_path), "mode": "rw"}},
        environment={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "HOME": "/tmp"},
        working_dir=str(ROOT), labels={LABEL: "1", "com.docker.compose.service": service},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(url), 60, "the simulator in its container")
        container.pause()  # a real hang: connections are accepted, nothing answers
        assert not answers(url)
        outcome = await restart_container(service, timeout=90, stop_timeout=2, base_url=docker_engine.base_url)
        assert outcome.result == "ok", outcome.detail
        assert outcome.facts["before"] == "paused" and outcome.facts["status"] == "running"
        assert outcome.facts["name"] == container.name and "restart_count" in outcome.facts
        wait_for(lambda: answers(url), 60, "the restarted simulator to answer")
        # An unknown container is a failed action with a reason, not an exception.
        missing = await restart_container("no-such-thing", timeout=30, stop_timeout=1,
                                          base_url=docker_engine.base_url)
        assert missing.result == "failed" and "no container named 'no-such-thing'" in missing.detail
    finally:
        container.remove(force=True)


# --- systemd --------------------------------------------------------------------------------------

UNIT = """[Unit]
Description=a server for the act tests

[Service]
ExecStart=/bin/sh -c 'test -e /tmp/ok && exec sleep infinity'
"""


@pytest.mark.slow
async def test_systemd_unit_restarted_and_a_unit_that_fails_to_start_again(
    systemd_container, docker_engine: DockerEngine  # noqa: F811
) -> None:
    systemctl = ("docker", "-H", docker_engine.base_url, "exec", systemd_container.id, "systemctl")
    systemd_container.write_file("/etc/systemd/system/llm.service", UNIT)
    systemd_container.exec(["touch", "/tmp/ok"])
    systemd_container.exec(["systemctl", "daemon-reload"])
    systemd_container.exec(["systemctl", "start", "llm.service"])
    before = wait_for(lambda: (p := systemd_container.show("llm.service", "MainPID", "ActiveState"))
                      and p["ActiveState"] == "active" and p, 30, "the unit to start")
    outcome = await restart_unit("llm", timeout=60, systemctl=systemctl)
    assert outcome.result == "ok", outcome.detail
    assert outcome.facts["active_state"] == "active" and outcome.facts["sub_state"] == "running"
    assert outcome.facts["main_pid"] and str(outcome.facts["main_pid"]) != before["MainPID"]
    systemd_container.exec(["rm", "/tmp/ok"])  # now it exits 1 at once: it cannot start again
    outcome = await restart_unit("llm.service", timeout=60, systemctl=systemctl)
    assert outcome.result == "failed"
    assert "did not start again" in outcome.detail and "ActiveState=failed" in outcome.detail
    props = await show("llm.service", systemctl)
    assert props["ActiveState"] == "failed"


# --- kills ----------------------------------------------------------------------------------------

def load_model(url: str, model: str) -> None:
    response = httpx.post(f"{url}/api/generate", json={"model": model, "prompt": "hi", "stream": False},
                          timeout=30)
    response.raise_for_status()


def orphan_pids(sim) -> list[int]:  # type: ignore[no-untyped-def]
    return [o["pid"] for o in sim.state().get("orphans", [])]


async def test_an_orphaned_runner_is_proven_by_the_listener_tree_and_killed(sim_factory) -> None:  # noqa: F811
    sim = sim_factory("ollama", "--load-time", "0.1")
    load_model(sim.url, sim.model)
    sim.inject("failed_unload")
    outcome = await request_unload("ollama", sim.url, sim.model, timeout=10)
    assert outcome.ok, outcome.detail
    [orphan] = wait_for(lambda: orphan_pids(sim), 10, "an orphaned runner")
    assert psutil.Process(orphan).ppid() == sim.pid
    target = settings(sim.url)
    proof = prove(orphan, target, main_pid=sim.pid, pid_served=True)
    assert isinstance(proof, Proof) and proof.how == "listener-tree", proof
    # The server itself is never a kill candidate: it is restarted, not killed.
    assert isinstance(prove(sim.pid, target, main_pid=sim.pid, pid_served=True), Refusal)
    result = await kill_processes([proof], grace=5)
    assert result.ok, result.detail
    assert orphan in result.facts["sigterm"]
    wait_for(lambda: not orphan_pids(sim), 10, "the simulator to see its runner gone (memory back)")
    assert sim.alive()
    assert answers(sim.url)


@pytest.fixture
def foreign() -> list[subprocess.Popen[bytes]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def popen(foreign: list[subprocess.Popen[bytes]], argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, **kw)  # type: ignore[call-overload]
    foreign.append(proc)
    return proc


def spawn_family(foreign: list[subprocess.Popen[bytes]], *argv: str) -> tuple[int, int]:
    """A program that is not the target, and a child of it: (parent, child)."""
    code = "import subprocess, sys, time; subprocess.Popen(['sleep', '300']); " + " ".join(argv)
    proc = subprocess.Popen([sys.executable, "-c", code])
    foreign.append(proc)
    children = wait_for(lambda: psutil.Process(proc.pid).children(), 10, "the foreign child")
    return proc.pid, children[0].pid


async def test_a_wrong_process_match_never_proves_a_foreign_process(sim_factory, foreign) -> None:  # noqa: F811
    sim = sim_factory("ollama")
    parent, child = spawn_family(foreign, "time.sleep(300)  # foreign-server")
    # process_match picks the foreign program, so attribution calls it the main process.
    target = settings(sim.url, process_match="foreign-server")
    verdict = prove(child, target, main_pid=parent, pid_served=True)
    assert isinstance(verdict, Refusal)
    assert "not the process watched as the target's main process" in verdict.reason
    # Even if the process list said the listener was the main one, the child is not its descendant.
    verdict = prove(child, target, main_pid=sim.pid, pid_served=True)
    assert isinstance(verdict, Refusal)
    assert psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE


async def test_a_port_taken_over_by_another_program_never_proves_its_children(foreign) -> None:
    port = free_port()
    code = (f"import http.server; http.server.HTTPServer(('127.0.0.1', {port}), "
            "http.server.BaseHTTPRequestHandler).serve_forever()")
    parent, child = spawn_family(foreign, code)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url, timeout=1).status_code, 10, "the other program to listen")
    target = settings(url)
    # Attribution by port names it the main process, but it never answered the target's API.
    verdict = prove(child, target, main_pid=parent, pid_served=False)
    assert isinstance(verdict, Refusal) and "has not answered the target's API" in verdict.reason
    # A unit or a container configured for the target: only its cgroup counts.
    for kw in ({"unit": "ollama.service"}, {"container": "ollama"}):
        verdict = prove(child, settings(url, **kw), main_pid=parent, pid_served=True, container_id="f" * 64)
        assert isinstance(verdict, Refusal), kw
    assert psutil.Process(child).status() != psutil.STATUS_ZOMBIE


async def test_a_reused_pid_is_never_signalled(foreign) -> None:
    proc = popen(foreign, ["sleep", "300"])
    stale = Proof(proc.pid, psutil.Process(proc.pid).create_time() - 100.0, "listener-tree", "stale")
    outcome = await kill_processes([stale], grace=1)
    assert outcome.facts["sigterm"] == [] and proc.poll() is None


async def test_sigkill_after_the_grace_for_a_process_that_ignores_sigterm(foreign) -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(300)")
    proc = popen(foreign, [sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    proof = Proof(proc.pid, psutil.Process(proc.pid).create_time(), "listener-tree", "test")
    outcome = await kill_processes([proof], grace=0.5)
    assert outcome.ok and outcome.facts["sigkill"] == [proc.pid]
    assert proc.wait(5) == -signal.SIGKILL


async def test_forced_unload_through_the_ollama_api(sim_factory) -> None:  # noqa: F811
    sim = sim_factory("ollama", "--load-time", "0.1")
    load_model(sim.url, sim.model)
    assert sim.state()["models"]
    outcome = await request_unload("ollama", sim.url, sim.model, timeout=10)
    assert outcome.ok, outcome.detail
    wait_for(lambda: not sim.state()["models"], 10, "the model to unload")
    skipped = await request_unload("vllm", sim.url, sim.model, timeout=10)
    assert skipped.result == "skipped"
    down = await request_unload("ollama", f"http://127.0.0.1:{free_port()}", "m", timeout=2)
    assert down.result == "failed"

