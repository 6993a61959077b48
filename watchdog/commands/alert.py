"""``watchdogctl alert test [SINK]``: a test alert through the running daemon's real path.

The daemon stores the test message in its outbox and its sink workers deliver
it exactly as they deliver incidents (same client, secrets, retries); this
command prints how it went per sink. Exit 0: every sink delivered; 1: some did
not (the reason is printed: "connection refused", "HTTP 404", "SMTP 535 ...",
never a URL or secret); 3: the daemon is unreachable.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

EXIT_DELIVERED = 0
EXIT_FAILED = 1


def exit_code(results: list[dict[str, Any]]) -> int:
    return EXIT_DELIVERED if results and all(r.get("delivered") for r in results) else EXIT_FAILED


def render(results: list[dict[str, Any]], console: Console, as_json: bool = False) -> int:
    """Print the results (a table, or JSON); returns the exit code."""
    if as_json:
        console.print_json(json.dumps({"results": results}))
        return exit_code(results)
    if not results:
        console.print("no alert sinks are configured ([[alerts]] in the config)")
        return EXIT_FAILED
    table = Table(title="Test alert", title_justify="left", expand=False)
    for column in ("sink", "kind", "result", "attempts", "why"):
        table.add_column(column)
    for r in results:
        ok = bool(r.get("delivered"))
        table.add_row(
            escape(str(r.get("sink", "?"))),
            escape(str(r.get("kind", "?"))),
            Text("delivered" if ok else "FAILED", style="green" if ok else "red"),
            str(r.get("attempts", 0)),
            "-" if ok else escape(str(r.get("error") or "unknown")),
        )
    console.print(table)
    return exit_code(results)
