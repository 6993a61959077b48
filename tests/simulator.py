"""Run the simulator as a real subprocess in tests: start, inject faults, read its GPU, stop.

Use the fixture factory in a test module with ``from tests.simulator import
sim_factory`` and then::

    def test_x(sim_factory):
        sim = sim_factory("ollama", "--decode-tps", "200")
        sim.inject("hang")
        nvml = sim.nvml()

Every simulator a test starts is stopped (and its runners with it) at teardown.
The :class:`Simulator` itself is shipped in ``watchdog.sim.launch`` (the demo uses it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from watchdog.sim.launch import READY_TIMEOUT_S, Simulator, SimulatorError

__all__ = ["READY_TIMEOUT_S", "Simulator", "SimulatorError", "sim_factory"]


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Any]:
    """``sim_factory(kind="ollama", *args, gpu_dir=None, ...) -> Simulator`` (started).

    Simulators of one test share ``tmp_path/"gpu"`` (one simulated GPU) unless given
    ``gpu_dir``; a llama.cpp simulator is returned once its model is loaded unless
    ``wait_loaded=False``.
    """
    started: list[Simulator] = []

    def start(kind: str = "ollama", *args: str, gpu_dir: str | Path | None = None,
              log_path: str | Path | None = None, timeout: float = READY_TIMEOUT_S,
              env: dict[str, str] | None = None, wait_loaded: bool = True) -> Simulator:
        workdir = tmp_path / f"sim{len(started)}"
        workdir.mkdir()
        sim = Simulator(kind, *args, gpu_dir=gpu_dir or tmp_path / "gpu", log_path=log_path,
                        workdir=workdir, env=env)
        started.append(sim)
        sim.start(timeout)
        if wait_loaded and kind == "llamacpp":
            sim.wait_loaded(timeout)
        return sim

    yield start
    for sim in started:
        sim.stop()
