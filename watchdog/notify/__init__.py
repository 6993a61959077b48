"""Tell people: alerts about incident transitions to Slack, webhooks, e-mail and Apprise.

- :mod:`.alert` — the alert (the webhook's JSON payload, docs/alert.schema.json);
- :mod:`.compose` — which incident events are messages, and what they say (pure);
- :mod:`.render` — Block Kit, e-mail text/HTML, Discord, ntfy, PagerDuty (pure);
- :mod:`.sinks` — the senders and how their failures are classified;
- :mod:`.outbox` — every message stored before it is sent (SQLite);
- :mod:`.notifier` — the bus listener, the per-sink delivery workers, reminders, ``alert test``;
- :mod:`.listener` — ``make_notifier(hub)``, the daemon's listener (``watchdog/listener.py``).

May import ``config/``, ``incidents.model``, ``status.model``, ``redact``, ``logs`` and
``listener``; never ``daemon/``, ``probes/`` or ``commands/`` (the daemon's builder imports it).
"""

from watchdog.notify.alert import SCHEMA_VERSION, Alert
from watchdog.notify.notifier import Backoff, Notifier, TestResult

__all__ = ["SCHEMA_VERSION", "Alert", "Backoff", "Notifier", "TestResult"]
