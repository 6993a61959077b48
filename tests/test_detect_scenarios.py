"""The detectors on synthetic scenarios: many kinds, cadences, sizes and timings.

Each scenario (tests/scenarios/catalog.py) is generated for several seeds; the
seed varies the server kind, the cadence (GPU every 1-5 s, polls every 2-10 s,
canaries every 15-60 s), the model size, the traffic and when things happen.
Faults must be raised in their window; healthy-but-tricky situations (a load,
a long prefill, a CPU-offloaded model, idle with memory held, a planned
restart, one lost canary) must raise nothing.
"""

from __future__ import annotations

import pytest

from tests.scenarios.catalog import SCENARIOS
from watchdog.commands.replay import check_expectations, replay_trace
from watchdog.trace.io import Trace

SEEDS = range(8)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario(name: str, seed: int) -> None:
    scenario = SCENARIOS[name](seed)
    result = replay_trace(Trace(scenario.header, scenario.records))
    report = check_expectations(result.findings, scenario.expect)
    kind = scenario.header.targets[0].kind
    assert report.ok, f"{name} (seed {seed}, {kind}, cadence {scenario.expect['cadence']}):\n{report}"


def test_every_fault_scenario_expects_something() -> None:
    faults = {"hang", "stream_stall", "nccl_hang", "frozen", "completions_500", "failed_unload", "orphan_runner", "leak",
              "fragmentation", "oom", "slow", "crash", "xid", "gpu_lost", "busy_slow", "stuck_collective",
              "truncation"}
    for name in faults:
        assert SCENARIOS[name](0).expect["expect"], name
    for name in set(SCENARIOS) - faults:
        assert not SCENARIOS[name](0).expect["expect"], name
