"""``watchdogctl cloudwatch dashboard|alarms``: print (and with ``--apply`` put) dashboards and alarms.

The hosts default to this host's Host dimension (as the daemon computes it), the targets
to the config's enabled targets; the namespace, region and endpoint come from
``[metrics.cloudwatch]``. GPU alarms need GPU indexes: ``--gpu``, or, when CloudWatch is
reachable, the GPUs each host has reported (ListMetrics).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from watchdog.config import Config
from watchdog.metrics.catalogue import GPU_MEM_PCT
from watchdog.metrics.dashboard import AlarmSpec, DashboardSpec, alarm_definitions, dashboard_body
from watchdog.metrics.host import resolve_host

EXIT_OK, EXIT_FAILED = 0, 1


def _client(config: Config, region: str | None) -> Any:
    try:
        import boto3
    except ImportError:
        print("error: boto3 is missing: pip install 'inference-watchdog[cloudwatch]'", file=sys.stderr)
        sys.exit(2)
    cw = config.metrics.cloudwatch
    return boto3.session.Session().client("cloudwatch", region_name=cw.region or region or None,
                                          endpoint_url=cw.endpoint_url or None)


def _hosts_and_region(config: Config, hosts: Sequence[str]) -> tuple[list[str], str | None]:
    identity = resolve_host(config.metrics.host)
    return (list(hosts) or [identity.host]), identity.region


def _region(config: Config, client: Any | None, region: str | None) -> str:
    if client is not None:
        return str(client.meta.region_name)
    return config.metrics.cloudwatch.region or region or "us-east-1"


def dashboard_command(config: Config, hosts: Sequence[str], name: str, apply: bool) -> int:
    host_list, region = _hosts_and_region(config, hosts)
    client = _client(config, region) if apply else None
    spec = DashboardSpec(
        namespace=config.metrics.cloudwatch.namespace, region=_region(config, client, region), hosts=host_list,
        targets=[t.name for t in config.targets if t.enabled], period=max(60, int(config.metrics.cloudwatch.interval)),
    )
    body = dashboard_body(spec)
    print(json.dumps(body, indent=2))
    if client is None:
        return EXIT_OK
    answer = client.put_dashboard(DashboardName=name, DashboardBody=json.dumps(body))
    problems = answer.get("DashboardValidationMessages") or []
    for problem in problems:
        print(f"warning: {problem.get('DataPath', '')}: {problem.get('Message', '')}", file=sys.stderr)
    print(f"put dashboard {name!r} ({len(body['widgets'])} widgets, hosts: {', '.join(host_list)})", file=sys.stderr)
    return EXIT_OK


def reported_gpus(client: Any, namespace: str, host: str) -> list[int]:
    """The GPU indexes a host has put metrics for."""
    gpus: set[int] = set()
    for page in client.get_paginator("list_metrics").paginate(
            Namespace=namespace, MetricName=GPU_MEM_PCT.name, Dimensions=[{"Name": "Host", "Value": host}]):
        for metric in page.get("Metrics", []):
            for dim in metric.get("Dimensions", []):
                if dim["Name"] == "GPU" and dim["Value"].isdigit():
                    gpus.add(int(dim["Value"]))
    return sorted(gpus)


def alarms_command(config: Config, hosts: Sequence[str], gpus: Sequence[int], sns_topic: str | None,
                   periods: int, apply: bool) -> int:
    host_list, region = _hosts_and_region(config, hosts)
    namespace = config.metrics.cloudwatch.namespace
    client = None
    by_host: dict[str, list[int]] = {h: list(gpus) for h in host_list}
    if apply or not gpus:
        try:
            client = _client(config, region)
            if not gpus:
                by_host = {h: reported_gpus(client, namespace, h) for h in host_list}
        except Exception as exc:  # noqa: BLE001 - printing works without CloudWatch
            if apply:
                print(f"error: cannot reach CloudWatch: {exc}", file=sys.stderr)
                return EXIT_FAILED
            print(f"note: no GPU alarms (CloudWatch not reachable to find the GPUs: {exc}); use --gpu N",
                  file=sys.stderr)
    spec = AlarmSpec(namespace=namespace, hosts=host_list, targets=[t.name for t in config.targets if t.enabled],
                     gpus=by_host, period=max(60, int(config.metrics.cloudwatch.interval)),
                     unhealthy_periods=periods, sns_topic=sns_topic)
    alarms = alarm_definitions(spec)
    print(json.dumps(alarms, indent=2))
    if not apply or client is None:
        return EXIT_OK
    for alarm in alarms:
        client.put_metric_alarm(**alarm)
    print(f"put {len(alarms)} alarm(s)", file=sys.stderr)
    return EXIT_OK
