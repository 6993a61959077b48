"""Alerts as each receiver wants them: Slack Block Kit, e-mail (text + HTML), Discord, ntfy, PagerDuty.

Pure functions of an :class:`~watchdog.notify.alert.Alert`; the sinks send what
these return. Text from the incident is escaped for each format (Slack mrkdwn,
HTML), so a summary can never inject markup or mentions.
"""

from __future__ import annotations

import html
from typing import Any

from watchdog.notify.alert import Alert
from watchdog.notify.compose import action_line, lines

_EMOJI = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}
_RESOLVED = ":large_green_circle:"
_COLOR = {"critical": 0xD7263D, "warning": 0xF49D37, "info": 0x3F88C5}
_GREEN = 0x2E933C


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(alert: Alert) -> dict[str, Any]:
    """Block Kit: a header, the headline, a field grid, evidence and context; ``text`` is the fallback."""
    emoji = _RESOLVED if alert.event == "resolved" else _EMOJI.get(alert.severity, "")
    pairs = lines(alert)
    short = [(k, v) for k, v in pairs if k in ("Severity", "Host", "Target", "Finding", "Recovered after",
                                                "Open for", "Flaps")]
    long = [(k, v) for k, v in pairs if (k, v) not in short and k != "Incident"]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(alert.headline, 150), "emoji": True}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{k}*\n{_slack_escape(_cut(v, 1900))}"} for k, v in short[:10]
        ]},
    ]
    for label, value in long:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": f"*{label}*\n{_slack_escape(_cut(value, 2900))}"}})
    context = f"{emoji} inference-watchdog on {_slack_escape(alert.host)}"
    if alert.incident_id is not None:
        context += f" · incident #{alert.incident_id} · `watchdogctl history {alert.incident_id}`"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": f"{emoji} {_slack_escape(alert.headline)}".strip(), "blocks": blocks, "unfurl_links": False}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def email_subject(alert: Alert) -> str:
    """Stable per incident (so mail clients that thread by subject agree with the headers)."""
    if alert.incident_id is None:
        return f"[inference-watchdog] {alert.headline}"
    return f"[inference-watchdog] {alert.host}: incident #{alert.incident_id} on {alert.target}: {alert.title}"[:200]


def email_text(alert: Alert) -> str:
    width = max(len(k) for k, _ in lines(alert)) + 1
    body = [alert.headline, "", *[f"{(k + ':').ljust(width)} {v}" for k, v in lines(alert)], ""]
    if len(alert.actions) > 3 and alert.action is None:  # the table above shows the last three
        body.append("Every action:")
        body.extend(f"  - {action_line(a)}" for a in alert.actions)
        body.append("")
    body.append(f"-- inference-watchdog on {alert.host} (message {alert.id})")
    return "\n".join(body) + "\n"


def email_html(alert: Alert) -> str:
    color = "#%06x" % (_GREEN if alert.event == "resolved" else _COLOR.get(alert.severity, 0x888888))
    rows = "\n".join(
        f'<tr><th align="left" style="padding:2px 12px 2px 0;vertical-align:top">{html.escape(k)}</th>'
        f"<td style=\"padding:2px 0\">{html.escape(v)}</td></tr>"
        for k, v in lines(alert)
    )
    return (
        "<!DOCTYPE html>\n<html><body style=\"font-family:sans-serif\">\n"
        f'<h2 style="border-left:6px solid {color};padding-left:8px">{html.escape(alert.headline)}</h2>\n'
        f"<table>\n{rows}\n</table>\n"
        f'<p style="color:#777;font-size:small">inference-watchdog on {html.escape(alert.host)} '
        f"&middot; message {html.escape(alert.id)}</p>\n</body></html>\n"
    )


def discord_message(alert: Alert) -> dict[str, Any]:
    color = _GREEN if alert.event == "resolved" else _COLOR.get(alert.severity, 0x888888)
    return {
        "content": _cut(alert.headline, 2000),
        "allowed_mentions": {"parse": []},
        "embeds": [{
            "title": _cut(alert.title or alert.headline, 256),
            "color": color,
            "timestamp": alert.at.isoformat(),
            "fields": [{"name": k, "value": _cut(v, 1024), "inline": len(v) < 40} for k, v in lines(alert)][:25],
            "footer": {"text": f"inference-watchdog · {alert.id}"[:2048]},
        }],
    }


def ntfy_message(alert: Alert) -> tuple[str, dict[str, str]]:
    """ntfy publishes the body as the message; title, priority and tags go in headers."""
    priority = {"critical": "5", "warning": "4", "info": "3"}.get(alert.severity, "3")
    if alert.event in ("resolved", "test"):
        priority = "3"
    tags = {"resolved": "white_check_mark", "critical": "rotating_light", "warning": "warning"}
    tag = tags["resolved"] if alert.event == "resolved" else tags.get(alert.severity, "bell")
    body = "\n".join(f"{k}: {v}" for k, v in lines(alert))
    headers = {"Title": _ascii(alert.headline)[:250], "Priority": priority, "Tags": tag}
    return body, headers


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def pagerduty_event(alert: Alert, routing_key: str) -> dict[str, Any]:
    """PagerDuty Events API v2: one dedup_key per incident; resolved resolves it."""
    dedup = f"{alert.host}:incident-{alert.incident_id}" if alert.incident_id is not None else alert.id
    action = "resolve" if alert.event == "resolved" else "trigger"
    return {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": dedup,
        "payload": {
            "summary": _cut(alert.headline, 1024),
            "source": alert.host,
            "severity": {"critical": "critical", "warning": "warning"}.get(alert.severity, "info"),
            "component": alert.target,
            "class": alert.finding or alert.event,
            "timestamp": alert.at.isoformat(),
            "custom_details": alert.payload(),
        },
    }
