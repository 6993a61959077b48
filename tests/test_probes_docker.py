"""Attribution and logs of servers that run in a real Docker container or a real systemd unit.

The simulator runs inside a container of the private test engine (with the
host's pid namespace, as a real GPU server's processes are seen by the
driver: NVML reports host pids), writing its simulated GPU to a directory
shared with the host. The watchdog side runs here, on the host, as it would
in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.infra.docker_engine import (  # noqa: F401
    LABEL,
    DockerEngine,
    busybox_image,
    docker_engine,
    python_mounts,
)
from tests.infra.system import free_port
from tests.infra.systemd_container import SystemdContainer, systemd_container, systemd_image  # noqa: F401
from tests.paths import ROOT
from tests.support import wait_for
from watchdog.config.model import TargetSettings
from watchdog.probes.attribution import Attributor
from watchdog.probes.dockerapi import DockerAccess
from watchdog.probes.gpu import GpuProbe
from watchdog.probes.logwatch import DockerSource, JournalSource, LogProbe
from watchdog.probes.processes import ProcessProbe
from watchdog.sim.nvml import SimNvml
from watchdog.trace.records import LogLine

pytestmark = pytest.mark.slow


@dataclass
class SimContainer:
    container: Any
    url: str
    gpu_dir: Path

    @property
    def name(self) -> str:
        return str(self.container.name)

    @property
    def pid(self) -> int:
        self.container.reload()
        return int(self.container.attrs["State"]["Pid"])


@pytest.fixture
def sim_containers(docker_engine: DockerEngine, busybox_image: str, tmp_path: Path  # noqa: F811
                   ) -> Iterator[Callable[..., SimContainer]]:
    started: list[Any] = []

    def start(kind: str, *args: str) -> SimContainer:
        gpu_dir = tmp_path / "gpu"
        gpu_dir.mkdir(exist_ok=True)
        port = free_port()
        container = docker_engine.client.containers.run(
            busybox_image,
            [sys.executable, "-m", "watchdog.sim", "--kind", kind, "--host", "0.0.0.0", "--port", "8000",
             "--gpu-dir", str(gpu_dir), "--decode-tps", "200", "--load-time", "0.2", *args],
            name=f"iw-sim-{uuid.uuid4().hex[:8]}",
            detach=True,
            pid_mode="host",
            network=docker_engine.network,
            ports={"8000/tcp": ("127.0.0.1", port)},
            volumes={**python_mounts(), str(gpu_dir): {"bind": str(gpu_dir), "mode": "rw"}},
            environment={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "HOME": "/tmp"},
            working_dir=str(ROOT),
            labels={LABEL: "1"},
        )
        started.append(container)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            container.reload()
            if container.status == "exited":
                raise AssertionError(container.logs()[-2000:].decode(errors="replace"))
            try:
                return httpx.get(f"{url}/v1/models", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 30, f"the {kind} simulator in container {container.name}")
        return SimContainer(container, url, gpu_dir)

    yield start
    for container in started:
        with contextlib.suppress(Exception):
            container.remove(force=True)


def target(name: str, url: str, **kw: Any) -> TargetSettings:
    return TargetSettings(name=name, kind="vllm", url=url, restart={"method": "none"}, **kw)


async def test_gpu_processes_of_a_container_belong_to_its_target(
    sim_containers: Callable[..., SimContainer], docker_engine: DockerEngine  # noqa: F811
) -> None:
    sim = sim_containers("vllm", "--gpu-memory-utilization", "0.4")
    docker = DockerAccess(docker_engine.base_url)
    # Configured by container name; also a second target found by a port on this host that
    # happens to be the container's published port: that listener is docker-proxy, never the server.
    attributor = Attributor([target("in-docker", sim.url, container=sim.name),
                             target("by-port", sim.url)], docker=docker)
    out: list[Any] = []
    probe = GpuProbe(SimNvml(sim.gpu_dir), time.monotonic, out.append, attribute=attributor.owners)
    try:
        # Ownership never waits on Docker (it is asked from the GPU thread): until a target is
        # located (the process probe's job), its container's processes are no one's.
        (unlocated,) = await probe.round()
        assert {p.target for p in unlocated.procs} == {None}
        attributor.refresh()
        (sample,) = await probe.round()
        held = [p for p in sample.procs if (p.mem_mib or 0) > 0]
        assert held and {p.target for p in held} == {"in-docker"}
        for proc in held:  # really the container's: its cgroup names the container
            assert sim.container.id in Path(f"/proc/{proc.pid}/cgroup").read_text()
        located = attributor.locate("in-docker")
        assert (located.pid, located.how, located.state) == (sim.pid, "container", "running")
        assert attributor.locate("by-port").pid is None
        assert attributor.gpus_of("in-docker") == [0] and attributor.gpus_of("by-port") == []
    finally:
        probe.close()
        docker.close()


async def test_process_probe_follows_the_container_through_pause_and_stop(
    sim_containers: Callable[..., SimContainer], docker_engine: DockerEngine  # noqa: F811
) -> None:
    sim = sim_containers("vllm")
    docker = DockerAccess(docker_engine.base_url, cache_s=0.0)
    settings = target("in-docker", sim.url, container=sim.name)
    probe = ProcessProbe(["in-docker"], Attributor([settings], docker=docker), time.monotonic, lambda r: None)
    try:
        (running,) = await probe.round()
        assert (running.pid, running.extra["found_by"], running.extra["state"]) == (sim.pid, "container", "running")
        assert running.status in ("sleeping", "running") and running.rss_mib
        sim.container.pause()
        (paused,) = await probe.round()
        assert paused.extra["state"] == "paused" and paused.pid == running.pid
        sim.container.unpause()
        sim.container.stop(timeout=5)
        (stopped,) = await probe.round()
        assert (stopped.status, stopped.extra["state"]) == ("gone", "exited")
        sim.container.remove(force=True)
        (removed,) = await probe.round()
        assert (removed.status, removed.extra["state"]) == ("gone", "missing")
    finally:
        probe.close()
        docker.close()


async def test_container_logs_pass_on_the_lines_that_matter(
    sim_containers: Callable[..., SimContainer], docker_engine: DockerEngine  # noqa: F811
) -> None:
    sim = sim_containers("vllm")  # no --log-file: the server logs to stderr, as in a container
    docker = DockerAccess(docker_engine.base_url)
    out: list[LogLine] = []
    probe = LogProbe("in-docker", DockerSource(sim.name, docker), time.monotonic, out.append, retry_s=0.2)
    task = asyncio.create_task(probe.run())
    try:
        await asyncio.wait_for(probe.source.ready.wait(), 10)
        assert out == []  # the stream starts at the end: what came before is not news
        httpx.post(f"{sim.url}/_sim/fault", json={"fault": "fragmentation"}, timeout=5).raise_for_status()
        async with httpx.AsyncClient(timeout=10) as client:
            model = (await client.get(f"{sim.url}/v1/models")).json()["data"][0]["id"]
            await client.post(f"{sim.url}/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 4})

        async def oom() -> LogLine:
            while True:
                found = [r for r in out if r.extra["pattern"] == "torch_oom"]
                if found:
                    return found[0]
                await asyncio.sleep(0.05)

        try:
            line = await asyncio.wait_for(oom(), 10)
        except TimeoutError:
            raise AssertionError(f"seen {probe.lines_seen} following={probe.following} out={out} "
                                 f"logs={sim.container.logs()[-1500:]!r}") from None
        assert "reserved by PyTorch but unallocated" in line.line and probe.lines_seen >= 1
        recent = await LogProbe("in-docker", DockerSource(sim.name, docker), time.monotonic,
                                lambda r: None).recent(200)
        assert any(r.extra["pattern"] == "torch_oom" for r in recent)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        docker.close()


async def test_a_units_journal_and_its_processes(
    systemd_container: SystemdContainer, docker_engine: DockerEngine  # noqa: F811
) -> None:
    unit = f"iw-probe-{uuid.uuid4().hex[:8]}.service"
    journalctl = ["docker", "-H", docker_engine.base_url, "exec", systemd_container.id, "journalctl"]
    out: list[LogLine] = []
    probe = LogProbe("unit", JournalSource(unit, command=journalctl), time.monotonic, out.append, retry_s=0.2)
    task = asyncio.create_task(probe.run())
    try:
        await asyncio.wait_for(probe.source.ready.wait(), 10)
        # The unit logs its failure a moment after it starts, as a server does after loading.
        script = ("echo starting; sleep 2; "
                  "echo 'ggml_backend_cuda_buffer_type_alloc_buffer: cudaMalloc failed: out of memory'; "
                  "exec sleep 300")
        systemd_container.exec(["systemd-run", f"--unit={unit}", "--description=a fake server", "/bin/sh", "-c",
                                script])

        async def malloc() -> LogLine:
            while not out:
                await asyncio.sleep(0.05)
            return out[0]

        line = await asyncio.wait_for(malloc(), 15)
        assert line.extra["pattern"] == "cuda_malloc_failed" and line.target == "unit"
        recent = await LogProbe("unit", JournalSource(unit, command=journalctl), time.monotonic,
                                lambda r: None).recent(50)
        assert [r.extra["pattern"] for r in recent] == ["cuda_malloc_failed"]

        # Its processes, seen from this host: their cgroup names the unit.
        main = int(systemd_container.show(unit, "MainPID")["MainPID"])
        assert main > 0
        attributor = Attributor([TargetSettings(name="unit", kind="llamacpp", url="http://10.9.9.9:8080",
                                                unit=unit, restart={"method": "none"})],
                                systemctl=["/nonexistent/systemctl"])  # the host has no such unit
        located = attributor.locate("unit")
        assert located.pid is not None and located.how == "unit"
        host_proc = psutil.Process(located.pid)
        assert host_proc.cmdline()[:2] == ["sleep", "300"]
        assert unit in Path(f"/proc/{located.pid}/cgroup").read_text()
        assert attributor.owner(located.pid) == "unit"
        assert attributor.owner(psutil.Process().pid) is None
        assert systemd_container.show(unit, "ActiveState")["ActiveState"] == "active"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
