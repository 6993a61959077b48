"""The actor: incident events in, the smallest action that fixes them out, proven by a canary.

It listens on ``Incidents.bus``. When an incident opens (or a new finding joins
one) on a target it is not already working on, it runs an *episode* for that
target: the finding's escalation ladder, one rung at a time, each rung carried
out, given a grace to come back, and verified; a rung that did not fix it is
followed, after a cooldown, by the next; a spent ladder or restart budget pauses
the target and hands over to a human ("gave up"). Every change of the target's
:class:`~watchdog.act.states.Machine` is one line in the incident's timeline,
and every action a row in the ``actions`` table (intent first, result after).

Manual actions (``watchdogctl restart/unload/pause/resume``) go through the same
guards, budget and records.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from loguru import logger

from watchdog.act.actions.base import Outcome
from watchdog.act.actions.command import run_command
from watchdog.act.actions.docker import restart_container
from watchdog.act.actions.evidence import Proof, Refusal, prove
from watchdog.act.actions.kill import kill_processes
from watchdog.act.actions.systemd import restart_unit
from watchdog.act.actions.unload import request_unload
from watchdog.act.host import ActHost, IncidentsPort
from watchdog.act.policy import (
    URGENT,
    EffectivePolicy,
    TargetSnapshot,
    budget,
    describe_ladder,
    drained,
    driving_finding,
    in_window,
    memory_back,
    restart_blocked,
)
from watchdog.act.states import Machine, State, Transition
from watchdog.act.store import ActionStore, Pause
from watchdog.config.durations import format_duration
from watchdog.config.model import TargetSettings
from watchdog.incidents.model import Incident, IncidentEvent, to_timestamp
from watchdog.trace.records import Event

T = TypeVar("T")
_log = logger.bind(component="act")
_POLL_S = 1.0


class ActError(Exception):
    """A manual action refused (unknown target, paused, busy, budget spent, mode): the message says why."""


@dataclass
class _Episode:
    incident_id: int | None
    finding: str
    raised_wall: float | None
    task: asyncio.Task[None] | None = None
    #: The pids the detector named in its evidence (failed_unload: the holders left behind).
    pids: tuple[int, ...] = ()
    #: What was tried so far, e.g. "restart (ok, not verified)", for the "gave up" line.
    tried: list[str] = field(default_factory=list)


class Actor:
    """Create with the daemon's host and incidents; ``await start()``; ``await stop()``."""

    def __init__(
        self,
        host: ActHost,
        incidents: IncidentsPort,
        *,
        systemctl: tuple[str, ...] = ("systemctl",),
        docker_base_url: str | None = None,
        poll_s: float = _POLL_S,
        canary_gap_s: float = 2.0,
    ) -> None:
        self.host = host
        self.incidents = incidents
        self.systemctl = systemctl
        self.docker_base_url = docker_base_url
        self.poll_s = poll_s
        self.canary_gap_s = canary_gap_s
        self.machines: dict[str, Machine] = {}
        self._episodes: dict[str, _Episode] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="act-store")
        self._store: ActionStore | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._paused: dict[str, Pause] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, account for actions a killed watchdog left unfinished, then listen."""
        path = self.incidents.db_path
        self._store = await self._db(lambda: ActionStore(path))
        now = self.wall()
        self._paused = await self._db(lambda: self._require().paused(now))
        unfinished = await self._db(lambda: self._require().unfinished())
        for row in unfinished:
            detail = "the watchdog stopped during this action (killed or crashed); not carried out again"
            await self._db(lambda row=row, detail=detail: self._require().interrupt(row.id, now, detail))
            _log.warning(f"{row.target}: {row.action} (#{row.id}) was interrupted by a watchdog stop; not repeated")
            await self._note(row.target, f"act: {row.action} by {row.method} was interrupted (the watchdog stopped "
                             "mid-action); not repeated, verifying instead",
                             {"action": row.action, "method": row.method, "result": "interrupted",
                              "started": row.started, "finished": now, "detail": detail}, row.incident_id)
            if row.manual or row.finding is None or row.target not in self._targets():
                continue
            # Resume the episode at verification: did the interrupted action work?
            raised_wall = None
            incident = await self.incidents.get(row.incident_id) if row.incident_id is not None else None
            if incident is not None:
                raised = next((f.raised_at for f in incident.findings if f.finding == row.finding), None)
                raised_wall = to_timestamp(raised) if raised is not None else None
            if row.action == "restart":
                self._emit(row.target, "restart_started")  # it may still be going on: no "down" meanwhile
            self._start_episode(row.target, row.incident_id, row.finding, raised_wall,
                                start_step=(row.step or 0), resume_verify=row.action)
        # Incidents carried over from before the stop are not acted on until this run raises
        # their findings again from fresh evidence (an "updated" event with a raised entry).
        self._unsubscribe = self.incidents.bus.subscribe(self._on_event)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = [e.task for e in self._episodes.values() if e.task is not None] + list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._store is not None:
            store, self._store = self._store, None
            await asyncio.get_running_loop().run_in_executor(self._executor, store.close)
        self._executor.shutdown(wait=True)

    async def reload(self) -> None:
        """The config is read from the host at every decision; nothing to swap."""

    # --- listening ----------------------------------------------------------------------------

    def _on_event(self, event: IncidentEvent) -> None:
        if event.kind == "closed" or event.change.kind != "raised":
            return
        self._consider(event.incident)

    def _consider(self, incident: Incident) -> None:
        target = incident.target
        if target not in self._targets():
            return  # gpu:N and unknown targets: nothing to restart
        machine = self.machine(target)
        if machine.busy or target in self._episodes:
            return
        finding = driving_finding(f.finding for f in incident.active if not f.carried_over)
        if finding is None:
            return
        raised = next((f.raised_at for f in incident.active if f.finding == finding), incident.opened_at)
        pids: tuple[int, ...] = ()
        for entry in reversed(incident.timeline):
            if entry.kind == "raised" and entry.finding == finding:
                named = entry.evidence.get("pids")
                if isinstance(named, list):
                    pids = tuple(p for p in named if isinstance(p, int) and not isinstance(p, bool))
                break
        self._start_episode(target, incident.id, finding, to_timestamp(raised), pids=pids)

    def _start_episode(self, target: str, incident_id: int | None, finding: str, raised_wall: float | None,
                       *, start_step: int = 0, resume_verify: str | None = None, pids: tuple[int, ...] = ()) -> None:
        episode = _Episode(incident_id, finding, raised_wall, pids=pids)
        self._episodes[target] = episode

        async def run() -> None:
            try:
                await self._episode(target, episode, start_step, resume_verify)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an actor bug must never take the daemon down
                _log.opt(exception=exc).error(f"{target}: action episode failed: {exc!r}")
                machine = self.machine(target)
                if machine.state != State.WATCHING and machine.can(State.WATCHING):
                    await self._change(target, State.WATCHING, f"internal error, stopped acting: {exc!r}")
            finally:
                if self._episodes.get(target) is episode:
                    del self._episodes[target]

        episode.task = asyncio.ensure_future(run())

    # --- the episode --------------------------------------------------------------------------

    async def _episode(self, target: str, ep: _Episode, step: int, resume_verify: str | None) -> None:
        policy = self.policy(target)
        if policy is None:
            return
        if policy.mode == "observe":
            return  # observe: detect and explain, decide nothing
        ladder = policy.ladder(ep.finding)
        if await self._paused_now(target):
            pause = self._paused[target]
            await self._note(target, f"act: {target} is paused ({pause.reason or 'by an operator'}); "
                             f"no action on {ep.finding}", {"paused": True}, ep.incident_id)
            return
        if not ladder:
            await self._note(target, f"act: no action for {ep.finding} (its ladder is empty): a human must look",
                             {"finding": ep.finding}, ep.incident_id)
            return
        # After a verification that failed, the next rung goes ahead even if the finding cleared
        # meanwhile: our own restart clears a hang ("the hung process is gone"), the failed canary
        # is the fresher evidence.
        failed_verification = False
        if resume_verify is not None:
            await self._change(target, State.VERIFYING, f"after the interrupted {resume_verify}", ep)
            if await self._verify(target, resume_verify, policy, ep, before=None):
                return
            step += 1
            failed_verification = True
            ep.tried.append(f"{resume_verify} (interrupted, not verified)")
            await self._backoff(target, policy, ep, f"the interrupted {resume_verify} did not fix it")
        while step < len(ladder):
            rung = ladder[step]
            where = f"{ep.finding}: {rung} (rung {step + 1} of {len(ladder)}: {describe_ladder(ladder)})"
            if rung == "give_up":
                await self._give_up(target, ep, f"the {ep.finding} ladder is spent: "
                                    f"{', '.join(ep.tried) or 'nothing'} did not fix it")
                return
            if rung == "drain":
                if not await self._drain(target, policy, ep):
                    return
                step += 1
                continue
            if not failed_verification and not self._still_needed(target, ep):
                if self.machine(target).state != State.WATCHING:
                    await self._change(target, State.WATCHING, f"{ep.finding} cleared before {rung}", ep)
                return
            if not await self._wait_unblocked(target, rung, policy, ep, proven_broken=failed_verification):
                return
            outcome = await self._act(target, rung, policy, ep, step=step, where=where)
            if outcome is None:  # gave up (budget), or the target was paused meanwhile
                return
            if outcome.result == "would":
                await self._change(target, State.WATCHING, f"dry-run: would {rung}; nothing done", ep)
                return
            if outcome.ok:
                before = outcome.facts.get("_before_mib")
                await self._change(target, State.VERIFYING, f"{rung} {outcome.result}: {outcome.detail}", ep)
                if await self._verify(target, rung, policy, ep, before=before):
                    return
                ep.tried.append(f"{rung} (ok, not verified)")
                failed_verification = True
                step += 1
                if step < len(ladder):
                    await self._backoff(target, policy, ep, f"{rung} did not fix it")
                continue
            ep.tried.append(f"{rung} ({outcome.result})")
            step += 1
            if outcome.result == "skipped":
                await self._change(target, State.BACKOFF, f"{rung} skipped: {outcome.detail}; next rung", ep)
                continue
            if step < len(ladder):
                await self._change(target, State.BACKOFF, f"{rung} {outcome.result}: {outcome.detail}", ep)
                await self._sleep_cooldown(target, policy, ep)
        await self._give_up(target, ep, f"the {ep.finding} ladder ({describe_ladder(ladder)}) ended "
                            "without a fix")

    async def _backoff(self, target: str, policy: EffectivePolicy, ep: _Episode, why: str) -> None:
        await self._change(target, State.BACKOFF, f"{why}; next rung in {format_duration(policy.cooldown)}", ep)
        await self._sleep_cooldown(target, policy, ep)

    async def _sleep_cooldown(self, target: str, policy: EffectivePolicy, ep: _Episode) -> None:
        await asyncio.sleep(policy.cooldown)

    def _still_needed(self, target: str, ep: _Episode) -> bool:
        snap = self.host.snapshot(target)
        if snap is None:
            return True
        return ep.finding in snap.findings

    async def _wait_unblocked(self, target: str, rung: str, policy: EffectivePolicy, ep: _Episode,
                              proven_broken: bool = False) -> bool:
        """Never restart a loading or prefilling server: wait (up to the drain timeout) until it is not.
        ``proven_broken``: a verification just failed, which is reason enough without a finding."""
        if rung != "restart":
            return True
        why = restart_blocked(self.host.snapshot(target), manual=proven_broken)
        if why is None:
            return True
        await self._change(target, State.WAITING, f"not restarting now: {why}", ep)
        deadline = asyncio.get_running_loop().time() + policy.drain_timeout
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(self.poll_s)
            if not proven_broken and not self._still_needed(target, ep):
                await self._change(target, State.WATCHING, f"{ep.finding} cleared while waiting", ep)
                return False
            why = restart_blocked(self.host.snapshot(target), manual=proven_broken)
            if why is None:
                return True
        await self._change(target, State.WATCHING, f"still not safe to restart after "
                           f"{format_duration(policy.drain_timeout)} ({why}); no action", ep)
        return False

    async def _drain(self, target: str, policy: EffectivePolicy, ep: _Episode) -> bool:
        """Non-urgent: wait for the maintenance window, then for no running requests (or the deadline)."""
        loop = asyncio.get_running_loop()
        if policy.maintenance_window and not in_window(policy.maintenance_window, self.wall()):
            await self._change(target, State.WAITING,
                               f"{ep.finding} is not urgent: waiting for the maintenance window "
                               f"{policy.maintenance_window} UTC", ep)
            while not in_window(policy.maintenance_window, self.wall()):
                await asyncio.sleep(max(self.poll_s, 30.0))
                if not self._still_needed(target, ep):
                    await self._change(target, State.WATCHING, f"{ep.finding} cleared while waiting", ep)
                    return False
        if drained(self.host.snapshot(target)):
            return True
        if self.machine(target).state != State.WAITING:
            await self._change(target, State.WAITING, f"{ep.finding} is not urgent: draining (no running requests, "
                               f"or {format_duration(policy.drain_timeout)})", ep)
        deadline = loop.time() + policy.drain_timeout
        while loop.time() < deadline and not drained(self.host.snapshot(target)):
            await asyncio.sleep(self.poll_s)
            if not self._still_needed(target, ep):
                await self._change(target, State.WATCHING, f"{ep.finding} cleared while draining", ep)
                return False
        return True

    # --- acting -------------------------------------------------------------------------------

    async def _act(self, target: str, rung: str, policy: EffectivePolicy, ep: _Episode | None, *, step: int | None,
                   where: str, manual: bool = False, model: str | None = None) -> Outcome | None:
        """Carry out one rung under the guards; None when it was not carried out and the episode ends."""
        settings = self._settings(target)
        method = self._method(rung, policy, settings)
        if await self._paused_now(target):
            if ep is not None and self.machine(target).state != State.WATCHING:
                await self._change(target, State.WATCHING, f"paused meanwhile; no {rung}", ep)
            return None
        if rung == "restart":
            spent = await self._budget(target, policy)
            if spent is not None:
                if ep is not None:
                    await self._give_up(target, ep, spent)
                return None
        await self._change(target, State.ACTING, where, ep)
        started = self.wall()
        incident_id = ep.incident_id if ep is not None else self._open_incident_id(target)
        finding = ep.finding if ep is not None else None
        if policy.mode == "dry-run":
            outcome = Outcome("would", f"would {rung} by {method}")
            await self._db(lambda: self._require().record(
                target=target, incident_id=incident_id, finding=finding, step=step, action=rung, method=method,
                started=started, manual=manual, result="would", finished=started, detail=outcome.detail))
            await self._record_note(target, rung, method, outcome, started, started, incident_id)
            return outcome
        action_id = await self._db(lambda: self._require().begin(
            target=target, incident_id=incident_id, finding=finding, step=step, action=rung, method=method,
            started=started, manual=manual))
        try:
            outcome = await self._carry_out(target, rung, method, policy, settings, model=model,
                                            pids=ep.pids if ep is not None else ())
        except asyncio.CancelledError:
            raise  # a daemon stopping: the row stays without a result and is marked interrupted at start
        except Exception as exc:  # noqa: BLE001 - record it as failed, never leave it half done
            outcome = Outcome("failed", f"{rung}: internal error {exc!r}")
        finished = self.wall()
        facts = {k: v for k, v in outcome.facts.items() if not k.startswith("_")}
        await self._db(lambda: self._require().finish(action_id, result=outcome.result, finished=finished,
                                                      detail=outcome.detail, evidence=facts))
        await self._record_note(target, rung, method, outcome, started, finished, incident_id)
        level = "INFO" if outcome.ok else "WARNING"
        _log.log(level, f"{target}: {rung} by {method}: {outcome.result}: {outcome.detail}")
        return outcome

    def _method(self, rung: str, policy: EffectivePolicy, settings: TargetSettings) -> str:
        if rung == "restart":
            return policy.method
        if rung == "unload":
            return f"{settings.kind}-api"
        return "signal"

    async def _carry_out(self, target: str, rung: str, method: str, policy: EffectivePolicy,
                         settings: TargetSettings, *, model: str | None, pids: tuple[int, ...] = ()) -> Outcome:
        if rung == "restart":
            return await self._restart(target, method, policy, settings)
        if rung == "unload":
            return await self._unload(target, policy, settings, model)
        if rung == "kill_orphans":
            return await self._kill_orphans(target, policy, settings, pids)
        return Outcome("skipped", f"unknown step {rung!r}")

    async def _restart(self, target: str, method: str, policy: EffectivePolicy, settings: TargetSettings) -> Outcome:
        self._emit(target, "restart_started")
        if method == "docker":
            outcome = await restart_container(settings.container, timeout=policy.restart_timeout,
                                              stop_timeout=policy.stop_timeout, base_url=self.docker_base_url)
        elif method == "systemd":
            outcome = await restart_unit(settings.unit, timeout=policy.restart_timeout, systemctl=self.systemctl)
        elif method == "command":
            outcome = await run_command(settings.restart.command, timeout=policy.restart_timeout)
        else:
            outcome = Outcome("skipped", 'restart.method is "none": this target is never restarted')
        if not outcome.ok:
            self._emit(target, "restart_finished")  # nothing to wait for: let the detectors judge again
        return outcome

    async def _unload(self, target: str, policy: EffectivePolicy, settings: TargetSettings,
                      model: str | None) -> Outcome:
        snap = self.host.snapshot(target)
        loaded = list(snap.models if snap else ())
        # Only a model the server lists as loaded: on Ollama a request for one that is not
        # would load it first (and under a failed unload leave one more orphan behind).
        models = [m for m in loaded if model is None or m == model]
        if not models:
            what = f"{model} is not loaded" if model else "no model is loaded"
            return Outcome("skipped", f"{what}; nothing to unload (memory left behind needs kill_orphans)")
        before = snap.held_mib if snap else 0.0
        headers = self._headers(settings)
        results = []
        for name in models:
            self.host.emit(Event(t=self.host.clock(), target=target, event="unload_requested", model=name))
            results.append(await request_unload(settings.kind, settings.url, name, timeout=policy.unload_timeout,
                                                headers=headers))
        failed = [r for r in results if not r.ok]
        detail = "; ".join(r.detail for r in results)
        if failed:
            return Outcome(failed[0].result, detail, {"models": models})
        return Outcome("ok", detail, {"models": models, "_before_mib": before, "held_mib_before": round(before)})

    async def _kill_orphans(self, target: str, policy: EffectivePolicy, settings: TargetSettings,
                            named: tuple[int, ...]) -> Outcome:
        """The processes the detector named as left behind (failed unload, orphaned runner), that
        still hold memory, that are not the main process, and that are proven the target's own."""
        snap = self.host.snapshot(target)
        if snap is None:
            return Outcome("skipped", "nothing known about the target's processes")
        holding = {pid for pid, mib in snap.held_by_pid.items() if mib > 0 and pid != snap.main_pid}
        if named:
            candidates = sorted(set(named) & holding)
        elif not snap.models:
            candidates = sorted(holding)  # no model loaded: whatever still holds memory is left behind
        else:
            return Outcome("skipped", "no pid named by the finding, and models are loaded: cannot tell an orphan "
                           "from a loaded model's runner")
        if not candidates:
            return Outcome("skipped", "no process other than the main one holds GPU memory for this target")
        container_id = None
        if settings.container:
            container_id = await self._container_id(settings.container)

        def check() -> list[Proof | Refusal]:
            return [prove(pid, settings, main_pid=snap.main_pid, pid_served=snap.pid_served,
                          container_id=container_id) for pid in candidates]

        verdicts = await asyncio.to_thread(check)
        owner_of = getattr(self.host, "owner_of", None)
        if owner_of is not None:  # and the probes' attribution must agree (never a kill it does not back)
            owners = await asyncio.to_thread(lambda: {v.pid: owner_of(v.pid) for v in verdicts
                                                      if isinstance(v, Proof)})
            verdicts = [Refusal(v.pid, f"the probes attribute it to {owners.get(v.pid) or 'no target'}")
                        if isinstance(v, Proof) and owners.get(v.pid) != target else v for v in verdicts]
        proofs = [v for v in verdicts if isinstance(v, Proof)]
        refusals = [v for v in verdicts if isinstance(v, Refusal)]
        refused = {str(r.pid): r.reason for r in refusals}
        if not proofs:
            reasons = "; ".join(f"pid {r.pid}: {r.reason}" for r in refusals)
            return Outcome("skipped", f"no process proven to belong to {target}, nothing signalled ({reasons})",
                           {"refused": refused})
        outcome = await kill_processes(proofs, grace=policy.kill_grace)
        facts = dict(outcome.facts, refused=refused, _before_mib=snap.held_mib)
        return Outcome(outcome.result, outcome.detail, facts)

    async def _container_id(self, ref: str) -> str | None:
        def work() -> str | None:
            import docker

            from watchdog.act.actions.docker import find_container

            client = (docker.DockerClient(base_url=self.docker_base_url, timeout=10) if self.docker_base_url
                      else docker.from_env(timeout=10))
            try:
                return str(find_container(client, ref).id)
            finally:
                client.close()

        try:
            return await asyncio.wait_for(asyncio.to_thread(work), 15.0)
        except Exception:  # noqa: BLE001 - unknown id: the evidence check refuses
            return None

    # --- verifying ----------------------------------------------------------------------------

    async def _verify(self, target: str, rung: str, policy: EffectivePolicy, ep: _Episode | None,
                      before: float | None) -> bool:
        """A restart: a grace to come back (ready, or the grace ends), then a canary.
        An unload or a kill: the memory came back in the GPU records. True: recovered."""
        loop = asyncio.get_running_loop()
        ok, detail = False, ""
        if rung == "restart":
            deadline = loop.time() + policy.grace
            since = self.host.clock()
            while loop.time() < deadline:
                snap = self.host.snapshot(target)
                if _answers_since(snap, since):
                    break
                await asyncio.sleep(self.poll_s)
            self._emit(target, "restart_finished")
            ok, detail = await self._canaries(target, deadline=deadline)
        else:
            deadline = loop.time() + policy.unload_timeout
            expected = None
            while True:
                snap = self.host.snapshot(target)
                held = snap.held_mib if snap else 0.0
                if before is not None and memory_back(before, held, expected):
                    ok, detail = True, f"GPU memory back: {before:.0f} → {held:.0f} MiB held"
                    break
                if snap is not None and ep is not None and ep.finding not in snap.findings and before is None:
                    ok, detail = True, f"{ep.finding} cleared"
                    break
                if loop.time() >= deadline:
                    detail = (f"GPU memory not back after {format_duration(policy.unload_timeout)}: "
                              f"{(before or 0):.0f} → {held:.0f} MiB held")
                    break
                await asyncio.sleep(self.poll_s)
        if ep is None:
            return ok
        if ok:
            recovered = None
            if ep.raised_wall is not None:
                recovered = max(0.0, self.wall() - ep.raised_wall)
            evidence: dict[str, Any] = {"verified": detail, "recovered_after_s": recovered and round(recovered, 1),
                                        "fixed_by": rung}
            if ep.incident_id is not None and recovered is not None:
                await self._db(lambda: self._require().set_recovered(ep.incident_id, recovered))  # type: ignore[arg-type]
            after = f" after {recovered:.1f} s" if recovered is not None else ""
            await self._change(target, State.RECOVERED, f"fixed by {rung}: {detail}; recovered{after}", ep, evidence)
            await self._change(target, State.WATCHING, "back to watching", ep)
            return True
        await self._note(target, f"act: verification after {rung} failed: {detail}", {"verified": False,
                         "detail": detail}, ep.incident_id)
        return False

    async def _canaries(self, target: str, *, deadline: float, tries: int = 2) -> tuple[bool, str]:
        """Canaries until one passes, or the grace is over and ``tries`` were made: a server still
        loading fails them without being judged until its grace ends."""
        loop = asyncio.get_running_loop()
        last = "no canary answered"
        made = 0
        while True:
            made += 1
            canary = await self.host.canary(target)
            if canary is None:
                snap = self.host.snapshot(target)
                if snap is not None and snap.state == "ready" and not snap.models:
                    return True, "the server answers and is ready (no model loaded to send a canary to)"
                if snap is not None and snap.state == "ready":
                    last = "models are listed but no canary could be sent"
                else:
                    last = f"the server is not ready (state {snap.state if snap else 'unknown'})"
            elif canary.ok:
                ttft = f"first token after {canary.ttft_s:.2f} s" if canary.ttft_s is not None else "answered"
                return True, f"a canary passed ({ttft})"
            else:
                last = f"a canary failed ({canary.error})"
            if loop.time() >= deadline and made >= tries:
                return False, last
            await asyncio.sleep(self.canary_gap_s)

    # --- giving up, pausing, budget -----------------------------------------------------------

    async def _budget(self, target: str, policy: EffectivePolicy) -> str | None:
        """Why no restart is allowed now (the budget is spent), or None."""
        now = self.wall()
        starts = await self._db(lambda: self._require().restart_starts(target, now - policy.restart_window))
        reset = await self._db(lambda: self._require().budget_reset_at(target))
        b = budget(starts, now, policy.max_restarts, policy.restart_window, reset)
        if b.spent:
            return (f"restart budget spent: {b.used} restart(s) within {format_duration(policy.restart_window)} "
                    f"(max_restarts = {policy.max_restarts})")
        return None

    async def budget_left(self, target: str) -> int | None:
        policy = self.policy(target)
        if policy is None or self._store is None:
            return None
        now = self.wall()
        starts = await self._db(lambda: self._require().restart_starts(target, now - policy.restart_window))
        reset = await self._db(lambda: self._require().budget_reset_at(target))
        return budget(starts, now, policy.max_restarts, policy.restart_window, reset).left

    async def _give_up(self, target: str, ep: _Episode, reason: str) -> None:
        await self._db(lambda: self._require().pause(target, at=self.wall(), until=None, reason=f"gave up: {reason}"))
        self._paused[target] = Pause(target, None, self.wall(), f"gave up: {reason}")
        await self._change(target, State.GAVE_UP, f"gave up: {reason}; {target} is paused until "
                           f"`watchdogctl resume {target}`", ep, {"gave_up": True, "reason": reason})
        _log.error(f"{target}: gave up: {reason}; paused until `watchdogctl resume {target}`")
        await self._change(target, State.WATCHING, "paused: watching only", ep)

    async def _paused_now(self, target: str) -> bool:
        pause = self._paused.get(target)
        if pause is None:
            return False
        if pause.until is not None and pause.until <= self.wall():
            del self._paused[target]
            return False
        return True

    # --- manual actions (control socket) ------------------------------------------------------

    async def manual(self, action: str, target: str, *, model: str | None = None) -> dict[str, Any]:
        """``restart`` or ``unload`` asked by an operator: same guards, budget and records."""
        policy = self._manual_policy(target)
        if self.machine(target).busy or target in self._episodes:
            raise ActError(f"{target}: an action is in progress ({self.machine(target).state}); try again later")
        if policy.mode == "observe":
            raise ActError(f'{target}: mode is "observe": the watchdog does not act on it')
        if await self._paused_now(target):
            raise ActError(f"{target} is paused ({self._paused[target].reason}); `watchdogctl resume {target}` first")
        if action == "restart":
            why = restart_blocked(self.host.snapshot(target), manual=True)
            if why is not None:
                raise ActError(f"{target}: not restarting now: {why}")
            spent = await self._budget(target, policy)
            if spent is not None:
                raise ActError(f"{target}: {spent}; `watchdogctl resume {target}` resets it")
        elif action != "unload":
            raise ActError(f"unknown action {action!r}")
        ep = _Episode(self._open_incident_id(target), "manual", None)
        self._episodes[target] = ep
        try:
            outcome = await self._act(target, action, policy, ep, step=None, where=f"manual {action} by an operator",
                                      manual=True, model=model)
            if outcome is None:
                raise ActError(f"{target}: {action} not carried out")
            verified = None
            if outcome.ok:
                await self._change(target, State.VERIFYING, f"{action} {outcome.result}: {outcome.detail}", ep)
                verified = await self._verify(target, action, policy, None, outcome.facts.get("_before_mib"))
                await self._change(target, State.WATCHING, "verified" if verified else "not verified", ep)
            elif self.machine(target).state != State.WATCHING:
                await self._change(target, State.WATCHING, f"{action} {outcome.result}", ep)
            return {"target": target, "action": action, "result": outcome.result, "detail": outcome.detail,
                    "verified": verified}
        finally:
            if self._episodes.get(target) is ep:
                del self._episodes[target]

    async def pause(self, target: str, *, seconds: float | None = None, reason: str = "") -> dict[str, Any]:
        self._settings(target)
        now = self.wall()
        until = None if seconds is None else now + seconds
        text = reason or "paused by an operator"
        await self._db(lambda: self._require().pause(target, at=now, until=until, reason=text))
        self._paused[target] = Pause(target, until, now, text)
        episode = self._episodes.get(target)
        if episode is not None and episode.task is not None:
            episode.task.cancel()
        how = "until resumed" if seconds is None else f"for {format_duration(seconds)}"
        await self._note(target, f"act: {target} paused {how} ({text})", {"paused": True, "until": until})
        return {"target": target, "paused": True, "until": until, "reason": text}

    async def resume(self, target: str) -> dict[str, Any]:
        self._settings(target)
        now = self.wall()
        await self._db(lambda: self._require().resume(target, at=now))
        self._paused.pop(target, None)
        await self._note(target, f"act: {target} resumed; the restart budget starts afresh", {"resumed": True})
        incident = self.incidents.open_incidents.get(target)
        if incident is not None:
            self._consider(incident)
        return {"target": target, "paused": False}

    async def status(self) -> dict[str, dict[str, Any]]:
        """Per target: state, paused (until, reason) and restarts left, for ``watchdogctl status``."""
        out: dict[str, dict[str, Any]] = {}
        for name in self._targets():
            policy = self.policy(name)
            pause = self._paused.get(name) if await self._paused_now(name) else None
            out[name] = {
                "state": str(self.machine(name).state),
                "mode": policy.mode if policy else None,
                "paused": pause is not None,
                "paused_until": pause.until if pause else None,
                "paused_reason": pause.reason if pause else None,
                "restarts_left": await self.budget_left(name),
                "max_restarts": policy.max_restarts if policy else None,
            }
        return out

    # --- plumbing -----------------------------------------------------------------------------

    def machine(self, target: str) -> Machine:
        machine = self.machines.get(target)
        if machine is None:
            machine = self.machines[target] = Machine(target)
        return machine

    def policy(self, target: str) -> EffectivePolicy | None:
        config = self.host.config()
        try:
            return EffectivePolicy.of(config, config.target(target))
        except KeyError:
            return None

    def _manual_policy(self, target: str) -> EffectivePolicy:
        policy = self.policy(target)
        if policy is None:
            raise ActError(f"no target named {target!r}")
        return policy

    def _settings(self, target: str) -> TargetSettings:
        try:
            return self.host.config().target(target)
        except KeyError:
            raise ActError(f"no target named {target!r}") from None

    def _targets(self) -> list[str]:
        return [t.name for t in self.host.config().targets if t.enabled]

    def _open_incident_id(self, target: str) -> int | None:
        incident = self.incidents.open_incidents.get(target)
        return incident.id if incident else None

    @staticmethod
    def _headers(settings: TargetSettings) -> dict[str, str]:
        if settings.api_key is None:
            return {}
        with contextlib.suppress(Exception):
            return {"Authorization": f"Bearer {settings.api_key.resolve().reveal()}"}
        return {}

    def wall(self) -> float:
        return self.host.clock.wall_start + self.host.clock()

    def _emit(self, target: str, event: str) -> None:
        self.host.emit(Event(t=self.host.clock(), target=target, event=event, extra={"by": "watchdog"}))

    async def _change(self, target: str, new: State, why: str, ep: _Episode | None = None,
                      evidence: dict[str, Any] | None = None) -> Transition | None:
        transition = self.machine(target).change(new, why)
        incident_id = ep.incident_id if ep is not None else None
        if transition is None:
            await self._note(target, f"act: still {new}: {why}", {"state": str(new), **(evidence or {})},
                             incident_id)
            return None
        await self._note(target, transition.line(target), {"state": str(new), "from": str(transition.old),
                                                           **(evidence or {})}, incident_id)
        return transition

    async def _record_note(self, target: str, rung: str, method: str, outcome: Outcome, started: float,
                           finished: float, incident_id: int | None) -> None:
        facts = {k: v for k, v in outcome.facts.items() if not k.startswith("_")}
        evidence = {"action": rung, "method": method, "result": outcome.result, "started": started,
                    "finished": finished, "detail": outcome.detail, **facts}
        await self._note(target, f"act: {rung} by {method}: {outcome.result}: {outcome.detail}", evidence,
                         incident_id)

    async def _note(self, target: str, summary: str, evidence: dict[str, Any] | None = None,
                    incident_id: int | None = None) -> None:
        try:
            await self.incidents.note(target, summary, evidence, incident_id)
        except Exception as exc:  # noqa: BLE001 - a timeline line lost never stops an action
            _log.error(f"{target}: cannot note in the incident: {exc!r}")

    def _require(self) -> ActionStore:
        if self._store is None:
            raise RuntimeError("the actor is not started")
        return self._store

    async def _db(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)


def _answers_since(snap: TargetSnapshot | None, since: float) -> bool:
    """After a restart: the server said it is ready in a poll taken since ``since``, or a canary
    got through since then. Time for the verification canary: it is the judge, and it is
    retried until the grace ends, so a server still loading its model is never judged early.
    (Waiting here until nothing looked like a load also waited out the loading window for
    memory that only "rose" because the new pid was attributed at the next process round,
    about 5 s on the GPU validation run; and the fresh poll alone waited a poll interval
    although the scheduler's canary had already got through.)"""
    if snap is None:
        return False
    if snap.canary_ok_t is not None and snap.canary_ok_t > since:
        return True
    fresh = snap.poll_t is None or snap.poll_t > since
    return fresh and snap.state == "ready"


__all__ = ["URGENT", "ActError", "Actor", "TargetSnapshot"]
