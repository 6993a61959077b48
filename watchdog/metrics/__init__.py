"""Metrics: the daemon's state as one snapshot, written out by thin exporters.

``catalogue`` names every metric once; ``snapshot`` builds the samples from the status
snapshot and the action counts (``actions``, fed by the incident bus); ``prometheus``,
``cloudwatch`` and ``emf`` write them; ``dashboard`` builds CloudWatch dashboards and alarms;
``service`` runs it all inside the daemon.
"""

from watchdog.metrics.catalogue import METRICS, Metric
from watchdog.metrics.service import MetricsService
from watchdog.metrics.snapshot import MetricsSnapshot, Sample, build_metrics

__all__ = ["METRICS", "Metric", "MetricsService", "MetricsSnapshot", "Sample", "build_metrics"]
