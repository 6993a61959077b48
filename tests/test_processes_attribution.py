"""The process probe and attribution on real processes: the simulator and processes started here."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests.simulator import Simulator, sim_factory  # noqa: F401 - the fixture
from tests.support import wait_for
from watchdog.config.model import TargetSettings
from watchdog.probes.attribution import Attributor
from watchdog.probes.processes import ProcessProbe
from watchdog.trace.records import ProcessSample


def target(name: str, url: str = "http://127.0.0.1:9", kind: str = "vllm", **kw: Any) -> TargetSettings:
    return TargetSettings(name=name, kind=kind, url=url, restart={"method": "none"}, **kw)


def probe(targets: list[TargetSettings]) -> tuple[ProcessProbe, list[Any]]:
    out: list[Any] = []
    return ProcessProbe([t.name for t in targets], Attributor(targets), time.monotonic, out.append), out


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_a_server_found_by_its_port_its_state_memory_and_cpu(sim_factory: Any) -> None:  # noqa: F811
    sim = sim_factory("ollama", "--load-time", "0.2")
    probes, out = probe([target("ollama", sim.url, kind="ollama")])
    try:
        (first,) = await probes.round()
        assert (first.pid, first.status, first.extra["found_by"]) == (sim.pid, "sleeping", "port")
        assert first.rss_mib and first.rss_mib > 10 and first.cpu_percent is None  # CPU needs two looks
        (second,) = await probes.round()
        assert second.cpu_percent is not None and second.cpu_percent >= 0
        os.kill(sim.pid, signal.SIGSTOP)
        try:
            (frozen,) = await probes.round()
            assert frozen.status == "stopped"
        finally:
            os.kill(sim.pid, signal.SIGCONT)
        sim.inject("crash")
        wait_for(lambda: not sim.alive(), 5, "the simulator to exit")
        (gone,) = await probes.round()
        assert (gone.status, gone.pid) == ("gone", sim.pid)
        assert out == [first, second, frozen, gone]
    finally:
        probes.close()


async def test_cpu_is_summed_over_the_process_tree(processes: list[Any]) -> None:
    token = uuid.uuid4().hex
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(60)
    """), token])
    processes.append(parent)
    wait_for(lambda: psutil.Process(parent.pid).children(), 5, "the busy child")
    probes, _ = probe([target("busy", process_match=token)])
    try:
        await probes.round()
        # The CPU figure is measured between rounds; on a loaded machine the busy child may get
        # less than a core in one short window, so take rounds until one shows it (or give up).
        deadline = time.monotonic() + 30
        while True:
            await asyncio.sleep(0.5)
            (sample,) = await probes.round()
            if (sample.cpu_percent or 0) > 50 or time.monotonic() > deadline:
                break
        assert sample.pid == parent.pid and sample.extra["found_by"] == "process_match"
        assert sample.cpu_percent is not None and sample.cpu_percent > 50  # the parent itself sleeps
        assert sample.extra["tree_rss_mib"] > sample.rss_mib
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        probes.close()


async def test_a_zombie_main_process(processes: list[Any]) -> None:
    token = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(0.5)", token])
    processes.append(proc)  # never waited on until teardown: it stays a zombie after it exits
    probes, _ = probe([target("z", process_match=token)])
    try:
        (alive,) = await probes.round()
        assert alive.status in ("sleeping", "running")
        wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE, 5, "the zombie")
        (zombie,) = await probes.round()
        assert (zombie.pid, zombie.status) == (proc.pid, "zombie")
    finally:
        probes.close()


async def test_nothing_to_observe_for_a_remote_server() -> None:
    probes, out = probe([target("remote", "http://10.11.12.13:8000")])
    try:
        assert await probes.round() == [] and out == []
        assert probes.located["remote"].observable is False
    finally:
        probes.close()


async def test_not_running_yet_is_gone_without_a_pid() -> None:
    probes, _ = probe([target("later", process_match=uuid.uuid4().hex)])
    try:
        (sample,) = await probes.round()
        assert (sample.status, sample.pid) == ("gone", None)
        assert isinstance(sample, ProcessSample)
    finally:
        probes.close()


def test_the_runner_children_of_ollama_belong_to_it(sim_factory: Any) -> None:  # noqa: F811
    import httpx

    sim = sim_factory("ollama", "--load-time", "0.2")
    httpx.post(f"{sim.url}/api/generate", json={"model": sim.model}, timeout=10).raise_for_status()
    runners = wait_for(lambda: psutil.Process(sim.pid).children(), 5, "a runner child")
    attributor = Attributor([target("ollama", sim.url, kind="ollama")])
    assert attributor.locate("ollama").pid == sim.pid
    assert {attributor.owner(r.pid) for r in runners} == {"ollama"}
    assert attributor.owner(os.getpid()) is None  # the test itself belongs to no one
    assert set(attributor.tree("ollama")) >= {sim.pid, *(r.pid for r in runners)}


def test_an_orphaned_runner_still_belongs_to_its_server(processes: list[Any]) -> None:
    token = uuid.uuid4().hex
    read, write = os.pipe()
    server = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen(["sleep", "60"])
        os.write({write}, str(child.pid).encode() + b"\\n")
        time.sleep(60)
    """), token], pass_fds=(write,))
    processes.append(server)
    os.close(write)
    runner_pid = int(os.read(read, 64).decode().strip())
    os.close(read)
    attributor = Attributor([target("srv", process_match=token)])
    try:
        assert attributor.owner(runner_pid) == "srv"
        server.kill()
        server.wait()
        wait_for(lambda: psutil.Process(runner_pid).ppid() != server.pid, 5, "the runner to be orphaned")
        # Its server is gone, its memory may still be held: it is still that server's runner.
        assert attributor.owner(runner_pid) == "srv"
        stranger = subprocess.Popen(["sleep", "60"])
        processes.append(stranger)
        assert attributor.owner(stranger.pid) is None
    finally:
        try:
            psutil.Process(runner_pid).kill()
        except psutil.NoSuchProcess:
            pass


def test_process_match_never_matches_the_watchdog_itself() -> None:
    token = uuid.uuid4().hex
    # A watchdog whose own command line (and its parent's) contains the pattern.
    code = textwrap.dedent(f"""
        from watchdog.config.model import TargetSettings
        from watchdog.probes.attribution import Attributor
        t = TargetSettings(name="self", kind="vllm", url="http://127.0.0.1:9",
                           restart={{"method": "none"}}, process_match="{token}")
        print(Attributor([t]).locate("self").pid)
    """)
    out = subprocess.run([sys.executable, "-c", code, token], capture_output=True, text=True, timeout=30,
                         check=True)
    assert out.stdout.strip() == "None"
