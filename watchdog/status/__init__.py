"""The status snapshot: its schema (model), the pure builder, and its rendering.

May import ``config/``, ``trace/``, ``detect.finding``, ``incidents.model``, ``redact``,
``exitcodes``; used by the daemon, ``control/`` and the commands."""

from watchdog.status.builder import DaemonInfo, LatestRecords, build_status
from watchdog.status.model import SCHEMA_VERSION, ReloadStatus, StatusSnapshot
from watchdog.status.render import exit_code_for, render_status, summary_line

__all__ = [
    "SCHEMA_VERSION", "DaemonInfo",
    "LatestRecords", "ReloadStatus", "StatusSnapshot", "build_status", "exit_code_for", "render_status",
    "summary_line",
]
