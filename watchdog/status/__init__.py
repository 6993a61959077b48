"""The status snapshot: its schema (model), the pure builder, and its rendering.

May import ``config/``, ``trace/``, ``detect.finding``, ``incidents.model``, ``redact``,
``exitcodes``; used by the daemon, ``control/`` and the commands."""

from typing import TYPE_CHECKING

from watchdog.lazy import lazy_exports

if TYPE_CHECKING:
    from watchdog.status.builder import DaemonInfo, LatestRecords, build_status
    from watchdog.status.model import SCHEMA_VERSION, ReloadStatus, StatusSnapshot
    from watchdog.status.render import render_status
    from watchdog.status.summary import exit_code_for, summary_line

__getattr__ = lazy_exports(__name__, {
    "DaemonInfo": "builder", "LatestRecords": "builder", "build_status": "builder",
    "SCHEMA_VERSION": "model", "ReloadStatus": "model", "StatusSnapshot": "model",
    "exit_code_for": "summary", "render_status": "render", "summary_line": "summary",
})

__all__ = [
    "SCHEMA_VERSION", "DaemonInfo",
    "LatestRecords", "ReloadStatus", "StatusSnapshot", "build_status", "exit_code_for", "render_status",
    "summary_line",
]
