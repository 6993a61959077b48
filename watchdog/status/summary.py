"""The exit code and the one-line summary of a status snapshot: no rich here, because the daemon
writes the line to systemd and its log, and importing rich would cost it memory it never uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from watchdog.exitcodes import EXIT_CRITICAL, EXIT_DEGRADED, EXIT_OK

if TYPE_CHECKING:  # either form: `watchdogctl status` reads a plain view, without pydantic (issue 15)
    from watchdog.status import model, view

    StatusSnapshot = model.StatusSnapshot | view.StatusSnapshot


def exit_code_for(snapshot: StatusSnapshot) -> int:
    """0 all ok; 1 degraded (a warning finding, or a target not observed lately); 2 critical.

    (3, daemon unreachable, is the caller's: there is no snapshot then.)
    """
    if snapshot.state == "critical":
        return EXIT_CRITICAL
    if snapshot.state in ("degraded", "unknown"):
        return EXIT_DEGRADED
    return EXIT_OK


def summary_line(snapshot: StatusSnapshot) -> str:
    """One line for systemd's STATUS= and logs: "3 targets: 2 ok, 1 hang"."""
    counts: dict[str, int] = {}
    for target in snapshot.targets:
        if target.findings:
            label = "+".join(dict.fromkeys(f.finding for f in target.findings))
        else:
            label = target.state
        counts[label] = counts.get(label, 0) + 1
    order = sorted(counts, key=lambda k: (k != "ok", k == "unknown", k))
    noun = "target" if len(snapshot.targets) == 1 else "targets"
    line = f"{len(snapshot.targets)} {noun}: " + ", ".join(f"{counts[k]} {k}" for k in order) if counts else "no targets"
    faulty = [g for g in snapshot.gpus if g.findings]
    if faulty:
        line += f"; {len(faulty)} GPU fault" + ("s" if len(faulty) > 1 else "")
    if snapshot.daemon.problems:
        line += f"; {len(snapshot.daemon.problems)} daemon problem" + ("s" if len(snapshot.daemon.problems) > 1 else "")
    return line
