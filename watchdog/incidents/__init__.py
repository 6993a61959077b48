"""Incidents: opened by findings, with timelines and flight recordings, kept in SQLite.

The daemon uses :class:`Incidents` (async, one worker thread for all I/O);
actions, alerts and metrics subscribe to ``Incidents.bus`` for
:class:`IncidentEvent` s. :class:`IncidentManager` and :class:`IncidentStore`
are the synchronous parts underneath.

May import ``config/``, ``trace/``, ``detect.finding``, ``redact``, ``logs``; never the
daemon, probes or the listeners (they import it).
"""

from watchdog.incidents.events import EventBus, Listener
from watchdog.incidents.manager import IncidentManager
from watchdog.incidents.model import (
    Incident,
    IncidentEvent,
    IncidentFinding,
    RecordingInfo,
    TimelineEntry,
    severity_of,
    worst,
)
from watchdog.incidents.recording import read_recording, recording_name
from watchdog.incidents.service import ContextSource, DaemonClock, Incidents
from watchdog.incidents.store import IncidentStore, StoreError

__all__ = [
    "ContextSource", "DaemonClock", "EventBus", "Incident", "IncidentEvent", "IncidentFinding",
    "IncidentManager", "IncidentStore", "Incidents", "Listener", "RecordingInfo", "StoreError",
    "TimelineEntry", "read_recording", "recording_name", "severity_of", "worst",
]
