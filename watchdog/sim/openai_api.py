"""The vLLM flavour, and the OpenAI-compatible routes every flavour serves.

vLLM loads its one model at start-up (weights, then the KV cache it
preallocates up to ``gpu_memory_utilization``) and only then listens. It
answers /health and /metrics whatever its engine does, which is how a stuck
engine looks from outside: running requests that never finish and a token
counter that stands still.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aiohttp import web

from watchdog.sim.engine import LoadedModel, ModelNotFound, SimError, count_tokens
from watchdog.sim.logwriter import ServerLog
from watchdog.sim.prom import Exposition
from watchdog.sim.responses import Stream, json_response

VLLM_VERSION = "0.11.0"
MAX_MODEL_LEN = {"vllm": 32768, "llamacpp": 4096, "ollama": 131072}
OWNER_KEY = web.AppKey("sim_openai_owner", str)


def add_routes(app: web.Application, server: Any) -> list[str]:
    """vLLM: its own routes plus the OpenAI ones."""
    app.router.add_get("/health", _health)
    app.router.add_get("/ping", _health)
    app.router.add_get("/version", _version)
    app.router.add_get("/metrics", _metrics)
    return add_openai_routes(app, owned_by="vllm")


def add_openai_routes(app: web.Application, owned_by: str, prefixes: tuple[str, ...] = ("/v1",)) -> list[str]:
    """/v1/models, /v1/completions and /v1/chat/completions; returns the generation paths."""
    app[OWNER_KEY] = owned_by
    generation = []
    for prefix in prefixes:
        app.router.add_get(f"{prefix}/models", _models)
        app.router.add_post(f"{prefix}/completions", _completions)
        app.router.add_post(f"{prefix}/chat/completions", _chat_completions)
        generation += [f"{prefix}/completions", f"{prefix}/chat/completions"]
    return generation


def _error_body(status: int, message: str) -> dict[str, Any]:
    kinds = {400: "BadRequestError", 404: "NotFoundError", 503: "ServiceUnavailableError"}
    return {"error": {"message": message, "type": kinds.get(status, "InternalServerError"),
                      "param": None, "code": status}}


async def error(request: web.Request, status: int, message: str) -> web.StreamResponse:
    return await json_response(request, _error_body(status, message), status)


def log_crash(log: ServerLog) -> None:
    log.line("Fatal Python error: Segmentation fault")
    log.line("")
    log.line("Current thread 0x00007f3a5c9fd640 (most recent call first):")
    log.line('  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py", line 341 in step')


def _sim(request: web.Request) -> Any:
    from watchdog.sim.server import SIM_KEY

    return request.app[SIM_KEY]


async def _health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def _version(request: web.Request) -> web.StreamResponse:
    return await json_response(request, {"version": VLLM_VERSION})


async def _models(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    owner = request.app[OWNER_KEY]
    created = int(sim.engine.started)
    data = []
    for spec in sim.engine.models.values():
        entry: dict[str, Any] = {"id": spec.name, "object": "model", "created": created, "owned_by": owner}
        if sim.cfg.kind == "vllm":
            entry.update({"root": spec.name, "parent": None, "max_model_len": MAX_MODEL_LEN["vllm"],
                          "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission",
                                          "created": created, "allow_create_engine": False,
                                          "allow_sampling": True, "allow_logprobs": True,
                                          "allow_search_indices": False, "allow_view": True,
                                          "allow_fine_tuning": False, "organization": "*",
                                          "group": None, "is_blocking": False}]})
        data.append(entry)
    return await json_response(request, {"object": "list", "data": data})


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, chat=False)


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, chat=True)


async def _model_for(request: web.Request, name: str) -> LoadedModel | web.StreamResponse:
    sim = _sim(request)
    engine = sim.engine
    if sim.cfg.kind == "llamacpp":  # llama.cpp serves its one model whatever the name says
        lm = engine.loaded.get(sim.cfg.models[0].name)
        if lm is None or lm.state != "ready":
            return await error(request, 503, "Loading model")
        return lm
    try:
        spec = engine.resolve(name)
    except ModelNotFound:
        return await error(request, 404, f"The model `{name}` does not exist.")
    try:
        return await engine.ensure_loaded(spec.name)
    except SimError as exc:
        return await error(request, exc.status, exc.message)


async def _serve(request: web.Request, chat: bool) -> web.StreamResponse:
    sim = _sim(request)
    engine = sim.engine
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        return await error(request, 400, f"Invalid JSON body: {exc}")
    name = str(body.get("model") or sim.cfg.models[0].name)
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return await error(request, 400, "messages: field required")
        text = "".join(_content(m) for m in messages)
        prompt_tokens = count_tokens(text) + 4 * len(messages)
    else:
        prompt = body.get("prompt")
        if prompt is None:
            return await error(request, 400, "prompt: field required")
        text = "".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt)
        prompt_tokens = count_tokens(text)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None and not chat and sim.cfg.kind == "vllm":
        max_tokens = 16  # vLLM's default for /v1/completions
    max_len = MAX_MODEL_LEN[sim.cfg.kind]
    if prompt_tokens + int(max_tokens or 0) > max_len:
        text = (f"This model's maximum context length is {max_len} tokens. However, you requested "
                f"{prompt_tokens + int(max_tokens or 0)} tokens ({prompt_tokens} in the messages, "
                f"{int(max_tokens or 0)} in the completion). Please reduce the length of the messages "
                "or completion.")
        if sim.cfg.kind == "vllm":
            sim.log.error(f"Error in preprocessing prompt inputs: {text}", source="serving_chat.py:222")
        return await error(request, 400, text)
    lm = await _model_for(request, name)
    if isinstance(lm, web.StreamResponse):
        return lm
    try:
        req = engine.submit(lm, prompt_tokens, None if max_tokens is None else int(max_tokens))
    except SimError as exc:
        return await error(request, exc.status, exc.message)

    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    stream = bool(body.get("stream"))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    out: Stream | None = None
    if stream:
        out = Stream(request, "text/event-stream; charset=utf-8", headers_now=sim.cfg.kind == "vllm")
        await out.open()
    pieces: list[str] = []
    try:
        async for kind, value in req.events():
            if kind == "token":
                if out:
                    if chat and out.chunks == 0:  # the role comes with the engine's first output
                        await out.send(_sse(_chunk(rid, created, lm.name, chat,
                                                   {"role": "assistant", "content": ""})))
                    await out.send(_sse(_chunk(rid, created, lm.name, chat, {"content": value})))
                else:
                    pieces.append(value)
                continue
            if kind == "error":
                if out:
                    await out.send(_sse(_error_body(value.status, value.message)))
                    await out.send(b"data: [DONE]\n\n")
                    return await out.close()
                return await error(request, value.status, value.message)
            usage = {"prompt_tokens": req.prompt_tokens, "total_tokens": req.prompt_tokens + req.emitted,
                     "completion_tokens": req.emitted, "prompt_tokens_details": None}
            if out:
                await out.send(_sse(_chunk(rid, created, lm.name, chat, {}, finish=value)))
                if include_usage:
                    await out.send(_sse({"id": rid, "object": _object(chat, True), "created": created,
                                         "model": lm.name, "choices": [], "usage": usage}))
                await out.send(b"data: [DONE]\n\n")
                return await out.close()
            text = "".join(pieces)
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": value,
                                      "stop_reason": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": text, "refusal": None,
                                     "tool_calls": [], "reasoning_content": None}
            else:
                choice["text"] = text
            return await json_response(request, {"id": rid, "object": _object(chat, False), "created": created,
                                                 "model": lm.name, "choices": [choice], "usage": usage})
    finally:
        engine.abort(req)
    return await error(request, 500, "unexpected end of generation")


def _content(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


def _object(chat: bool, chunk: bool) -> str:
    if chat:
        return "chat.completion.chunk" if chunk else "chat.completion"
    return "text_completion"


def _chunk(rid: str, created: int, model: str, chat: bool, delta: dict[str, Any],
           finish: str | None = None) -> dict[str, Any]:
    if chat:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish,
                  "stop_reason": None}
    return {"id": rid, "object": _object(chat, True), "created": created, "model": model,
            "choices": [choice]}


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _metrics(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    engine = sim.engine
    c = engine.counters
    labels = {"model_name": sim.cfg.models[0].name, "engine": "0"}
    exp = Exposition()
    exp.gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
              [(labels, len(engine.running))])
    exp.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
              [(labels, len(engine.waiting))])
    exp.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
              [(labels, engine.kv_usage())])
    exp.gauge("vllm:gpu_cache_usage_perc",
              "GPU KV-cache usage. 1 means 100 percent usage. DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
              [(labels, engine.kv_usage())])
    exp.counter("vllm:num_preemptions_total", "Cumulative number of preemption from the engine.",
                [(labels, 0)], c.created)
    exp.counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.",
                [(labels, c.prompt_tokens)], c.created)
    exp.counter("vllm:generation_tokens_total", "Number of generation tokens processed.",
                [(labels, c.generation_tokens)], c.created)
    exp.counter("vllm:request_success_total", "Count of successfully processed requests.",
                [({**labels, "finished_reason": reason}, n) for reason, n in sorted(c.success.items())],
                c.created)
    exp.histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                  labels, ITERATION_BUCKETS, _iteration_counts(c), float(c.output_step_tokens), c.output_steps,
                  c.created)
    exp.histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                  labels, c.ttft.buckets, c.ttft.counts, c.ttft.total, c.ttft.n, c.created)
    exp.histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                  labels, c.e2e.buckets, c.e2e.counts, c.e2e.total, c.e2e.n, c.created)
    exp.gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
              [({"block_size": "16", "cache_dtype": "auto", "engine": "0",
                 "gpu_memory_utilization": str(sim.cfg.gpu_memory_utilization),
                 "num_gpu_blocks": str(engine.kv_capacity_tokens() // 16)}, 1.0)])
    return prometheus_response(exp)


ITERATION_BUCKETS = (1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0)


def _iteration_counts(c: Any) -> list[int]:
    """Cumulative bucket counts; the simulator keeps only the count and sum, so every step lands
    in the bucket of the mean step size."""
    mean = c.output_step_tokens / c.output_steps if c.output_steps else 0.0
    return [c.output_steps if mean <= bound else 0 for bound in ITERATION_BUCKETS]


def prometheus_response(exp: Exposition) -> web.Response:
    return web.Response(body=exp.text().encode(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
