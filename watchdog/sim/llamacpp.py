"""The llama.cpp server flavour: /health, /slots, /metrics, /completion and OpenAI routes.

llama-server listens at once and answers 503 "Loading model" until its one
model is in memory (held by the server process itself), then serves with
``parallel`` slots; requests beyond them are deferred.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from watchdog.sim import openai_api
from watchdog.sim.engine import SimError, count_tokens
from watchdog.sim.logwriter import ServerLog
from watchdog.sim.prom import Exposition
from watchdog.sim.responses import Stream, json_response

GENERATION_PATHS = ("/completion",)


def add_routes(app: web.Application, server: Any) -> list[str]:
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/health", _health)
    app.router.add_get("/slots", _slots)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/props", _props)
    app.router.add_post("/completion", _completion)
    openai = openai_api.add_openai_routes(app, owned_by="llamacpp", prefixes=("/v1", ""))
    return [*GENERATION_PATHS, *openai]


def _error_body(status: int, message: str) -> dict[str, Any]:
    kinds = {400: "invalid_request_error", 404: "not_found_error", 503: "unavailable_error"}
    return {"error": {"code": status, "message": message, "type": kinds.get(status, "server_error")}}


async def error(request: web.Request, status: int, message: str) -> web.StreamResponse:
    return await json_response(request, _error_body(status, message), status)


def log_crash(log: ServerLog) -> None:
    log.line("/app/ggml/src/ggml-cuda/ggml-cuda.cu:75: CUDA error")
    log.line("ggml_cuda_error: an illegal memory access was encountered")


def _sim(request: web.Request) -> Any:
    from watchdog.sim.server import SIM_KEY

    return request.app[SIM_KEY]


def _model(sim: Any) -> Any:
    lm = sim.engine.loaded.get(sim.cfg.models[0].name)
    return lm if lm is not None and lm.state == "ready" else None


async def _health(request: web.Request) -> web.StreamResponse:
    if _model(_sim(request)) is None:
        return await error(request, 503, "Loading model")
    return await json_response(request, {"status": "ok"})


async def _props(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    return await json_response(request, {
        "default_generation_settings": {"n_ctx": openai_api.MAX_MODEL_LEN["llamacpp"]},
        "total_slots": sim.cfg.parallel, "model_path": sim.cfg.models[0].name,
        "build_info": "b6800-simulated"})


async def _slots(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    running = list(sim.engine.running)
    slots = []
    for i in range(sim.cfg.parallel):
        req = running[i] if i < len(running) else None
        slots.append({
            "id": i, "id_task": hash(req.id) % 100000 if req else -1,
            "n_ctx": openai_api.MAX_MODEL_LEN["llamacpp"] // sim.cfg.parallel,
            "speculative": False, "is_processing": req is not None,
            "params": {"n_predict": req.max_tokens if req else -1, "temperature": 0.8},
            "next_token": {"has_next_token": req is not None, "has_new_line": False,
                           "n_remain": (req.max_tokens - req.emitted) if req else -1,
                           "n_decoded": req.emitted if req else 0, "stopping_word": ""},
        })
    return await json_response(request, slots)


async def _metrics(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    engine = sim.engine
    c = engine.counters
    exp = Exposition()
    exp.counter("llamacpp:prompt_tokens_total", "Number of prompt tokens processed.", [({}, c.prompt_tokens)])
    exp.counter("llamacpp:prompt_seconds_total", "Prompt process time", [({}, c.prompt_seconds)])
    exp.counter("llamacpp:tokens_predicted_total", "Number of generation tokens processed.",
                [({}, c.generation_tokens)])
    exp.counter("llamacpp:tokens_predicted_seconds_total", "Predict process time", [({}, c.decode_seconds)])
    exp.counter("llamacpp:n_decode_total", "Total number of llama_decode() calls", [({}, c.decode_steps)])
    exp.gauge("llamacpp:n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
              [({}, float(len(engine.running)))])
    exp.gauge("llamacpp:prompt_tokens_seconds", "Average prompt throughput in tokens/s.",
              [({}, c.prompt_tokens / c.prompt_seconds if c.prompt_seconds else 0.0)])
    exp.gauge("llamacpp:predicted_tokens_seconds", "Average generation throughput in tokens/s.",
              [({}, c.generation_tokens / c.decode_seconds if c.decode_seconds else 0.0)])
    exp.gauge("llamacpp:kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.",
              [({}, engine.kv_usage())])
    exp.gauge("llamacpp:kv_cache_tokens", "KV-cache tokens.",
              [({}, float(sum(r.prompt_tokens + r.emitted for r in engine.running)))])
    exp.gauge("llamacpp:requests_processing", "Number of requests processing.", [({}, len(engine.running))])
    exp.gauge("llamacpp:requests_deferred", "Number of requests deferred.", [({}, len(engine.waiting))])
    return openai_api.prometheus_response(exp)


async def _completion(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    engine = sim.engine
    lm = _model(sim)
    if lm is None:
        return await error(request, 503, "Loading model")
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        return await error(request, 400, f"Invalid JSON: {exc}")
    prompt = body.get("prompt")
    if prompt is None:
        return await error(request, 400, '"prompt" must be provided')
    text = "".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt)
    prompt_tokens = count_tokens(text)
    n_predict = body.get("n_predict", body.get("max_tokens"))
    n_predict = None if n_predict is None or int(n_predict) < 0 else int(n_predict)
    n_ctx = openai_api.MAX_MODEL_LEN["llamacpp"] // sim.cfg.parallel
    if prompt_tokens > n_ctx:
        text = (f"request ({prompt_tokens} tokens) exceeds the available context size ({n_ctx} tokens), "
                "try increasing it")
        sim.log.line(f"srv    send_error: task id = {engine.counters.decode_steps}, error: {text}")
        return await error(request, 400, text)
    try:
        req = engine.submit(lm, prompt_tokens, n_predict)
    except SimError as exc:
        return await error(request, exc.status, exc.message)
    stream = bool(body.get("stream"))
    out = Stream(request, "text/event-stream") if stream else None
    pieces: list[str] = []
    slot = len(engine.running) % sim.cfg.parallel
    try:
        async for kind, value in req.events():
            if kind == "token":
                if out:
                    await out.send(_sse({"index": 0, "content": value, "tokens": [], "stop": False,
                                         "id_slot": slot, "tokens_predicted": req.emitted,
                                         "tokens_evaluated": req.prompt_tokens}))
                else:
                    pieces.append(value)
                continue
            if kind == "error":
                if out:
                    await out.send(_sse(_error_body(value.status, value.message)))
                    return await out.close()
                return await error(request, value.status, value.message)
            final = {"index": 0, "content": "" if out else "".join(pieces), "tokens": [],
                     "id_slot": slot, "stop": True, "model": lm.name,
                     "tokens_predicted": req.emitted, "tokens_evaluated": req.prompt_tokens,
                     "generation_settings": {"n_predict": n_predict if n_predict is not None else -1},
                     "prompt": text[:200], "has_new_line": False, "truncated": False,
                     "stop_type": "limit" if value == "length" else "eos", "stopping_word": "",
                     "tokens_cached": req.prompt_tokens + req.emitted, "timings": _timings(req)}
            if out:
                await out.send(_sse(final))
                return await out.close()
            return await json_response(request, final)
    finally:
        engine.abort(req)
    return await error(request, 500, "unexpected end of generation")


def _timings(req: Any) -> dict[str, float]:
    prompt_ms = req.prefill_seconds * 1000
    predicted_ms = req.decode_seconds * 1000
    return {
        "prompt_n": req.prompt_tokens, "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / max(req.prompt_tokens, 1),
        "prompt_per_second": req.prompt_tokens / (prompt_ms / 1000) if prompt_ms else 0.0,
        "predicted_n": req.emitted, "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / max(req.emitted, 1),
        "predicted_per_second": req.emitted / (predicted_ms / 1000) if predicted_ms else 0.0,
    }


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


