"""A short, secret-free description of a valid config, for ``config check``."""

from __future__ import annotations

from watchdog.config.durations import format_duration as d
from watchdog.config.model import Config, TargetSettings


def describe_config(config: Config) -> list[str]:
    lines = []
    policy = config.policy
    if policy.mode in ("act", "dry-run"):
        how = "act" if policy.mode == "act" else "dry-run (decide and record 'would', never act)"
        window = f" in {policy.maintenance_window} UTC" if policy.maintenance_window else ""
        lines.append(
            f"policy: {how}; at most {policy.max_restarts} restart(s) per target per "
            f"{d(policy.restart_window)}, then pause and hand over; grace {d(policy.grace)}, "
            f"cooldown {d(policy.cooldown)}; non-urgent findings after a drain{window}"
        )
    else:
        lines.append("policy: observe (detect and alert, never act)")
    overrides = [f"{t.name}: {t.restart.mode}" for t in config.targets if t.restart.mode not in (None, policy.mode)]
    if overrides:
        lines.append("  mode overrides: " + ", ".join(overrides))
    w = config.watchdog
    lines.append(
        f"state in {w.state_dir}; GPU backend {w.gpu_backend}, sampled every {d(w.gpu_interval)}; "
        f"control socket {w.control_socket}"
    )
    lines.append(f"{len(config.targets)} target(s):")
    for target in config.targets:
        lines.append("  " + _target_line(config, target))
    if config.alerts:
        sinks = ", ".join(f"{a.name} ({a.kind}, {a.min_severity}+)" for a in config.alerts)
        lines.append(f"alerts: {sinks}")
    else:
        lines.append("alerts: none")
    m = config.metrics
    prom = f"prometheus on {m.prometheus.listen}" if m.prometheus.enabled else "prometheus off"
    cw = f"cloudwatch namespace {m.cloudwatch.namespace}" if m.cloudwatch.enabled else "cloudwatch off"
    lines.append(f"metrics: {prom}; {cw}")
    return lines


def _target_line(config: Config, target: TargetSettings) -> str:
    gpus = "auto" if target.gpus == "auto" else ",".join(map(str, target.gpus))
    canary = f"canary every {d(target.canary.interval)}" if target.canary.enabled else "no canary"
    method = target.restart_method()
    restart = {
        "docker": f'restart: docker container "{target.container}"',
        "systemd": f'restart: systemd unit "{target.unit}"',
        "command": f"restart: command {target.restart.command[0]}…" if target.restart.command else "",
        "none": "restart: none",
    }[method]
    state = "" if target.enabled else " (disabled)"
    return f"{target.name}{state}: {target.kind} at {target.url}, GPUs {gpus}, {canary}, {restart}"
