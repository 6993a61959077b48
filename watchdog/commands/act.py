"""``watchdogctl restart | unload | pause | resume``: manual actions through the daemon's policy.

Exit codes: 0 done (and, for restart and unload, verified); 1 carried out but it
failed or did not verify; 2 refused (paused, busy, budget spent, a model loading,
mode observe, no such target); 3 the daemon is unreachable.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click


def run_action(client: Any, action: str, target: str, **params: Any) -> int:
    from watchdog.control.client import ControlError, DaemonUnreachable

    try:
        answer = client.act(action, target, **params)
    except DaemonUnreachable as exc:
        click.echo(f"error: {exc}", err=True)
        return 3
    except ControlError as exc:
        if exc.status in (404, 409, 400):
            click.echo(f"refused: {exc.message}", err=True)
            return 2
        click.echo(f"error: {exc.message}", err=True)
        return 3
    if action in ("restart", "unload"):
        verified = answer.get("verified")
        line = f"{target}: {action} {answer.get('result')}: {answer.get('detail', '')}"
        if verified is not None:
            line += "; verified" if verified else "; NOT verified (see `watchdogctl history`)"
        click.echo(line)
        return 0 if answer.get("result") == "ok" and verified is not False else 1
    if action == "pause":
        until = answer.get("until")
        when = "until resumed" if until is None else (
            "until " + datetime.fromtimestamp(until, tz=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S"))
        click.echo(f"{target}: paused {when}; no actions on it meanwhile")
        return 0
    click.echo(f"{target}: resumed; the restart budget starts afresh")
    return 0


