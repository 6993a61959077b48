"""CloudWatch dashboards and alarms for the metrics (pure: bodies and definitions, no API calls).

Targets are named explicitly (from the config) so the dashboard's legends read well; GPUs
are found with SEARCH expressions, so a host's GPUs appear without listing them. Several
hosts share one dashboard: every widget draws a line per host and target (or GPU).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from watchdog.metrics.catalogue import (
    CANARY_TPS,
    CANARY_TTFT,
    GPU_MEM,
    GPU_MEM_PCT,
    GPU_UTIL,
    OPEN_INCIDENTS,
    RESTARTS,
    TARGET_HEALTHY,
    UNLOADS,
    XID_ERRORS,
    Metric,
)

_WIDTH, _HEIGHT = 12, 6


@dataclass(frozen=True)
class DashboardSpec:
    namespace: str
    region: str
    hosts: Sequence[str]
    targets: Sequence[str]
    period: int = 60


def _target_lines(spec: DashboardSpec, metric: Metric, stat: str, prefix: str = "") -> list[list[Any]]:
    return [
        [spec.namespace, metric.name, "Host", host, "Target", target,
         {"stat": stat, "label": f"{prefix}{host} {target}" if len(spec.hosts) > 1 else f"{prefix}{target}"}]
        for host in spec.hosts for target in spec.targets
    ]


def _gpu_search(spec: DashboardSpec, metric: Metric, stat: str, first_id: int) -> list[list[Any]]:
    lines: list[list[Any]] = []
    for n, host in enumerate(spec.hosts):
        query = (f"SEARCH('{{{spec.namespace},GPU,Host}} MetricName=\"{metric.name}\" Host=\"{host}\"', "
                 f"'{stat}', {spec.period})")
        lines.append([{"expression": query, "id": f"e{first_id + n}", "label": f"{host} GPU"}])
    return lines


def _widget(spec: DashboardSpec, title: str, metrics: list[list[Any]], x: int, y: int,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "metric", "x": x, "y": y, "width": _WIDTH, "height": _HEIGHT,
        "properties": {"title": title, "region": spec.region, "view": "timeSeries", "stacked": False,
                       "period": spec.period, "metrics": metrics, **(extra or {})},
    }


def dashboard_body(spec: DashboardSpec) -> dict[str, Any]:
    """The body for PutDashboard: health, canary latency and speed, GPUs, incidents and actions."""
    percent = {"yAxis": {"left": {"min": 0, "max": 100}}}
    widgets = [
        _widget(spec, "Target healthy (1 = ok)", _target_lines(spec, TARGET_HEALTHY, "Minimum"), 0, 0,
                {"yAxis": {"left": {"min": 0, "max": 1}}}),
        _widget(spec, "Incidents and actions", _target_lines(spec, OPEN_INCIDENTS, "Maximum", "open: ")
                + _target_lines(spec, RESTARTS, "Sum", "restarts: ")
                + _target_lines(spec, UNLOADS, "Sum", "unloads: "), 12, 0),
        _widget(spec, "Canary time to first token (s)", _target_lines(spec, CANARY_TTFT, "Average"), 0, 6),
        _widget(spec, "Canary tokens/s", _target_lines(spec, CANARY_TPS, "Average"), 12, 6),
        _widget(spec, "GPU utilisation (%)", _gpu_search(spec, GPU_UTIL, "Average", 1), 0, 12, percent),
        _widget(spec, "GPU memory used (%)", _gpu_search(spec, GPU_MEM_PCT, "Maximum", 1), 12, 12, percent),
        _widget(spec, "GPU memory used (MiB)", _gpu_search(spec, GPU_MEM, "Maximum", 1), 0, 18),
        _widget(spec, "XID errors", _gpu_search(spec, XID_ERRORS, "Sum", 1), 12, 18),
    ]
    return {"start": "-PT6H", "periodOverride": "inherit", "widgets": widgets}


@dataclass(frozen=True)
class AlarmSpec:
    namespace: str
    hosts: Sequence[str]
    targets: Sequence[str]
    gpus: Mapping[str, Sequence[int]]  # by host
    period: int = 60
    unhealthy_periods: int = 3
    memory_percent: float = 95.0
    sns_topic: str | None = None
    prefix: str = "InferenceWatchdog"


def alarm_definitions(spec: AlarmSpec) -> list[dict[str, Any]]:
    """PutMetricAlarm arguments: a target unhealthy for N periods; GPU memory above 95%; any XID error."""
    actions: dict[str, Any] = {}
    if spec.sns_topic:
        actions = {"AlarmActions": [spec.sns_topic], "OKActions": [spec.sns_topic]}
    alarms: list[dict[str, Any]] = []
    for host in spec.hosts:
        for target in spec.targets:
            alarms.append({
                "AlarmName": f"{spec.prefix} {host} {target} unhealthy",
                "AlarmDescription": f"{target} on {host} was not healthy for {spec.unhealthy_periods} periods "
                                    f"of {spec.period} s (or the watchdog stopped reporting).",
                "Namespace": spec.namespace, "MetricName": TARGET_HEALTHY.name,
                "Dimensions": [{"Name": "Host", "Value": host}, {"Name": "Target", "Value": target}],
                "Statistic": "Maximum", "Period": spec.period,
                "EvaluationPeriods": spec.unhealthy_periods, "DatapointsToAlarm": spec.unhealthy_periods,
                "Threshold": 1.0, "ComparisonOperator": "LessThanThreshold",
                "TreatMissingData": "breaching", **actions,
            })
        for gpu in spec.gpus.get(host, []):
            dims = [{"Name": "Host", "Value": host}, {"Name": "GPU", "Value": str(gpu)}]
            alarms.append({
                "AlarmName": f"{spec.prefix} {host} GPU {gpu} memory above {spec.memory_percent:g}%",
                "AlarmDescription": f"GPU {gpu} on {host} has more than {spec.memory_percent:g}% of its memory in use.",
                "Namespace": spec.namespace, "MetricName": GPU_MEM_PCT.name, "Dimensions": dims,
                "Statistic": "Maximum", "Period": spec.period, "EvaluationPeriods": 3, "DatapointsToAlarm": 2,
                "Threshold": spec.memory_percent, "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "missing", **actions,
            })
            alarms.append({
                "AlarmName": f"{spec.prefix} {host} GPU {gpu} XID error",
                "AlarmDescription": f"GPU {gpu} on {host} reported an NVIDIA XID error.",
                "Namespace": spec.namespace, "MetricName": XID_ERRORS.name, "Dimensions": dims,
                "Statistic": "Sum", "Period": spec.period, "EvaluationPeriods": 1, "DatapointsToAlarm": 1,
                "Threshold": 1.0, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                "TreatMissingData": "notBreaching", **actions,
            })
    return alarms
