"""``watchdogctl discover`` against real servers: simulators on free ports, in containers, hung."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.infra.docker_engine import DockerEngine, busybox_image, docker_engine, python_containers  # noqa: F401
from tests.infra.system import free_port
from tests.simulator import Simulator, sim_factory  # noqa: F401 - fixture
from tests.support import wait_for
from watchdog.discover import WELL_KNOWN_PORTS


def run_discover(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real CLI in a fresh process, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "watchdog", "discover", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def targets_by_url(stdout: str) -> dict[str, dict]:  # type: ignore[type-arg]
    return {t["url"]: t for t in tomllib.loads(stdout).get("targets", [])}


def config_check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "discovered.toml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "watchdog", "config", "check", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def _port(sim: Simulator) -> int:
    return int(sim.url.rsplit(":", 1)[1])


def test_finds_each_kind_of_server_with_its_process_and_writes_a_valid_config(sim_factory, tmp_path) -> None:
    sims = {kind: sim_factory(kind) for kind in ("ollama", "vllm", "llamacpp")}
    ports = ",".join(str(_port(sim)) for sim in sims.values())
    done = run_discover("--no-docker", "--ports", ports)

    assert done.returncode == 0, done.stderr
    found = targets_by_url(done.stdout)
    for kind, sim in sims.items():
        assert found[sim.url]["kind"] == kind, done.stdout
        # A bare process: nothing to restart it through, which the config says.
        assert found[sim.url]["restart"] == {"method": "none"}
        assert f"pid {sim.pid} " in done.stderr, done.stderr
    assert "Models it serves: Qwen/Qwen2.5-0.5B-Instruct" in done.stdout  # the vLLM simulator's model
    checked = config_check(tmp_path, done.stdout)
    assert checked.returncode == 0, checked.stderr
    assert "policy: observe" in checked.stdout


def test_reports_what_is_not_an_inference_server_and_what_does_not_answer(sim_factory) -> None:
    web_port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(web_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    hung = sim_factory("ollama")
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", web_port), timeout=1).close() or True, 10,
                 "the plain web server to listen")
        closed_port = free_port()
        os.kill(hung.pid, signal.SIGSTOP)  # a real hang: the kernel accepts, nobody answers
        done = run_discover("--no-docker", "--timeout", "0.5", "--ports", f"{web_port},{closed_port},{_port(hung)}")
    finally:
        os.kill(hung.pid, signal.SIGCONT)
        web.terminate()
        web.wait(10)
    assert f"port {web_port}: an HTTP server, but not an inference server (/api/version 404" in done.stderr
    assert f"port {closed_port}: nothing listening" in done.stderr
    assert f"port {_port(hung)}: connected, but no answer in time (hung?)" in done.stderr
    for port in (web_port, closed_port, _port(hung)):
        assert f":{port}" not in done.stdout  # none of them became a target
    if not any(_listening(port) for port in WELL_KNOWN_PORTS):
        assert done.returncode == 1  # found nothing at all


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def test_without_docker_it_says_so_and_carries_on(sim_factory, tmp_path) -> None:
    sim = sim_factory("ollama")
    done = run_discover("--docker-host", f"unix://{tmp_path}/no-docker.sock", "--ports", str(_port(sim)))
    assert done.returncode == 0
    assert f"note: Docker: no socket at {tmp_path}/no-docker.sock (containers not listed)" in done.stderr
    assert targets_by_url(done.stdout)[sim.url]["kind"] == "ollama"


def test_bad_ports_are_a_usage_error() -> None:
    done = run_discover("--ports", "80,http")
    assert done.returncode == 2
    assert "expected port numbers like 9000,9001, got 'http'" in done.stderr


# --------------------------------------------------------------------------- in Docker


@pytest.fixture
def ollama_image(docker_engine: DockerEngine, busybox_image: str) -> str:
    """Our busybox image tagged as ollama/ollama, so discover lists it as a known server image."""
    docker_engine.client.images.get(busybox_image).tag("ollama/ollama", "iw-sim")
    return "ollama/ollama:iw-sim"


def _sim_args(port: int, host: str) -> list[str]:
    return ["-m", "watchdog.sim", "--kind", "ollama", "--host", host, "--port", str(port),
            "--gpu-dir", "/tmp/gpu", "--log-file", "/tmp/ollama.log"]


@pytest.mark.slow
def test_a_server_in_a_container_with_a_published_port_is_traced_to_its_container(
    docker_engine: DockerEngine, python_containers, ollama_image: str, tmp_path: Path
) -> None:
    sim = python_containers(_sim_args(11434, "0.0.0.0"), container_port=11434, image=ollama_image,
                            name="ollama-published")
    sim.wait_http("/api/version")
    done = run_discover("--docker-host", docker_engine.base_url, "--ports", str(sim.host_port))

    assert done.returncode == 0, done.stderr
    target = targets_by_url(done.stdout)[sim.url]
    assert (target["name"], target["kind"], target["container"]) == ("ollama-published", "ollama", "ollama-published")
    assert "restart" not in target  # restarted through Docker
    assert f'container "ollama-published" ({ollama_image})' in done.stderr
    assert config_check(tmp_path, done.stdout).returncode == 0


@pytest.mark.slow
def test_a_server_in_a_host_network_container_is_traced_through_its_cgroup(
    docker_engine: DockerEngine, python_containers, ollama_image: str
) -> None:
    port = free_port()
    sim = python_containers(_sim_args(port, "127.0.0.1"), container_port=port, image=ollama_image,
                            name="ollama-host-net", host_network=True)
    sim.wait_http("/api/version")
    done = run_discover("--docker-host", docker_engine.base_url, "--ports", str(port))

    assert done.returncode == 0, done.stderr
    assert targets_by_url(done.stdout)[sim.url]["container"] == "ollama-host-net"
    # The listening process itself is the container's (no docker-proxy in between).
    assert f"pid {sim.host_pid} " in done.stderr, done.stderr


@pytest.mark.slow
def test_a_hung_container_of_a_known_image_is_still_found_and_flagged(
    docker_engine: DockerEngine, python_containers, ollama_image: str
) -> None:
    sim = python_containers(_sim_args(11434, "0.0.0.0"), container_port=11434, image=ollama_image,
                            name="ollama-paused")
    sim.wait_http("/api/version")
    sim.container.pause()  # accepts connections (docker-proxy), never answers
    try:
        done = run_discover("--docker-host", docker_engine.base_url, "--timeout", "1", "--ports", str(sim.host_port))
    finally:
        sim.container.unpause()
    assert sim.url in targets_by_url(done.stdout), done.stderr
    target = targets_by_url(done.stdout)[sim.url]
    assert (target["kind"], target["container"]) == ("ollama", "ollama-paused")
    assert "It did NOT answer when discovered" in done.stdout
    assert "NOT ANSWERING" in done.stderr and "hung?" in done.stderr
    assert "container PAUSED" in done.stderr
