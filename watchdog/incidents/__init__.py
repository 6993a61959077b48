"""Incidents: opened by findings, with timelines and flight recordings, kept in SQLite.

The daemon uses :class:`Incidents` (async, one worker thread for all I/O);
actions, alerts and metrics subscribe to ``Incidents.bus`` for
:class:`IncidentEvent` s. :class:`IncidentManager` and :class:`IncidentStore`
are the synchronous parts underneath.

May import ``config/``, ``trace/``, ``detect.finding``, ``redact``, ``logs``; never the
daemon, probes or the listeners (they import it).
"""

from typing import TYPE_CHECKING

from watchdog.lazy import lazy_exports

if TYPE_CHECKING:
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

__getattr__ = lazy_exports(__name__, {
    "EventBus": "events",
    "Listener": "events",
    "IncidentManager": "manager",
    "Incident": "model",
    "IncidentEvent": "model",
    "IncidentFinding": "model",
    "RecordingInfo": "model",
    "TimelineEntry": "model",
    "severity_of": "model",
    "worst": "model",
    "read_recording": "recording",
    "recording_name": "recording",
    "ContextSource": "service",
    "DaemonClock": "service",
    "Incidents": "service",
    "IncidentStore": "store",
    "StoreError": "store",
})

__all__ = [
    "ContextSource", "DaemonClock", "EventBus", "Incident", "IncidentEvent", "IncidentFinding",
    "IncidentManager", "IncidentStore", "Incidents", "Listener", "RecordingInfo", "StoreError",
    "TimelineEntry", "read_recording", "recording_name", "severity_of", "worst",
]
