"""Every metric the watchdog exports, once: its CloudWatch name and unit, its Prometheus name, its scope.

The exporters, the dashboards, the alarms, the Grafana JSON and the README table all read
this list, so a name cannot drift between them. Few streams on purpose: CloudWatch bills
each (name, dimensions) pair as a custom metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["target", "gpu", "host"]
Kind = Literal["gauge", "counter"]
PROM_PREFIX = "inference_watchdog_"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Metric:
    name: str  # CloudWatch metric name (and EMF key)
    unit: str  # CloudWatch unit
    scope: Scope  # dimensions: Host, plus Target or GPU
    kind: Kind  # a counter is cumulative in Prometheus and a per-interval delta in CloudWatch/EMF
    prom: str  # Prometheus name without the prefix (a counter's ends in _total)
    help: str
    prom_scale: float = 1.0  # Prometheus wants base units (bytes, not MiB)
    unit_doc: str = ""  # what the README says when CloudWatch has no unit for it

    @property
    def prom_name(self) -> str:
        return PROM_PREFIX + self.prom

    @property
    def prom_family(self) -> str:
        """The family name prometheus_client's parser reports (without ``_total``)."""
        return self.prom_name.removesuffix("_total")


TARGET_HEALTHY = Metric("TargetHealthy", "None", "target", "gauge", "target_healthy",
                        "1 when the target's state is ok, 0 when degraded, critical or unknown", unit_doc="1/0")
CANARY_TTFT = Metric("CanaryTTFT", "Seconds", "target", "gauge", "canary_ttft_seconds",
                     "time to first token of the last successful canary")
CANARY_TPS = Metric("CanaryTokensPerSecond", "Count/Second", "target", "gauge", "canary_tokens_per_second",
                    "generation speed of the last successful canary")
CANARY_FAILURES = Metric("CanaryFailures", "Count", "target", "counter", "canary_failures_total",
                         "failed canaries")
OPEN_INCIDENTS = Metric("OpenIncidents", "Count", "target", "gauge", "open_incidents",
                        "open incidents of the target (0 or 1)")
RESTARTS = Metric("Restarts", "Count", "target", "counter", "restarts_total",
                  "restarts the watchdog carried out (recorded in an incident's timeline)")
UNLOADS = Metric("Unloads", "Count", "target", "counter", "unloads_total",
                 "forced model unloads the watchdog carried out (recorded in an incident's timeline)")
GPU_UTIL = Metric("GPUUtilization", "Percent", "gpu", "gauge", "gpu_utilization_percent", "GPU utilisation")
GPU_MEM = Metric("GPUMemoryUsed", "Megabytes", "gpu", "gauge", "gpu_memory_used_bytes",
                 "GPU memory in use (CloudWatch: MiB; Prometheus: bytes)", prom_scale=MIB, unit_doc="MiB")
GPU_MEM_PCT = Metric("GPUMemoryUsedPercent", "Percent", "gpu", "gauge", "gpu_memory_used_percent",
                     "GPU memory in use, of the total")
GPU_TEMP = Metric("GPUTemperature", "None", "gpu", "gauge", "gpu_temperature_celsius", "GPU temperature",
                  unit_doc="°C")
GPU_POWER = Metric("GPUPower", "None", "gpu", "gauge", "gpu_power_watts", "GPU power draw", unit_doc="W")
XID_ERRORS = Metric("XidErrors", "Count", "gpu", "counter", "gpu_xid_errors_total", "NVIDIA XID errors")
OUTBOX = Metric("AlertOutboxDepth", "Count", "host", "gauge", "alert_outbox_depth",
                "alerts stored and not yet delivered (only when alerts are configured)")

METRICS: tuple[Metric, ...] = (
    TARGET_HEALTHY, CANARY_TTFT, CANARY_TPS, CANARY_FAILURES, OPEN_INCIDENTS, RESTARTS, UNLOADS,
    GPU_UTIL, GPU_MEM, GPU_MEM_PCT, GPU_TEMP, GPU_POWER, XID_ERRORS, OUTBOX,
)
BY_NAME = {m.name: m for m in METRICS}
