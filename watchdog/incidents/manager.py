"""The incident manager: findings in, incidents (and their events) out.

Rules:
- a raised finding on a target with no open incident opens one (with a
  recording of the ``incident_context`` seconds before it); later findings on
  that target join it;
- the incident closes when every finding in it has cleared; its recording
  keeps taking records for ``incident_context`` seconds more;
- its severity is the worst of its findings (:data:`watchdog.detect.finding.SEVERITY`);
- a target that raises the same finding again within ``flap_window`` of its
  incident closing (raise, clear, raise: a flapping target) gets that incident *reopened*, with
  ``flaps`` counted up, rather than a new one: one problem, one incident, one page;
- after a restart, open incidents are reloaded; their raised findings are
  *carried over* and re-judged from what the new run observes, never dropped
  by a timer alone: the new run raises them again (they stay), or shows they
  are over (``hang``: a canary answers; ``down``: the server answers; they are
  cleared at once, saying why), or, for the other findings, watches the target
  for ``carryover_grace`` without raising them (cleared). A ``hang`` or ``down``
  with no fresh evidence either way (the server says nothing) stays raised.

The manager is synchronous and single-threaded; the async facade runs it in
its worker thread. Its memory is the truth for the running daemon: when the
store cannot be written (disk full, read-only), changes are kept and written
when it recovers, and events still go out, because a hang must still be acted
on when the disk is full. Time: findings and records carry the daemon clock's
``t``; ``wall_start + t`` is Unix time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from watchdog.config.durations import format_duration
from watchdog.detect.finding import Finding
from watchdog.incidents.counters import COUNTS_FLUSH_S, Counts, count_canaries, merge
from watchdog.incidents.model import (
    Incident,
    IncidentEvent,
    IncidentFinding,
    RecordingInfo,
    TimelineEntry,
    severity_of,
    to_datetime,
    to_timestamp,
    worst,
)
from watchdog.incidents.recording import (
    DEFAULT_MAX_BYTES,
    RecordingFile,
    recording_name,
    scope_for,
)
from watchdog.incidents.store import DB_NAME, IncidentStore
from watchdog.logs import LogOnce
from watchdog.redact import NO_SECRETS, Redactor
from watchdog.trace.records import Canary, Header, Record, ServerPoll

DEFAULT_RETENTION = 90 * 86400.0
_TITLE_MAX = 200
_PRUNE_EVERY_S = 86400.0
_log = logger.bind(component="incidents")


@dataclass
class _Live:
    incident: Incident
    recording: RecordingFile | None
    noted_full: bool = False


@dataclass
class _Tail:
    recording: RecordingFile
    until_t: float


@dataclass
class _Unsaved:
    incident: Incident
    entries: list[TimelineEntry] = field(default_factory=list)


class IncidentManager:
    """Opens, updates and closes incidents from findings; keeps their recordings."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        wall_start: float,
        header: Header | None = None,
        incident_context: float = 300.0,
        carryover_grace: float = 600.0,
        retention: float = DEFAULT_RETENTION,
        redactor: Redactor = NO_SECRETS,
        max_recording_bytes: int = DEFAULT_MAX_BYTES,
        store: IncidentStore | None = None,
        flap_window: float = 0.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.flap_window = flap_window
        self.wall_start = wall_start
        self.header = header or Header()
        self.incident_context = incident_context
        self.carryover_grace = carryover_grace
        self.retention = retention
        self.redactor = redactor
        self.max_recording_bytes = max_recording_bytes
        self.store = store or IncidentStore(self.state_dir / DB_NAME)
        self._open: dict[str, _Live] = {}
        #: The last closed incident of each target and its close time (for reopening a flap).
        self._closed: dict[str, tuple[Incident, float]] = {}
        self._tails: dict[int, _Tail] = {}
        self._next_prune = float("inf")  # set by the first prune, at start
        self._unsaved: dict[int, _Unsaved] = {}
        self._carry_until: float | None = None
        self._watched: set[str] = set()  # targets the new run has observed since it started
        self._next_id = 1
        self._canary_counts: Counts = {}
        self._counts_flushed_t: float | None = None
        self._once = LogOnce("incidents")
        #: Problems an operator should see in ``status`` (key -> one line).
        self.problems: dict[str, str] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, t: float = 0.0) -> list[IncidentEvent]:
        """Take over what the previous run left: open incidents and recordings still running."""
        previous = self.store.get_meta("running")
        try:
            self.store.set_meta("running", "1")
            self.store.set_meta("started_at", str(self._wall(t)))
        except sqlite3.Error as exc:
            self._problem("store", f"state store: cannot write ({exc}); incidents are kept in memory until it can")
        self._next_id = self.store.max_id() + 1
        self._prune(t)
        events: list[IncidentEvent] = []
        how = "after a clean stop" if previous == "0" else "after an unclean stop (crash, kill or power loss)"
        for incident in self.store.open_incidents():
            carried = [
                f.model_copy(update={"carried_over": True}) if f.state == "raised" else f for f in incident.findings
            ]
            names = ", ".join(f.finding for f in carried if f.carried_over) or "none"
            entry = TimelineEntry(
                at=self._at(t),
                kind="note",
                summary=(
                    f"daemon restarted {how}; raised findings ({names}) carried over and re-judged from "
                    "fresh evidence: kept while it shows them, cleared when it shows them over"
                ),
            )
            incident = incident.model_copy(update={"findings": carried, "timeline": [*incident.timeline, entry]})
            if not incident.active:
                # Open without a raised finding cannot happen through this code; close it, never leave it hanging.
                incident = incident.model_copy(update={"state": "closed", "closed_at": entry.at})
                self._save(incident, [entry])
                events.append(IncidentEvent(kind="closed", incident=incident, change=entry))
                continue
            self._open[incident.target] = _Live(incident, self._reopen(incident))
            self._save(incident, [entry])
            events.append(IncidentEvent(kind="updated", incident=self._view(incident.target), change=entry))
        if self._open:
            self._carry_until = t + self.carryover_grace
        for incident in self.store.tailing(self._wall(t)):
            recording = self._reopen(incident)
            if recording is not None and incident.recording and incident.recording.until:
                until_t = to_timestamp(incident.recording.until) - self.wall_start
                self._tails[incident.id] = _Tail(recording, until_t)
        return events

    def stop(self) -> None:
        """A clean stop: recordings synced and closed, canary counts written, the store told so."""
        self.count_canaries((), flush=True)
        for live in self._open.values():
            if live.recording:
                live.recording.close()
        for tail in self._tails.values():
            tail.recording.close()
        self._flush()
        try:
            self.store.set_meta("running", "0")
        except sqlite3.Error as exc:
            _log.warning(f"state store: cannot record the clean stop ({exc})")
        self.store.close()

    def set_header(self, header: Header) -> None:
        """The header for recordings opened from now on (after a config reload)."""
        self.header = header

    # --- findings -----------------------------------------------------------------------------

    def handle(self, findings: Iterable[Finding], context: Sequence[Record] = ()) -> list[IncidentEvent]:
        """Apply findings in order. ``context``: the recent records, for recordings that open now."""
        events: list[IncidentEvent] = []
        for finding in findings:
            if finding.state == "raised":
                events.extend(self._raised(finding, context))
            else:
                events.extend(
                    self._clear(finding.target, finding.finding, finding.t, finding.summary, finding.evidence)
                )
        return events

    def _raised(self, finding: Finding, context: Sequence[Record]) -> list[IncidentEvent]:
        at = self._at(finding.t)
        severity = severity_of(finding.finding)
        entry = TimelineEntry(
            at=at,
            kind="raised",
            finding=finding.finding,
            severity=severity,
            summary=self.redactor.text(finding.summary),
            evidence=self.redactor.data(dict(finding.evidence)),
        )
        live = self._open.get(finding.target)
        if live is None:
            closed = self._flapped(finding.target, finding.finding, finding.t)
            if closed is not None:
                return self._reopen_incident(closed, finding, entry)
            return [self._open_incident(finding, entry, context)]
        incident = live.incident
        before = next((f for f in incident.findings if f.finding == finding.finding), None)
        still_raised = before is not None and before.state == "raised"
        updated = IncidentFinding(
            finding=finding.finding,
            state="raised",
            severity=severity,
            summary=entry.summary,
            raised_at=before.raised_at if still_raised and before else at,
            changed_at=at,
            carried_over=False,
        )
        incident = self._with_finding(incident, updated, entry)
        live.incident = incident
        self._save(incident, [entry])
        return [IncidentEvent(kind="updated", incident=self._view(finding.target), change=entry)]

    def _flapped(self, target: str, finding: str, t: float) -> tuple[Incident, float] | None:
        """The target's incident that closed within ``flap_window`` before ``t`` and had this finding."""
        if self.flap_window <= 0:
            return None
        recent = self._closed.get(target)
        if recent is None:
            # After a restart: the store knows what closed before it.
            try:
                incident = self.store.last_closed(target, self._wall(t) - self.flap_window)
            except sqlite3.Error:
                incident = None
            if incident is None or incident.closed_at is None:
                return None
            recent = (incident, to_timestamp(incident.closed_at) - self.wall_start)
        incident, closed_t = recent
        if t - closed_t > self.flap_window or incident.state != "closed":
            return None
        if not any(f.finding == finding for f in incident.findings):
            return None  # a different problem is a new incident (and a new page), not a flap
        return recent

    def _reopen_incident(
        self, closed: tuple[Incident, float], finding: Finding, entry: TimelineEntry
    ) -> list[IncidentEvent]:
        incident, closed_t = closed
        flaps = incident.flaps + 1
        gap = max(0.0, finding.t - closed_t)
        note = TimelineEntry(
            at=entry.at,
            kind="note",
            summary=(
                f"reopened: {finding.finding} raised again {format_duration(gap)} after the incident closed "
                f"(flap {flaps}; within the flap window of {format_duration(self.flap_window)})"
            ),
            evidence={"reopened": True, "flaps": flaps, "closed_for_s": round(gap, 3)},
        )
        tail = self._tails.pop(incident.id, None)
        recording_file = tail.recording if tail is not None else self._reopen(incident)
        recording = incident.recording
        if recording is not None:
            recording = recording.model_copy(update={"until": None})
        incident = incident.model_copy(
            update={
                "state": "open",
                "closed_at": None,
                "flaps": flaps,
                "recording": recording,
                "timeline": [*incident.timeline, note],
            }
        )
        updated = IncidentFinding(
            finding=finding.finding,
            state="raised",
            severity=entry.severity or "warning",
            summary=entry.summary,
            raised_at=entry.at,
            changed_at=entry.at,
        )
        incident = self._with_finding(incident, updated, entry)
        self._closed.pop(finding.target, None)
        self._open[finding.target] = _Live(incident, recording_file)
        self._save(incident, [note, entry])
        _log.warning(f"incident #{incident.id} on {finding.target} reopened (flap {flaps}): {entry.summary}")
        view = self._view(finding.target)
        return [
            IncidentEvent(kind="updated", incident=view, change=note),
            IncidentEvent(kind="updated", incident=view, change=entry),
        ]

    def _open_incident(self, finding: Finding, entry: TimelineEntry, context: Sequence[Record]) -> IncidentEvent:
        incident_id = self._next_id
        self._next_id += 1
        file = recording_name(incident_id)
        since = finding.t - self.incident_context
        recording = None
        try:
            recording = RecordingFile.create(
                self.state_dir / file,
                self.header,
                scope_for(finding.target, self.header),
                [r for r in context if r.t is None or r.t >= since],
                wall_start=self.wall_start,
                incident_id=incident_id,
                max_bytes=self.max_recording_bytes,
                redactor=self.redactor,
            )
            self._fine("recording-create")
        except OSError as exc:
            self._problem("recording-create", f"cannot write the recording of incident #{incident_id}: {exc}")
        incident = Incident(
            id=incident_id,
            target=finding.target,
            state="open",
            severity=entry.severity or "warning",
            title=_title(finding.finding, entry.summary),
            opened_at=entry.at,
            findings=[
                IncidentFinding(
                    finding=finding.finding,
                    state="raised",
                    severity=entry.severity or "warning",
                    summary=entry.summary,
                    raised_at=entry.at,
                    changed_at=entry.at,
                )
            ],
            timeline=[entry],
            recording=RecordingInfo(file=file, bytes=recording.size) if recording else None,
        )
        self._open[finding.target] = _Live(incident, recording)
        self._save(incident, [entry])
        _log.warning(f"incident #{incident_id} opened on {finding.target}: {entry.summary}")
        return IncidentEvent(kind="opened", incident=self._view(finding.target), change=entry)

    def _clear(
        self, target: str, name: str, t: float, summary: str, evidence: dict[str, Any] | None = None
    ) -> list[IncidentEvent]:
        live = self._open.get(target)
        if live is None:
            return []
        incident = live.incident
        before = next((f for f in incident.findings if f.finding == name), None)
        if before is None or before.state != "raised":
            return []
        at = self._at(t)
        entry = TimelineEntry(
            at=at,
            kind="cleared",
            finding=name,
            severity=before.severity,
            summary=self.redactor.text(summary),
            evidence=self.redactor.data(dict(evidence or {})),
        )
        updated = before.model_copy(
            update={"state": "cleared", "summary": entry.summary, "changed_at": at, "carried_over": False}
        )
        incident = self._with_finding(incident, updated, entry)
        if incident.active:
            live.incident = incident
            self._save(incident, [entry])
            return [IncidentEvent(kind="updated", incident=self._view(target), change=entry)]
        # The last finding cleared: the incident closes; its recording runs on for a while
        # (through the flap window too, so a reopened incident continues the same file).
        until_t = t + max(self.incident_context, self.flap_window)
        recording = incident.recording
        if recording is not None:
            recording = recording.model_copy(update={"until": self._at(until_t), "bytes": self._size(live)})
        incident = incident.model_copy(update={"state": "closed", "closed_at": at, "recording": recording})
        del self._open[target]
        self._closed[target] = (incident, t)
        if live.recording is not None:
            self._tails[incident.id] = _Tail(live.recording, until_t)
        self._save(incident, [entry])
        _log.info(f"incident #{incident.id} on {target} closed: {entry.summary}")
        return [IncidentEvent(kind="closed", incident=incident, change=entry)]

    @staticmethod
    def _with_finding(incident: Incident, finding: IncidentFinding, entry: TimelineEntry) -> Incident:
        findings = [f for f in incident.findings if f.finding != finding.finding]
        position = next((i for i, f in enumerate(incident.findings) if f.finding == finding.finding), len(findings))
        findings.insert(position, finding)
        return incident.model_copy(
            update={
                "findings": findings,
                "severity": worst(f.severity for f in findings),
                "timeline": [*incident.timeline, entry],
            }
        )

    # --- notes, records, time -----------------------------------------------------------------

    def note(
        self,
        target: str,
        summary: str,
        t: float,
        evidence: dict[str, Any] | None = None,
        incident_id: int | None = None,
    ) -> list[IncidentEvent]:
        """Add a note (an action taken, an alert sent...) to the target's open incident, if any.

        With ``incident_id``, the note goes to that incident even when it has closed
        meanwhile (an action's verification often ends after the finding cleared).
        """
        entry = TimelineEntry(
            at=self._at(t),
            kind="note",
            summary=self.redactor.text(summary),
            evidence=self.redactor.data(dict(evidence or {})),
        )
        live = self._open.get(target)
        if live is None or (incident_id is not None and live.incident.id != incident_id):
            return self._note_closed(target, incident_id, entry)
        live.incident = live.incident.model_copy(update={"timeline": [*live.incident.timeline, entry]})
        self._save(live.incident, [entry])
        return [IncidentEvent(kind="updated", incident=self._view(target), change=entry)]

    def _note_closed(self, target: str, incident_id: int | None, entry: TimelineEntry) -> list[IncidentEvent]:
        if incident_id is None:
            return []
        try:
            incident = self.store.get(incident_id)
            if incident is None or incident.target != target or incident.is_open:
                return []
            with self.store.transaction():
                self.store.add_entry(incident_id, entry)
        except sqlite3.Error as exc:
            self._problem("store", f"state store: cannot add a note to incident #{incident_id} ({exc})")
            return []
        incident = incident.model_copy(update={"timeline": [*incident.timeline, entry]})
        return [IncidentEvent(kind="updated", incident=incident, change=entry)]

    def record(self, records: Sequence[Record]) -> list[IncidentEvent]:
        """Append records to the recordings that are running; then let time pass to the last one."""
        if not records:
            return []
        self.count_canaries(records)
        events: list[IncidentEvent] = []
        for target, live in list(self._open.items()):
            if live.recording is None:
                continue
            self._append(live.recording, records, f"incident-{live.incident.id}")
            if live.recording.full and not live.noted_full:
                live.noted_full = True
                limit = f"{live.recording.max_bytes // (1024 * 1024)} MiB"
                last_t = max((r.t for r in records if r.t is not None), default=0.0)
                text = f"recording reached its size limit ({limit}); later records are not kept"
                events.extend(self.note(target, text, last_t))
        for tail in self._tails.values():
            self._append(tail.recording, [r for r in records if r.t is None or r.t <= tail.until_t], "tail")
        if self._has_carried():
            events.extend(self._rejudge(records))
        last = max((r.t for r in records if r.t is not None), default=None)
        if last is not None:
            events.extend(self.tick(last))
        return events

    def count_canaries(self, records: Sequence[Record], flush: bool = False) -> list[IncidentEvent]:
        """Canaries sent and failed, for ``watchdogctl report``: written once a minute (and at a clean
        stop), not on every canary, so the pipeline never waits on an fsync for them; kept for the
        next try if the store fails. A crash loses at most the last minute's counts."""
        merge(self._canary_counts, count_canaries(records, self.wall_start))
        if not self._canary_counts:
            return []
        last = max((r.t for r in records if r.t is not None), default=None)
        if last is not None and self._counts_flushed_t is None:
            self._counts_flushed_t = last
        if not flush and (last is None or last - (self._counts_flushed_t or last) < COUNTS_FLUSH_S):
            return []
        self._counts_flushed_t = last
        try:
            self.store.add_canary_counts(self._canary_counts)
        except sqlite3.Error as exc:
            self._problem("canary-counts", f"state store: cannot count canaries ({exc}); kept in memory")
            return []
        self._canary_counts = {}
        self._fine("canary-counts")
        return []

    def _append(self, recording: RecordingFile, records: Sequence[Record], key: str) -> None:
        try:
            recording.append(records)
            self._fine(f"recording-{key}")
        except OSError as exc:
            self._problem(f"recording-{key}", f"cannot append to {recording.path.name}: {exc}")

    def tick(self, t: float) -> list[IncidentEvent]:
        """Let time pass: carried-over findings expire, finished recordings close, unsaved changes retry."""
        events: list[IncidentEvent] = []
        if self._carry_until is not None and t >= self._carry_until:
            self._carry_until = None
            grace = format_duration(self.carryover_grace)
            for target, live in list(self._open.items()):
                for finding in list(live.incident.findings):
                    if not (finding.carried_over and finding.state == "raised"):
                        continue
                    if finding.finding in _NEEDS_PROOF or target not in self._watched:
                        # No timer decides that a hang is over: only a canary that answers, a
                        # server that answers. Without any observation, nothing is known either.
                        events.extend(self.note(
                            target, f"{finding.finding} still carried over after {grace}: no fresh evidence "
                            "that it is over", t))
                        continue
                    events.extend(
                        self._clear(
                            target,
                            finding.finding,
                            t,
                            f"watched for {grace} after the daemon restarted and not raised again: over",
                        )
                    )
        for incident_id, tail in list(self._tails.items()):
            if t >= tail.until_t:
                try:
                    tail.recording.close()
                except OSError as exc:
                    self._problem("recording-tail", f"cannot close {tail.recording.path.name}: {exc}")
                del self._tails[incident_id]
        if self._unsaved:
            self._flush()
        if t >= self._next_prune:
            self._prune(t)
        return events

    def _has_carried(self) -> bool:
        return any(f.carried_over and f.state == "raised" for live in self._open.values()
                   for f in live.incident.findings)

    def _rejudge(self, records: Sequence[Record]) -> list[IncidentEvent]:
        """Clear carried-over findings that fresh records prove over (see the module's rules)."""
        events: list[IncidentEvent] = []
        for record in records:
            target = getattr(record, "target", None)
            live = self._open.get(target) if isinstance(target, str) else None
            if live is None:
                continue
            self._watched.add(live.incident.target)
            for finding in list(live.incident.findings):
                if not (finding.carried_over and finding.state == "raised"):
                    continue
                why = _proof_over(finding.finding, record)
                if why is not None and record.t is not None:
                    events.extend(self._clear(live.incident.target, finding.finding, record.t,
                                              f"re-judged after the daemon restarted: {why}"))
        return events

    # --- queries ------------------------------------------------------------------------------

    def open_incidents(self) -> list[Incident]:
        return [self._view(target) for target in self._open]

    def get(self, incident_id: int) -> Incident | None:
        for target, live in self._open.items():
            if live.incident.id == incident_id:
                return self._view(target)
        return self.store.get(incident_id)

    def list(self, since: float | None = None, limit: int = 50, timeline: bool = False) -> list[Incident]:
        incidents = self.store.list(since=since, limit=limit, timeline=timeline)
        live = {live.incident.id: target for target, live in self._open.items()}
        # Open incidents from memory: they may hold changes the store has not taken yet.
        return [self._view(live[i.id]) if i.id in live and timeline else i for i in incidents]

    def recording_path(self, incident: Incident) -> Path | None:
        if incident.recording is None:
            return None
        path = self.state_dir / incident.recording.file
        return path if path.is_file() else None

    @property
    def recording(self) -> bool:
        """Whether any recording takes records now (the facade skips the hop when not)."""
        return bool(self._tails) or any(live.recording is not None for live in self._open.values())

    # --- helpers ------------------------------------------------------------------------------

    def _view(self, target: str) -> Incident:
        live = self._open[target]
        incident = live.incident
        if incident.recording is not None and live.recording is not None:
            incident = incident.model_copy(
                update={"recording": incident.recording.model_copy(update={"bytes": live.recording.size})}
            )
        try:  # actions are written by watchdog/act/ into the same database
            actions = self.store.actions_of(incident.id)
            recovered = self.store.recovered_after(incident.id)
        except sqlite3.Error:
            return incident
        if actions or recovered is not None:
            incident = incident.model_copy(update={"actions": actions, "recovered_after_s": recovered})
        return incident

    @staticmethod
    def _size(live: _Live) -> int:
        return live.recording.size if live.recording is not None else 0

    def _reopen(self, incident: Incident) -> RecordingFile | None:
        if incident.recording is None:
            return None
        path = self.state_dir / incident.recording.file
        try:
            return RecordingFile.reopen(
                path,
                scope_for(incident.target, self.header),
                wall_start=self.wall_start,
                max_bytes=self.max_recording_bytes,
                redactor=self.redactor,
            )
        except (OSError, ValueError) as exc:
            self._problem(f"recording-{incident.id}", f"cannot reopen the recording of incident #{incident.id}: {exc}")
            return None

    def _save(self, incident: Incident, entries: list[TimelineEntry]) -> None:
        unsaved = self._unsaved.setdefault(incident.id, _Unsaved(incident))
        unsaved.incident = incident
        unsaved.entries.extend(entries)
        self._flush()

    def _flush(self) -> None:
        """Write every unsaved change, oldest incident first; stop at the first failure."""
        for incident_id, unsaved in list(self._unsaved.items()):
            try:
                with self.store.transaction():
                    self.store.put_incident(unsaved.incident)
                    for finding in unsaved.incident.findings:
                        self.store.put_finding(incident_id, finding)
                    for entry in unsaved.entries:
                        self.store.add_entry(incident_id, entry)
            except (sqlite3.Error, OSError) as exc:
                self._problem(
                    "store",
                    f"state store: cannot save incident #{incident_id} ({exc}); kept in memory, retried",
                    level="ERROR",
                )
                return
            del self._unsaved[incident_id]
        self._fine("store", "state store: saving again")

    def _prune(self, t: float) -> None:
        self._next_prune = t + _PRUNE_EVERY_S  # at start, then daily: a daemon may run for months
        if self.retention <= 0:
            return
        try:
            files = self.store.delete_closed_before(self._wall(t) - self.retention)
            self.store.delete_canary_counts_before(self._wall(t) - self.retention)
        except sqlite3.Error as exc:
            _log.warning(f"state store: cannot forget old incidents ({exc})")
            return
        for file in files:
            try:
                (self.state_dir / file).unlink(missing_ok=True)
            except OSError as exc:
                _log.warning(f"cannot delete old recording {file}: {exc}")
        if files:
            _log.info(f"forgot {len(files)} incident(s) older than {format_duration(self.retention)}")

    def _problem(self, key: str, message: str, level: str = "WARNING") -> None:
        self._once.problem(key, message, level)
        self.problems[key] = message

    def _fine(self, key: str, message: str | None = None) -> None:
        if self.problems.pop(key, None) is not None:
            self._once.ok(key, message)

    def _wall(self, t: float) -> float:
        return self.wall_start + t

    def _at(self, t: float):  # -> datetime
        return to_datetime(self._wall(t))


def _title(finding: str, summary: str) -> str:
    title = f"{finding}: {summary}" if summary else finding
    return title if len(title) <= _TITLE_MAX else title[: _TITLE_MAX - 1] + "…"


_NEEDS_PROOF = frozenset({"hang", "down"})
"""Carried-over findings that stay raised until an observation proves them over."""


def _proof_over(finding: str, record: Record) -> str | None:
    """Why ``record`` shows a carried-over ``finding`` is over, or None."""
    if finding == "hang" and isinstance(record, Canary) and record.ok:
        return "a canary got through"
    if finding == "down":
        if isinstance(record, ServerPoll) and record.state not in ("down",):
            return f"the server answers (state {record.state})"
        if isinstance(record, Canary) and record.error != "refused":
            return "a canary was accepted"
    return None
