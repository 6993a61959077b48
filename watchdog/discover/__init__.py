"""``watchdogctl discover``: find the inference servers on this host and write a starter config.

``discover()`` (scan) does the I/O; ``identify`` and ``placement`` are the pure
rules it applies; ``render_config`` / ``render_summary`` turn the result into text.

Stands alone: imports no other room of ours; only ``cli.py`` uses it.
"""

from watchdog.discover.found import (
    Answer,
    Discovery,
    Identity,
    KnownContainer,
    Placement,
    Server,
    Silent,
)
from watchdog.discover.identify import KNOWN_IMAGES, WELL_KNOWN_PORTS, identify, image_kind
from watchdog.discover.placement import container_id, service_unit
from watchdog.discover.render import render_config, render_summary
from watchdog.discover.scan import discover

__all__ = [
    "KNOWN_IMAGES",
    "WELL_KNOWN_PORTS",
    "Answer",
    "Discovery",
    "Identity",
    "KnownContainer",
    "Placement",
    "Server",
    "Silent",
    "container_id",
    "discover",
    "identify",
    "image_kind",
    "render_config",
    "render_summary",
    "service_unit",
]
