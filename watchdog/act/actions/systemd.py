"""Restart a systemd unit (``systemctl restart``) and read ActiveState / SubState after."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from watchdog.act.actions.base import Outcome, brief
from watchdog.act.actions.command import run_argv
from watchdog.probes.attribution import unit_name

PROPERTIES = ("ActiveState", "SubState", "MainPID", "NRestarts", "Result")


async def show(unit: str, systemctl: Sequence[str], timeout: float = 10.0) -> dict[str, str]:
    argv = [*systemctl, "show", unit, *(f"--property={p}" for p in PROPERTIES)]
    code, out = await run_argv(argv, timeout)
    if code != 0:
        raise RuntimeError(f"systemctl show {unit} exited {code}: {out.strip()[:200]}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


async def restart_unit(unit: str, *, timeout: float, systemctl: Sequence[str] = ("systemctl",),
                       settle: float = 1.0) -> Outcome:
    """Restart; then the unit must be active (a unit that fails to start again says so)."""
    unit = unit_name(unit)
    try:
        code, out = await run_argv([*systemctl, "restart", unit], timeout)
    except TimeoutError:
        return Outcome("timeout", f"systemctl restart {unit} did not finish within {timeout:.0f} s")
    except OSError as exc:
        return Outcome("failed", f"cannot run systemctl: {brief(exc)}")
    try:
        await asyncio.sleep(settle)  # Type=simple units report active at once; let a crash show
        props = await show(unit, systemctl)
    except (TimeoutError, OSError, RuntimeError) as exc:
        return Outcome("failed", f"systemctl restart {unit} exited {code}; its state is unknown: {brief(exc)}")
    facts = {"exit_code": code, "active_state": props.get("ActiveState"), "sub_state": props.get("SubState"),
             "main_pid": int(props.get("MainPID") or 0) or None, "n_restarts": props.get("NRestarts")}
    text = f"unit {unit}: ActiveState={facts['active_state']} SubState={facts['sub_state']}"
    if code != 0:
        return Outcome("failed", f"systemctl restart {unit} exited {code} ({out.strip()[:160]}); {text}", facts)
    if facts["active_state"] not in ("active", "activating", "reloading"):
        return Outcome("failed", f"{text}: the unit did not start again", facts)
    return Outcome("ok", text, facts)
