"""Kill proven processes: SIGTERM, then SIGKILL after a grace; each pid re-checked first."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence

import psutil

from watchdog.act.actions.base import Outcome
from watchdog.act.actions.evidence import Proof


def _same(proof: Proof) -> bool:
    """Still the very process that was proven (same pid *and* start time), and alive."""
    try:
        proc = psutil.Process(proof.pid)
        return proc.create_time() == proof.create_time and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(proof: Proof, sig: int) -> bool:
    if not _same(proof):  # re-checked right before signalling: never a reused pid
        return False
    try:
        os.kill(proof.pid, sig)
    except ProcessLookupError:
        return False
    if sig == signal.SIGTERM:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proof.pid, signal.SIGCONT)  # a stopped process only acts on SIGTERM once continued
    return True


async def kill_processes(proofs: Sequence[Proof], *, grace: float, poll: float = 0.2) -> Outcome:
    if not proofs:
        return Outcome("skipped", "no process proven to belong to the target")
    termed = [p for p in proofs if await asyncio.to_thread(_signal, p, signal.SIGTERM)]
    gone_early = [p.pid for p in proofs if p not in termed]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    alive = list(termed)
    while alive and loop.time() < deadline:
        await asyncio.sleep(poll)
        alive = [p for p in alive if await asyncio.to_thread(_same, p)]
    killed = [p for p in alive if await asyncio.to_thread(_signal, p, signal.SIGKILL)]
    deadline = loop.time() + 5.0
    while killed and loop.time() < deadline:
        killed_alive = [p for p in killed if await asyncio.to_thread(_same, p)]
        if not killed_alive:
            break
        await asyncio.sleep(poll)
    survivors = [p.pid for p in killed if await asyncio.to_thread(_same, p)]
    facts = {
        "pids": [p.pid for p in proofs],
        "evidence": {str(p.pid): f"{p.how}: {p.detail}" for p in proofs},
        "sigterm": [p.pid for p in termed],
        "sigkill": [p.pid for p in killed],
        "already_gone": gone_early,
    }
    parts = [f"SIGTERM to {', '.join(str(p.pid) for p in termed) or 'none'}"]
    if killed:
        parts.append(f"SIGKILL after {grace:.0f} s to {', '.join(str(p.pid) for p in killed)}")
    if gone_early:
        parts.append(f"already gone: {', '.join(map(str, gone_early))}")
    if survivors:
        return Outcome("failed", "; ".join(parts) + f"; still alive: {', '.join(map(str, survivors))}", facts)
    return Outcome("ok", "; ".join(parts), facts)
