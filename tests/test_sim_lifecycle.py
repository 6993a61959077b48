"""The simulator process: clean stop, and no orphans when whoever started it dies."""

from __future__ import annotations

import subprocess
import sys

from tests.simulator import sim_factory  # noqa: F401 - the fixture
from tests.support import wait_for
from watchdog.sim.nvml import pid_alive


def test_sigterm_stops_cleanly_and_gives_the_gpu_back(sim_factory):
    sim = sim_factory("ollama", "--load-time", "0.1")
    assert sim.gpu_state.exists()
    sim.stop()
    assert sim.proc.returncode == 0
    assert not sim.gpu_state.exists()


def test_a_simulator_exits_when_its_parent_dies(tmp_path):
    script = ("import os; from watchdog.sim.launch import Simulator; "
              f"sim = Simulator('vllm', '--load-time', '0.1', workdir={str(tmp_path)!r}).start(); "
              "print(sim.pid, flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    pid = int(out.stdout.strip())
    wait_for(lambda: not pid_alive(pid), 5, "the orphaned simulator to exit")
