"""One round of every probe, without a daemon: what ``watchdogctl check`` and ``watchdogctl probe`` run.

In order: containers' ids (so GPU processes can be attributed), the processes'
CPU baseline, a GPU round, then per target (at once) a status poll, a canary
(forced: a one-shot command wants an answer now) and the recent log lines,
then the processes; with ``gpu_after`` (``check``) a second GPU look, for the
utilisation during the canaries (``probe`` keeps one sample per GPU, a trace of one round).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from watchdog.probes.suite import ProbeSuite


@dataclass
class RoundNotes:
    """What the round could not do, per target (the records went to the suite's ``emit``)."""

    canary_skipped: dict[str, str] = field(default_factory=dict)


async def run_round(
    suite: ProbeSuite,
    *,
    canary: bool = True,
    logs: bool = True,
    log_lines: int = 500,
    gpu_after: bool = False,
) -> RoundNotes:
    """Run every probe of ``suite`` once; never raises for what a probe sees."""
    notes = RoundNotes()
    try:  # containers' ids before the GPU round; a hung Docker engine costs at most 10 s
        async with asyncio.timeout(10.0):
            await asyncio.to_thread(suite.attributor.refresh)
    except TimeoutError:
        pass
    await suite.processes.prime()
    if suite.gpu is not None:
        await suite.gpu.round()

    async def one_target(name: str) -> None:
        probes = suite.targets[name]
        await probes.server.round()
        if canary:
            sent = await probes.canary.round(force=True)
            if sent is None:
                notes.canary_skipped[name] = probes.canary.last_skip
        else:
            notes.canary_skipped[name] = "not asked (--no-canary)"
        if logs and probes.logs is not None:
            await probes.logs.recent(log_lines)

    await asyncio.gather(*(one_target(name) for name in suite.targets))
    await suite.processes.round()
    if gpu_after and suite.gpu is not None:
        await suite.gpu.round()
    return notes
