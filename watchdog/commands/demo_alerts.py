"""A local stand-in for a webhook receiver, so the demo shows the alerts the daemon sends.

The demo's daemon gets a ``[[alerts]]`` webhook (``format = "json"``) whose URL
points here; every message it delivers, through its real outbox and sink, is
kept and shown beside the detection that caused it.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class AlertCatcher:
    """An HTTP server on 127.0.0.1 in a thread that keeps every alert POSTed to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._alerts: list[dict[str, Any]] = []
        self._taken = 0
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0") or 0)
                try:
                    alert = json.loads(self.rfile.read(length))
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                with catcher._lock:
                    catcher._alerts.append(alert)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-alerts", daemon=True)
        self._thread.start()

    def take(self) -> list[dict[str, Any]]:
        """The alerts that arrived since the last call."""
        with self._lock:
            new = self._alerts[self._taken:]
            self._taken = len(self._alerts)
        return new

    @property
    def alerts(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._alerts)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
