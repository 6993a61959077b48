"""The daemon's control socket: the server (``watchdog.control.server``, asyncio and h11 on a
unix socket) and its client (``watchdog.control.client``, the standard library's http.client).

Only the client is imported here: ``watchdogctl status`` pays for nothing but the stdlib.

May import ``config/``, ``status.model``, ``incidents.model``/``recording``; the server is
started by the daemon, the client used by ``cli.py``.
"""

from watchdog.control.client import SOCKET_ENV, ControlClient, ControlError, DaemonUnreachable

__all__ = ["SOCKET_ENV", "ControlClient", "ControlError", "DaemonUnreachable"]
