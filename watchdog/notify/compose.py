"""From incident events to alerts (pure: no I/O, no clock but the one passed in).

Which events are worth a message: the transitions of an incident, never a
probe tick. ``opened``; an action that finished (a note whose evidence has an
``action`` and a ``result``); ``escalated`` (the incident became critical);
``gave_up`` (the actions stopped: a human is needed); ``resolved`` (closed).
A reopened incident (a flap) is *not* a message: it stays the same incident,
and its pending "resolved" is withdrawn instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from watchdog.incidents.model import Incident, IncidentEvent, TimelineEntry, to_datetime
from watchdog.notify.alert import Alert, AlertAction, AlertCanary, AlertEvent, AlertGpu
from watchdog.status.model import StatusSnapshot

Transition = Literal["opened", "action", "escalated", "gave_up", "resolved", "reopened"]
_GAVE_UP = {"gave_up", "give_up", "exhausted", "budget_exhausted"}
_UNFINISHED = {None, "", "started", "running", "pending", "acting"}


def transition(event: IncidentEvent, previous_severity: str | None) -> Transition | None:
    """What this event means for the people told, or None when it is not worth a message."""
    change = event.change
    if event.kind == "opened":
        return "opened"
    if event.kind == "closed":
        return "resolved"
    evidence = change.evidence or {}
    if change.kind == "note":
        if evidence.get("reopened"):
            return "reopened"
        if _gave_up(change):
            return "gave_up"
        if evidence.get("action") and evidence.get("result") not in _UNFINISHED:
            return "action"
        return None
    if change.kind == "raised" and previous_severity == "warning" and event.incident.severity == "critical":
        return "escalated"
    return None


def _gave_up(change: TimelineEntry) -> bool:
    """The actions stopped: a state change *into* gave_up (Act's notes), or a note that says so."""
    evidence = change.evidence or {}
    if "state" in evidence and "from" in evidence:
        return str(evidence["state"]).lower() in _GAVE_UP and str(evidence["from"]).lower() not in _GAVE_UP
    if "state" in evidence:  # "still gave_up": already told
        return False
    values = {str(evidence.get(k, "")).lower() for k in ("result", "state", "action", "outcome")}
    return bool(values & _GAVE_UP) or bool(evidence.get("gave_up")) or change.summary.lower().startswith("gave up")


def alert_key(host: str, incident_id: int, what: str) -> str:
    """The idempotency key of one message about one incident (stable across retries and restarts)."""
    return f"{host}:incident-{incident_id}:{what}"


def key_for(host: str, event: IncidentEvent, kind: AlertEvent) -> str:
    incident = event.incident
    if kind == "opened":
        return alert_key(host, incident.id, "opened")
    if kind == "escalated":
        return alert_key(host, incident.id, "escalated")
    if kind == "resolved":
        return alert_key(host, incident.id, f"resolved-{incident.flaps}")
    stamp = f"{event.change.at.timestamp():.3f}"
    return alert_key(host, incident.id, f"{kind}-{stamp}")


def actions_of(incident: Incident) -> list[AlertAction]:
    """The incident's actions: its ``actions`` field when it has one (Act), else the action notes."""
    listed = getattr(incident, "actions", None)
    if isinstance(listed, list) and listed:
        out = []
        for item in listed:
            data = item.model_dump(mode="json") if hasattr(item, "model_dump") else dict(item)
            action = _action(data)
            if action is not None:
                out.append(action)
        return out
    return [a for a in (_action(e.evidence, e.at) for e in incident.timeline if e.kind == "note") if a is not None]


def _action(evidence: dict[str, Any], at: datetime | None = None) -> AlertAction | None:
    if not isinstance(evidence, dict) or not evidence.get("action") or evidence.get("result") in _UNFINISHED:
        return None
    return AlertAction(
        action=str(evidence["action"]),
        method=_text(evidence.get("method")),
        result=_text(evidence.get("result")),
        started=_text(evidence.get("started")),
        finished=_text(evidence.get("finished")),
        detail=_text(evidence.get("detail")),
        at=at,
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def compose(
    event: IncidentEvent,
    kind: AlertEvent,
    *,
    host: str,
    now: float,
    snapshot: StatusSnapshot | None = None,
    key: str | None = None,
) -> Alert:
    """The alert for an incident transition (or a reminder: ``kind="reminder"``)."""
    incident = event.incident
    change = event.change
    finding = change.finding or (incident.active[0].finding if incident.active else None)
    if finding is None and incident.findings:
        finding = incident.findings[0].finding
    evidence = change.summary if change.kind in ("raised", "cleared") else _finding_summary(incident, finding)
    actions = actions_of(incident)
    action = _action(change.evidence, change.at) if kind in ("action", "gave_up") else None
    if kind == "gave_up" and action is None:
        action = AlertAction(action="give_up", result="gave_up", detail=change.summary, at=change.at)
    end = incident.closed_at.timestamp() if incident.closed_at else now
    gpus, canary = _context(incident.target, snapshot)
    recovered = getattr(incident, "recovered_after_s", None)
    alert = Alert(
        id=key or key_for(host, event, kind),
        event=kind,
        at=change.at if kind != "reminder" else to_datetime(now),
        host=host,
        target=incident.target,
        severity=incident.severity,
        headline="",
        incident_id=incident.id,
        incident_state=incident.state,
        title=incident.title,
        finding=finding,
        evidence=_one_line(evidence),
        findings=[f.finding for f in incident.active],
        opened_at=incident.opened_at,
        closed_at=incident.closed_at,
        open_for_s=round(max(0.0, end - incident.opened_at.timestamp()), 1),
        flaps=incident.flaps,
        action=action,
        actions=actions,
        recovered_after_s=recovered if isinstance(recovered, (int, float)) else None,
        gpus=gpus,
        last_canary=canary,
    )
    return alert.model_copy(update={"headline": headline(alert, change)})


def _finding_summary(incident: Incident, finding: str | None) -> str:
    for f in incident.findings:
        if f.finding == finding:
            return f.summary
    return incident.title


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def headline(alert: Alert, change: TimelineEntry | None = None) -> str:
    """One line that says it all, for subjects, notifications and Slack's ``text`` fallback."""
    where = f"{alert.target} on {alert.host}"
    ref = f"incident #{alert.incident_id}" if alert.incident_id is not None else "alert"
    finding = alert.finding or "problem"
    if alert.event == "opened":
        return f"{alert.severity.upper()}: {finding} on {where} ({ref})"
    if alert.event == "escalated":
        return f"ESCALATED to critical: {finding} on {where} ({ref})"
    if alert.event == "action" and alert.action is not None:
        how = f" via {alert.action.method}" if alert.action.method else ""
        return f"ACTION: {alert.action.action}{how} on {where}: {alert.action.result} ({ref})"
    if alert.event == "gave_up":
        return f"GAVE UP on {where}: a human is needed ({ref})"
    if alert.event == "resolved":
        after = alert.recovered_after_s if alert.recovered_after_s is not None else alert.open_for_s
        how = "recovered" if alert.recovered_after_s is not None else "resolved"
        return f"RESOLVED: {finding} on {where}, {how} after {format_seconds(after)} ({ref})"
    if alert.event == "reminder":
        return f"STILL OPEN for {format_seconds(alert.open_for_s)}: {finding} on {where} ({ref})"
    if alert.event == "sink_failing":
        return f"ALERT SINK FAILING: {alert.sink} on {alert.host} has not delivered for {format_seconds(alert.open_for_s)}"
    return f"TEST alert from inference-watchdog on {alert.host}"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = round(seconds)
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    minutes = (s % 3600) // 60
    return f"{s // 3600} h {minutes} min" if minutes else f"{s // 3600} h"


def _context(target: str, snapshot: StatusSnapshot | None) -> tuple[list[AlertGpu], AlertCanary | None]:
    if snapshot is None:
        return [], None
    if target.startswith("gpu:"):
        try:
            gpu = snapshot.gpu(int(target[4:]))
        except ValueError:
            gpu = None
        if gpu is None:
            return [], None
        return [AlertGpu(index=gpu.index, util=gpu.util, mem_used_mib=gpu.mem_used_mib,
                         mem_total_mib=gpu.mem_total_mib)], None
    status = snapshot.target(target)
    if status is None:
        return [], None
    gpus = [
        AlertGpu(index=g.index, util=g.util, mem_used_mib=g.mem_used_mib, mem_total_mib=g.mem_total_mib,
                 target_mem_mib=g.target_mem_mib)
        for g in status.gpus
    ]
    canary = None
    if status.last_canary is not None:
        c = status.last_canary
        canary = AlertCanary(ok=c.ok, model=c.model, error=c.error, ttft_s=c.ttft_s, tokens_per_s=c.tokens_per_s,
                             age_s=c.age_s)
    return gpus, canary


def make_test_alert(host: str, key: str, now: float, sink: str) -> Alert:
    """The message of ``watchdogctl alert test``: plainly a test, through the same path as the real ones."""
    alert = Alert(
        id=key,
        event="test",
        at=to_datetime(now),
        host=host,
        target="(test)",
        severity="info",
        headline="",
        title=f"test alert to {sink}",
        evidence="This is a test of the alert path: if you read it, delivery works.",
    )
    return alert.model_copy(update={"headline": headline(alert)})


def make_sink_alert(host: str, sink: str, kind: str, error: str, since: float, now: float,
                    waiting: int) -> Alert:
    """About a sink that has failed for a while, for the other sinks: named, never its URL."""
    alert = Alert(
        id=f"{host}:sink-{sink}:failing-{since:.0f}",
        event="sink_failing",
        at=to_datetime(now),
        host=host,
        target=f"alert-sink:{sink}",
        severity="warning",
        headline="",
        title=f"alert sink {sink} ({kind}) is failing",
        evidence=f"{error}; {waiting} message(s) waiting in the outbox, retried until they expire",
        opened_at=to_datetime(since),
        open_for_s=round(max(0.0, now - since), 1),
        sink=sink,
    )
    return alert.model_copy(update={"headline": headline(alert)})


def lines(alert: Alert) -> list[tuple[str, str]]:
    """Label/value pairs every rendering shows (text, HTML, Discord, Slack fields)."""
    out: list[tuple[str, str]] = [("Severity", alert.severity), ("Host", alert.host), ("Target", alert.target)]
    if alert.finding:
        out.append(("Finding", alert.finding))
    if alert.evidence:
        out.append(("Evidence", alert.evidence))
    if alert.gpus:
        out.append(("GPU", "; ".join(gpu_line(g) for g in alert.gpus)))
    if alert.last_canary is not None:
        out.append(("Last canary", canary_line(alert.last_canary)))
    if alert.action is not None:
        out.append(("Action", action_line(alert.action)))
    elif alert.actions:
        out.append(("Actions", "; ".join(action_line(a) for a in alert.actions[-3:])))
    elif alert.event not in ("test", "sink_failing"):
        out.append(("Action", "none taken"))
    if alert.event == "resolved" or alert.recovered_after_s is not None:
        if alert.recovered_after_s is not None:
            out.append(("Recovered after", format_seconds(alert.recovered_after_s)))
        else:
            out.append(("Open for", format_seconds(alert.open_for_s)))
    elif alert.open_for_s is not None and alert.event != "opened":
        out.append(("Open for", format_seconds(alert.open_for_s)))
    if alert.flaps:
        out.append(("Flaps", f"{alert.flaps} (reopened within the flap window; not paged again)"))
    if alert.incident_id is not None:
        out.append(("Incident", f"#{alert.incident_id} ({alert.incident_state}); watchdogctl history {alert.incident_id}"))
    return out


def gpu_line(g: AlertGpu) -> str:
    parts = [f"GPU {g.index}"]
    if g.util is not None:
        parts.append(f"{g.util:.0f}% util")
    if g.mem_used_mib is not None:
        total = f"/{g.mem_total_mib}" if g.mem_total_mib else ""
        parts.append(f"{g.mem_used_mib}{total} MiB")
    if g.target_mem_mib is not None:
        parts.append(f"target holds {g.target_mem_mib} MiB")
    return ", ".join(parts)


def canary_line(c: AlertCanary) -> str:
    if c.ok:
        bits = ["ok"]
        if c.ttft_s is not None:
            bits.append(f"TTFT {c.ttft_s:.2f} s")
        if c.tokens_per_s is not None:
            bits.append(f"{c.tokens_per_s:.1f} tok/s")
    else:
        bits = [f"failed ({c.error or 'error'})"]
    if c.model:
        bits.append(c.model)
    if c.age_s is not None:
        bits.append(f"{format_seconds(c.age_s)} ago")
    return ", ".join(bits)


def action_line(a: AlertAction) -> str:
    how = f" ({a.method})" if a.method else ""
    result = f": {a.result}" if a.result else ""
    detail = f" — {a.detail}" if a.detail else ""
    return f"{a.action}{how}{result}{detail}"


