"""Run the configured restart command: an argv, never through a shell, under a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence

from watchdog.act.actions.base import Outcome, brief

_OUTPUT_MAX = 4000


async def run_argv(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    """Exit code and (merged, truncated) output. On timeout its process group is killed."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5.0)
        raise
    return int(proc.returncode or 0), out.decode(errors="replace")[-_OUTPUT_MAX:]


async def run_command(argv: Sequence[str], *, timeout: float) -> Outcome:
    """Exit 0 is ``ok``; the command's job is to bring the server back (it may return at once)."""
    if not argv:
        return Outcome("skipped", "no restart command configured")
    try:
        code, out = await run_argv(argv, timeout)
    except TimeoutError:
        return Outcome("timeout", f"{argv[0]} did not finish within {timeout:.0f} s (killed)")
    except OSError as exc:
        return Outcome("failed", f"cannot run {argv[0]}: {brief(exc)}")
    tail = " ".join(out.strip().split())[-160:]
    facts = {"exit_code": code, "output": out.strip()[-1000:]}
    if code != 0:
        return Outcome("failed", f"{argv[0]} exited {code}" + (f": {tail}" if tail else ""), facts)
    return Outcome("ok", f"{argv[0]} exited 0", facts)
