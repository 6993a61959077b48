"""Wiring: one aiohttp application per simulator, with its engine, GPU, log and faults.

The middleware does what a real server's front does for every route: access
log lines, and the faults that act before a route's own code (a whole-server
hang, HTTP errors). ``/_sim/...`` is the control API and ignores every fault.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from typing import Any

from aiohttp import web

from watchdog.sim import faults as faultlib
from watchdog.sim.config import SimConfig
from watchdog.sim.engine import Engine
from watchdog.sim.faults import Faults, FaultError
from watchdog.sim.gpu import GpuStateWriter
from watchdog.sim.logwriter import make_log
from watchdog.sim.responses import FAULTS_KEY, GENERATION_KEY, is_generation

SIM_KEY = web.AppKey("sim", "SimServer")


class SimServer:
    """One simulated inference server: HTTP app, engine, GPU state writer, log."""

    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.faults = Faults()
        self.log = make_log(cfg.kind, cfg.log_file)
        self.engine = Engine(cfg, self.faults, self.log, on_change=self._changed)
        self.gpu = GpuStateWriter(cfg.gpu_state_path, cfg.gpus, self.engine.gpu_snapshot)
        self.flavour = _flavour(cfg.kind)
        self._fault_event = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._gpu_task: asyncio.Task[None] | None = None

    def _changed(self) -> None:
        """The engine changed what the GPU shows: write it now, as NVML would see it at once."""
        self.gpu.write_now()

    # -- the app ------------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app[SIM_KEY] = self
        app[FAULTS_KEY] = self.faults
        generation = self.flavour.add_routes(app, self)
        app[GENERATION_KEY] = frozenset(generation)
        app.router.add_post("/_sim/fault", self._post_fault)
        app.router.add_get("/_sim/state", self._get_state)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/_sim/"):
            return await handler(request)
        started = time.monotonic()
        status = 500
        try:
            generation = is_generation(request)
            hang = self.faults.scoped("hang", generation)
            if hang is not None and not generation:
                await self.wait_while(lambda: self.faults.scoped("hang", False) is not None)
            err = self.faults.scoped("http_5xx", generation)
            if err is not None:
                status = int(err.params["status"])
                return await self.flavour.error(request, status, "Internal Server Error")
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            remote = request.remote or "127.0.0.1"
            self.log.access(request.method, request.path, status, time.monotonic() - started, remote)

    async def wait_while(self, condition: Any) -> None:
        """Block (a hung route) until a fault change makes ``condition`` false."""
        while condition():
            await self._fault_event.wait()

    # -- control API --------------------------------------------------------------------------
    async def _post_fault(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict) or not isinstance(body.get("fault"), str):
                raise FaultError('expected a JSON object like {"fault": "hang", ...params}')
            name = body.pop("fault")
            params = self.apply_fault(name, body)
        except (FaultError, ValueError) as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response({"ok": True, "fault": name, "params": params,
                                  "active": self.faults.as_dict()})

    async def _get_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.cfg.kind, "pid": os.getpid(), "url": self.url, "instance": self.cfg.instance,
            "faults": self.faults.as_dict(), "gpu_state": str(self.gpu.path),
            "log_file": self.cfg.log_file, **self.engine.state_dict(),
            "gpu": self.gpu.state(),
        }

    def apply_fault(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Validate and apply a fault; returns its parameters with defaults filled in."""
        merged = faultlib.validate(name, params, self.cfg.kind)
        if name == "recover":
            self.engine.recover()
            self.gpu.lost.clear()
            self.gpu.driver_mismatch = False
        elif name == "crash":
            asyncio.get_running_loop().call_later(merged["delay_s"], self._crash, merged["exit_code"])
        elif name == "xid":
            holders = [lm.holder_pid for lm in self.engine.loaded.values()]
            for dev in self.cfg.gpus:
                self.gpu.add_xid(dev.index, merged["xid"], holders[0] if holders else None)
            if merged["xid"] == 79:
                self.engine.gpu_lost = True
                self.faults.set("gpu_lost", {})
        elif name == "gpu_lost":
            self.gpu.lost.update(dev.index for dev in self.cfg.gpus)
            self.engine.gpu_lost = True
            self.faults.set(name, merged)
        elif name == "driver_mismatch":
            self.gpu.driver_mismatch = True
            self.faults.set(name, merged)
        else:
            self.faults.set(name, merged)
        self._fault_event.set()
        self._fault_event = asyncio.Event()
        self.engine._wake.set()  # noqa: SLF001 - the scheduler re-reads the faults
        self.gpu.write_now()
        return merged

    def _crash(self, code: int) -> None:
        self.flavour.log_crash(self.log)
        os._exit(code)

    # -- start / stop -------------------------------------------------------------------------
    async def start(self) -> str:
        """Start the GPU writer, load what loads at start-up, listen; returns the URL."""
        self.engine.start()
        self.gpu.write_now()
        self._gpu_task = asyncio.get_running_loop().create_task(self.gpu.run())
        for name, params in self.cfg.faults:
            self.apply_fault(name, dict(params))
        if self.cfg.kind == "vllm":  # vLLM serves only once its engine is up
            self.log.info(f"vLLM API server version 0.11.0, model {self.cfg.models[0].name}")
            await self.engine.ensure_loaded(self.cfg.models[0].name, -1)
            self.log.info(f"# GPU blocks: {self.engine.kv_capacity_tokens() // 16}", source="kv_cache_utils.py:1087")
        self.gpu.write_now()  # the ready line promises a current GPU state file
        sock = socket.socket(socket.AF_INET6 if ":" in self.cfg.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.cfg.host, self.cfg.port))
        port = sock.getsockname()[1]
        self._runner = web.AppRunner(self.make_app(), handler_cancellation=True, access_log=None,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=1024).start()
        host = f"[{self.cfg.host}]" if ":" in self.cfg.host else self.cfg.host
        self.url = f"http://{host}:{port}"
        self.log.listening(self.url)
        if self.cfg.kind == "llamacpp":  # llama.cpp listens first and answers 503 while loading
            asyncio.get_running_loop().create_task(self._load_quietly(self.cfg.models[0].name))
        return self.url

    async def _load_quietly(self, name: str) -> None:
        try:
            await self.engine.ensure_loaded(name, -1)
        except Exception as exc:  # noqa: BLE001 - the failure is in the log and /health
            print(f"model load failed: {exc}", file=sys.stderr)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.engine.stop()
        if self._gpu_task:
            self._gpu_task.cancel()
        self.gpu.remove()
        self.log.close()


def _flavour(kind: str) -> Any:
    if kind == "ollama":
        from watchdog.sim import ollama

        return ollama
    if kind == "vllm":
        from watchdog.sim import openai_api

        return openai_api
    from watchdog.sim import llamacpp

    return llamacpp


def ready_line(server: SimServer) -> str:
    cfg = server.cfg
    return json.dumps({
        "event": "ready", "url": server.url, "pid": os.getpid(), "kind": cfg.kind,
        "instance": cfg.instance, "models": [m.name for m in cfg.models],
        "gpu_dir": cfg.gpu_dir, "gpu_state": str(cfg.gpu_state_path), "log_file": cfg.log_file,
    })
