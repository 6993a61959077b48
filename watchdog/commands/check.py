"""``watchdogctl check``: one round of every probe without a daemon, judged at once.

For cron and Nagios-style checks on hosts that do not run the daemon (or to
look before starting it). One round cannot see what takes time (a hang is
work without progress *over time*), so besides what the detectors conclude
from the round, each target is judged on the spot:

- connections refused, or the server's process gone: ``down`` (critical);
- a canary that got no token, or stalled, or an error from the status
  endpoint: ``degraded`` (a warning: one round cannot tell a hang from a
  hiccup; the daemon can);
- a GPU that does not answer NVML: ``gpu_fault`` (critical).

Exit codes as ``watchdogctl status``: 0 ok, 1 degraded, 2 critical.
"""

from __future__ import annotations

from watchdog.config.model import Config
from watchdog.daemon.builder import make_suite
from watchdog.detect.factory import gpu_totals, make_engine
from watchdog.detect.finding import Finding
from watchdog.probes.base import MonotonicClock
from watchdog.probes.round import run_round
from watchdog.redact import Redactor
from watchdog.status import DaemonInfo, LatestRecords, StatusSnapshot, build_status
from watchdog.trace.records import Canary, GpuSample, ProcessSample, Record, ServerPoll


async def run_check(config: Config, config_path: str, canaries: bool = True) -> StatusSnapshot:
    """Probe every enabled target once and build the status snapshot."""
    clock = MonotonicClock()
    records: list[Record] = []
    suite = make_suite(config, clock, records.append)
    try:
        await run_round(suite, canary=canaries, logs=False, gpu_after=True)
        header = suite.header(clock.wall_start)
    finally:
        await suite.aclose()
    engine = make_engine(config, totals=gpu_totals(header.gpus))
    latest = LatestRecords()
    for record in records:
        engine.feed(record)
        latest.add(record)
    findings = {(f.target, f.finding): f for f in engine.active()}
    for finding in judge_round(records):
        findings.setdefault((finding.target, finding.finding), finding)
    return build_status(
        header=header,
        polls=latest.polls,
        canaries=latest.canaries,
        gpu_samples=latest.gpus,
        xids=latest.xids,
        findings=list(findings.values()),
        daemon=DaemonInfo(config_path=config_path, host=header.host, mode="check", ready=True),
        now=clock(),
        wall_start=clock.wall_start,
        redactor=Redactor.from_config(config),
    )


def judge_round(records: list[Record]) -> list[Finding]:
    """What one round shows on its own (pure)."""
    out: list[Finding] = []
    polls = {r.target: r for r in records if isinstance(r, ServerPoll)}
    canaries = {r.target: r for r in records if isinstance(r, Canary)}
    processes = {r.target: r for r in records if isinstance(r, ProcessSample)}
    for target in sorted(set(polls) | set(canaries) | set(processes)):
        poll, canary, process = polls.get(target), canaries.get(target), processes.get(target)
        t = max(r.t for r in (poll, canary, process) if r is not None)
        if process is not None and process.status in ("gone", "zombie"):
            out.append(Finding(t, target, "down", "raised", f"the server process is {process.status}"))
        elif poll is not None and poll.state == "down" and (canary is None or canary.error == "refused"):
            out.append(Finding(t, target, "down", "raised", f"connection refused ({poll.error or 'down'})"))
        elif canary is not None and not canary.ok and canary.error in ("timeout", "stalled"):
            out.append(Finding(t, target, "degraded", "raised",
                               f"a canary got {'no token' if canary.error == 'timeout' else 'stuck'} "
                               "(one round cannot tell a hang from a hiccup: the daemon can)"))
        elif poll is not None and poll.state == "error":
            out.append(Finding(t, target, "degraded", "raised", f"the status endpoint failed: {poll.error}"))
        elif canary is not None and not canary.ok and canary.error not in (None, "refused"):
            out.append(Finding(t, target, "degraded", "raised", f"a canary failed: {canary.error}"))
    for sample in records:
        if isinstance(sample, GpuSample) and sample.error is not None:
            out.append(Finding(sample.t, f"gpu:{sample.index}", "gpu_fault", "raised",
                               f"GPU {sample.index} does not answer NVML ({sample.error})"))
    return out
