"""The Ollama flavour: /api/* with NDJSON streaming, keep_alive, on-demand loading.

Models load when a request names them (their runner child process holds the
memory), stay for ``keep_alive`` after the last request (default 5m, 0 =
unload now, negative = forever) and are listed by /api/ps while loaded. Also
serves Ollama's OpenAI-compatible /v1 routes.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from watchdog.sim import openai_api
from watchdog.sim.config import ModelSpec
from watchdog.sim.engine import FOREVER, LoadedModel, ModelNotFound, SimError, count_tokens, parse_keep_alive
from watchdog.sim.logwriter import ServerLog
from watchdog.sim.responses import Stream, json_response

VERSION = "0.12.6"
MIB = 1024 * 1024
FOREVER_ISO = "2318-03-01T00:00:00+00:00"  # what Ollama shows for keep_alive < 0
GENERATION_PATHS = ("/api/generate", "/api/chat")


def add_routes(app: web.Application, server: Any) -> list[str]:
    app.router.add_get("/", _root)
    app.router.add_get("/api/version", _version)
    app.router.add_get("/api/tags", _tags)
    app.router.add_get("/api/ps", _ps)
    app.router.add_post("/api/show", _show)
    app.router.add_post("/api/generate", _generate)
    app.router.add_post("/api/chat", _chat)
    return [*GENERATION_PATHS, *openai_api.add_openai_routes(app, owned_by="library")]


async def error(request: web.Request, status: int, message: str) -> web.StreamResponse:
    return await json_response(request, {"error": message}, status)


def log_crash(log: ServerLog) -> None:
    log.line("panic: runtime error: invalid memory address or nil pointer dereference")
    log.line("[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x55d1c0a1b2c3]")


def _sim(request: web.Request) -> Any:
    from watchdog.sim.server import SIM_KEY

    return request.app[SIM_KEY]


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _details(spec: ModelSpec) -> dict[str, Any]:
    return {"parent_model": "", "format": "gguf", "family": spec.family, "families": [spec.family],
            "parameter_size": spec.parameter_size, "quantization_level": "Q4_K_M"}


async def _root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")  # aiohttp answers HEAD from GET routes


async def _version(request: web.Request) -> web.StreamResponse:
    return await json_response(request, {"version": VERSION})


async def _tags(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    modified = datetime.fromtimestamp(sim.engine.started - 86400, timezone.utc).isoformat()
    models = [{"name": spec.name, "model": spec.name, "modified_at": modified,
               "size": int(spec.size_mib * 0.85 * MIB), "digest": spec.digest, "details": _details(spec)}
              for spec in sim.engine.models.values()]
    return await json_response(request, {"models": models})


def _expires_iso(lm: LoadedModel) -> str:
    if lm.expires_at == FOREVER:
        return FOREVER_ISO if lm.keep_alive_s < 0 else datetime.now(timezone.utc).astimezone().isoformat()
    return datetime.fromtimestamp(lm.expires_at, timezone.utc).astimezone().isoformat()


async def _ps(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    models = []
    for lm in sim.engine.loaded.values():
        if lm.state != "ready":
            continue
        size = int(lm.target_mib * MIB)
        models.append({"name": lm.name, "model": lm.name, "size": size, "digest": lm.spec.digest,
                       "details": _details(lm.spec), "expires_at": _expires_iso(lm),
                       "size_vram": size, "context_length": sim.cfg.num_ctx})
    return await json_response(request, {"models": models})


async def _show(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    body = await _body(request)
    if isinstance(body, web.StreamResponse):
        return body
    name = body.get("model") or body.get("name") or ""
    try:
        spec = sim.engine.resolve(name)
    except ModelNotFound:
        return await error(request, 404, f"model '{name}' not found")
    return await json_response(request, {
        "license": "", "modelfile": f"FROM {spec.name}\n", "parameters": 'stop "<|eot_id|>"',
        "template": "{{ .Prompt }}", "details": _details(spec),
        "model_info": {"general.architecture": spec.family,
                       "general.parameter_count": int(spec.size_mib * 1.6e6),
                       f"{spec.family}.context_length": 131072},
        "capabilities": ["completion"],
        "modified_at": datetime.fromtimestamp(sim.engine.started, timezone.utc).isoformat(),
    })


async def _body(request: web.Request) -> dict[str, Any] | web.StreamResponse:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return await error(request, 400, "invalid character 'x' looking for beginning of value")
    if not isinstance(body, dict):
        return await error(request, 400, "json: cannot unmarshal array into Go value of type api.GenerateRequest")
    return body


async def _generate(request: web.Request) -> web.StreamResponse:
    return await _serve(request, chat=False)


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _serve(request, chat=True)


async def _serve(request: web.Request, chat: bool) -> web.StreamResponse:
    sim = _sim(request)
    engine = sim.engine
    body = await _body(request)
    if isinstance(body, web.StreamResponse):
        return body
    name = body.get("model")
    if not name:
        return await error(request, 400, "model is required")
    try:
        keep_alive = parse_keep_alive(body.get("keep_alive"), parse_keep_alive(sim.cfg.keep_alive))
    except ValueError as exc:
        return await error(request, 400, str(exc))
    options = body.get("options") or {}
    stream = body.get("stream", True) is not False
    if chat:
        messages = body.get("messages") or []
        text = "".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        empty = not messages
    else:
        text = str(body.get("prompt") or "")
        empty = text == "" and not body.get("images")
    try:
        spec = engine.resolve(name)
    except ModelNotFound:
        return await error(request, 404, f"model '{name}' not found")

    started = time.monotonic()
    was_loaded = spec.name in engine.loaded and engine.loaded[spec.name].state == "ready"
    try:
        lm = await engine.ensure_loaded(spec.name, keep_alive)
    except SimError as exc:
        return await error(request, exc.status, exc.message)
    load_duration = 0.0 if was_loaded else time.monotonic() - started

    if empty:  # a load or unload request
        reason = "load"
        if keep_alive == 0:
            engine.unload(lm.name)
            reason = "unload"
        else:
            engine._touch(lm)  # noqa: SLF001 - a load request restarts the keep_alive timer
        final = _chunk(lm.name, chat, "", done=True)
        final["done_reason"] = reason
        return await json_response(request, final, content_type=_ctype(stream))

    prompt_tokens = count_tokens(text) + (12 if chat else 6)
    num_ctx = int(options.get("num_ctx") or sim.cfg.num_ctx)
    if prompt_tokens > num_ctx:
        sim.log.warning("truncating input prompt", source="runner.go:131", limit=num_ctx,
                     prompt=prompt_tokens, keep=4, new=num_ctx)
        prompt_tokens = num_ctx
    num_predict = options.get("num_predict")
    num_predict = None if num_predict is None or int(num_predict) < 0 else int(num_predict)
    try:
        req = engine.submit(lm, prompt_tokens, num_predict)
    except SimError as exc:
        return await error(request, exc.status, exc.message)

    out = Stream(request, "application/x-ndjson") if stream else None
    pieces: list[str] = []
    try:
        async for kind, value in req.events():
            if kind == "token":
                if out:
                    await out.send(_line(_chunk(lm.name, chat, value)))
                else:
                    pieces.append(value)
            elif kind == "error":
                if out:
                    await out.send(_line({"error": value.message}))
                    return await out.close()
                return await error(request, value.status, value.message)
            else:
                final = _chunk(lm.name, chat, "" if out else "".join(pieces), done=True)
                final.update(_stats(req, load_duration, time.monotonic() - started, chat, value))
                if out:
                    await out.send(_line(final))
                    return await out.close()
                return await json_response(request, final)
    finally:
        engine.abort(req)
    return await error(request, 500, "unexpected end of generation")


def _ctype(stream: bool) -> str:
    return "application/x-ndjson" if stream else "application/json"


def _chunk(model: str, chat: bool, text: str, done: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"model": model, "created_at": _now_iso()}
    if chat:
        data["message"] = {"role": "assistant", "content": text}
    else:
        data["response"] = text
    data["done"] = done
    return data


def _stats(req: Any, load_s: float, total_s: float, chat: bool, reason: str) -> dict[str, Any]:
    ns = 1_000_000_000
    stats: dict[str, Any] = {"done_reason": reason}
    if not chat:
        stats["context"] = list(range(1, min(req.prompt_tokens + req.emitted, 64) + 1))
    stats.update({
        "total_duration": int(total_s * ns), "load_duration": int(load_s * ns),
        "prompt_eval_count": req.prompt_tokens, "prompt_eval_duration": int(req.prefill_seconds * ns),
        "eval_count": req.emitted, "eval_duration": int(req.decode_seconds * ns),
    })
    return stats


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


