"""The private Docker engine fixture does what other tests rely on."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.infra.docker_engine import (  # noqa: F401 - fixtures
    DockerEngine,
    busybox_image,
    docker_engine,
    python_containers,
)
from tests.support import wait_for

pytestmark = pytest.mark.slow


def _listener_pid(port: int) -> int | None:
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
            return conn.pid
    return None


def test_engine_is_private_to_this_run(docker_engine: DockerEngine) -> None:
    assert docker_engine.socket_path.is_socket()
    assert docker_engine.socket_path.is_relative_to(docker_engine.run_dir)
    info = docker_engine.client.info()
    assert Path(info["DockerRootDir"]).is_relative_to(docker_engine.run_dir)
    # dockerd runs under the pid we stop at the end.
    assert psutil.Process(docker_engine.pid).name() == "dockerd"


def test_container_process_shows_its_container_in_its_cgroup(
    docker_engine: DockerEngine, busybox_image: str
) -> None:
    container = docker_engine.client.containers.run(
        busybox_image, ["sleep", "300"], detach=True, labels={"io.inference-watchdog.test": "1"}
    )
    try:
        container.reload()
        pid = container.attrs["State"]["Pid"]
        assert pid > 0
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        assert f"/docker/{container.id}" in cgroup, cgroup
        assert psutil.Process(pid).cmdline() == ["sleep", "300"]
    finally:
        container.remove(force=True)


def test_our_python_serves_from_a_container_on_a_published_port(python_containers) -> None:
    server = python_containers(["-m", "http.server", "--bind", "0.0.0.0", "8000"], container_port=8000)
    response = server.wait_http("/")
    assert response.status_code == 200
    # It was the container that answered: its log shows the request.
    wait_for(lambda: '"GET / HTTP/1.1" 200' in server.logs(), 10, "the request in the container's log")
    # The python process is the container's, seen from the host with its cgroup.
    pid = server.host_pid
    assert f"/docker/{server.id}" in Path(f"/proc/{pid}/cgroup").read_text()
    assert "http.server" in psutil.Process(pid).cmdline()
    # On the host the published port is held by docker-proxy, not by the container's process.
    listener = _listener_pid(server.host_port)
    assert listener is not None and psutil.Process(listener).name() == "docker-proxy"
