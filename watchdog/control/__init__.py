"""The daemon's control socket: the server (aiohttp on a unix socket) and its client."""

from watchdog.control.client import SOCKET_ENV, ControlClient, ControlError, DaemonUnreachable
from watchdog.control.server import ControlProvider, ControlServer
from watchdog.control.socket import ControlSocketError, bind_control_socket

__all__ = [
    "SOCKET_ENV", "ControlClient", "ControlError", "ControlProvider", "ControlServer", "ControlSocketError",
    "DaemonUnreachable", "bind_control_socket",
]
