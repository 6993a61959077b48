"""Every probe for a config, built and wired together, for the daemon and ``watchdogctl probe``.

Wiring done here, so callers only schedule:

- each target's :class:`ServerProbe` hands its polls to the target's
  :class:`~watchdog.probes.canary.CanaryProbe` (which needs them to know
  loaded models, Ollama expiries and whether real traffic makes progress);
- the :class:`~watchdog.probes.gpu.GpuProbe` tags GPU processes with their
  target through the :class:`~watchdog.probes.attribution.Attributor`, which
  the :class:`~watchdog.probes.processes.ProcessProbe` shares;
- one :class:`~watchdog.probes.dockerapi.DockerAccess` for every target that
  runs in a container.

Each probe has an async method that performs one round, emits records
through ``emit`` and never raises: ``ServerProbe.round``, ``CanaryProbe.round``,
``GpuProbe.round``, ``ProcessProbe.round``; ``LogProbe.run`` follows a log
until cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from watchdog.config.model import Config, TargetSettings
from watchdog.logs import LogOnce
from watchdog.probes.adapters import ServerAdapter, make_adapter
from watchdog.probes.attribution import Attributor
from watchdog.probes.base import Clock, Emit
from watchdog.probes.canary import CanaryProbe
from watchdog.probes.dockerapi import DockerAccess
from watchdog.probes.gpu import GpuProbe
from watchdog.probes.known_models import KnownModels
from watchdog.probes.logwatch import LogProbe, source_for
from watchdog.probes.nvml import load_table
from watchdog.probes.processes import ProcessProbe
from watchdog.trace.header import build_header
from watchdog.trace.records import Header, ServerPoll

PollListener = Callable[[ServerPoll], None]


class ServerProbe:
    """Polls one server's status endpoints; each poll is emitted and handed to listeners."""

    def __init__(self, adapter: ServerAdapter, emit: Emit, *, listeners: Sequence[PollListener] = ()) -> None:
        self.adapter = adapter
        self.emit = emit
        self.listeners = list(listeners)
        self.last: ServerPoll | None = None
        self._log = LogOnce(f"server.{adapter.name}")

    @property
    def name(self) -> str:
        return self.adapter.name

    async def round(self) -> ServerPoll:
        """One poll (bounded by the target's request_timeout). Never raises."""
        try:
            async with asyncio.timeout(self.adapter.target.request_timeout + 1.0):
                poll = await self.adapter.poll()
        except TimeoutError:
            poll = ServerPoll(t=self.adapter.clock(), target=self.name, state="error", error="timeout")
        if poll.error:
            self._log.problem("poll", f"{self.name}: {poll.state}: {poll.error}")
        else:
            self._log.ok("poll", f"{self.name}: answers again ({poll.state})")
        self.last = poll
        self.emit(poll)
        for listener in self.listeners:
            listener(poll)
        return poll


@dataclass
class TargetProbes:
    """The probes of one target."""

    settings: TargetSettings
    adapter: ServerAdapter
    server: ServerProbe
    canary: CanaryProbe
    logs: LogProbe | None


class ProbeSuite:
    """Builds every probe for the enabled targets of a config."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        emit: Emit,
        *,
        gpu_table: Any = None,
        transport: httpx.AsyncBaseTransport | None = None,
        docker: DockerAccess | None = None,
        journal_command: Sequence[str] = ("journalctl",),
        systemctl: Sequence[str] = ("systemctl",),
        targets: Sequence[str] | None = None,
        reuse: ProbeSuite | None = None,
        known_models: KnownModels | None = None,
    ) -> None:
        """``known_models``: where the last known models of each target are kept (the daemon
        passes one in its state dir, so they survive a restart); default: in memory."""
        self.config = config
        self.clock = clock
        self.emit = emit
        enabled = [t for t in config.targets if t.enabled]
        chosen = [t for t in enabled if targets is None or t.name in targets]
        if docker is None and reuse is not None:
            docker = reuse.docker
        if docker is None and any(t.container for t in enabled):
            docker = DockerAccess()
        self.docker = docker
        # Ownership is judged against every enabled target, even when only some are probed:
        # a process of a target left out of this round is still not "no one's".
        self.attributor = Attributor(enabled, docker=docker, systemctl=systemctl)
        self.targets: dict[str, TargetProbes] = {}
        for settings in chosen:
            kept = reuse.targets.get(settings.name) if reuse is not None else None
            if kept is not None and reuse is not None and reuse.same_target(settings, config):
                self.targets[settings.name] = kept  # unchanged: its probes (and their state) carry on
                continue
            adapter = make_adapter(settings, clock, transport=transport, known=known_models)
            canary = CanaryProbe(adapter, settings.canary, clock, emit)
            server = ServerProbe(adapter, emit, listeners=[canary.note_poll])
            source = source_for(settings, docker, journal_command)
            logs = LogProbe(settings.name, source, clock, emit) if source is not None else None
            self.targets[settings.name] = TargetProbes(settings, adapter, server, canary, logs)
        self.processes = ProcessProbe(list(self.targets), self.attributor, clock, emit)
        self.gpu = self._make_gpu(gpu_table)

    def _make_gpu(self, table: Any) -> GpuProbe | None:
        """The GPU probe over an NVML function table. The simulator's table is handed in by
        whoever builds the suite (``probes/`` never imports ``sim/``)."""
        settings = self.config.watchdog
        if table is None:
            if settings.gpu_backend == "none":
                return None
            if settings.gpu_backend == "sim":
                raise ValueError('gpu_backend = "sim": hand the simulated NVML table to ProbeSuite(gpu_table=...)')
            table = load_table(settings.gpu_backend)
        return GpuProbe(
            table,
            self.clock,
            self.emit,
            attribute=self.attributor.owners,
            deadline=max(1.0, min(5.0, settings.gpu_interval)),
            required=settings.gpu_backend in ("nvml", "sim"),
        )

    def header(self, wall_zero: float | None = None) -> Header:
        """The trace header for what this suite probes: the GPUs seen, its targets and their GPUs."""
        devices = list(self.gpu.devices) if self.gpu is not None else []
        return build_header(self.config, devices, target_gpus=self.target_gpus(), targets=list(self.targets),
                            wall_zero=wall_zero)

    def target_gpus(self) -> dict[str, list[int]]:
        """Each target's GPUs: configured, or found from its processes (``gpus = "auto"``)."""
        return {name: self.attributor.gpus_of(name) for name in self.targets}

    def same_target(self, settings: TargetSettings, config: Config) -> bool:
        """Whether ``settings`` under ``config`` would build the same probes as this suite has
        (then a reload keeps them, and the target's worker, running)."""
        probes = self.targets.get(settings.name)
        return probes is not None and probes.settings == settings and (
            self.config.intervals_for(settings)["poll"] == config.intervals_for(settings)["poll"])

    async def aclose(self, *, keep: Iterable[str] = (), keep_docker: bool = False) -> None:
        """Close every probe; ``keep``: targets whose probes a newer suite took over."""
        kept = set(keep)
        for name, probes in self.targets.items():
            if name in kept:
                continue
            await probes.adapter.aclose()
            if probes.logs is not None:
                probes.logs.source.close()
        if self.gpu is not None:
            await asyncio.to_thread(self.gpu.close)
        self.processes.close()
        if self.docker is not None and not keep_docker:
            self.docker.close()
