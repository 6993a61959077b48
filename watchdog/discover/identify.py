"""Tell which inference server answered on a port, from its answers alone (pure).

Every kind also speaks the OpenAI API (``/v1/models``), so the distinctive
endpoints are checked first: Ollama's ``/api/version``, vLLM's ``vllm:``
metrics, llama.cpp's ``/health`` with ``/props`` or ``/slots``. What is left
and still lists models on ``/v1/models`` is a generic OpenAI-compatible server.
"""

from __future__ import annotations

from collections.abc import Mapping

from watchdog.discover.found import Answer, Identity

# Paths the scan asks on every candidate port, in this order.
PROBE_PATHS = ("/api/version", "/v1/models", "/metrics", "/version", "/health", "/props", "/slots")

# The usual port of each kind, and the kinds' well-known images (repository, no tag).
WELL_KNOWN_PORTS = {11434: "ollama", 8000: "vllm", 8080: "llamacpp"}
DEFAULT_PORT = {"ollama": 11434, "vllm": 8000, "llamacpp": 8080}
KNOWN_IMAGES = {
    "ollama/ollama": "ollama",
    "vllm/vllm-openai": "vllm",
    "ghcr.io/ggml-org/llama.cpp": "llamacpp",
    "ghcr.io/ggerganov/llama.cpp": "llamacpp",
}


def image_kind(image: str) -> str | None:
    """The server kind of a container image reference, or None if it is not a known one.

    ``docker.io/ollama/ollama:0.6`` -> ollama; ``ghcr.io/ggml-org/llama.cpp:server-cuda``
    -> llamacpp (only its ``server`` tags run the HTTP server; the others are CLIs).
    """
    ref = image.strip().lower()
    if "@" in ref:
        ref = ref.split("@", 1)[0]
    repository, tag = ref, ""
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = ref.rsplit(":", 1)
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/"):
        repository = repository.removeprefix(prefix)
    kind = KNOWN_IMAGES.get(repository)
    if kind == "llamacpp" and tag and "server" not in tag:
        return None
    return kind


def identify(answers: Mapping[str, Answer]) -> Identity | None:
    """The server kind behind these answers (keyed by path), or None if it is no inference server."""
    version = answers.get("/api/version")
    if version is not None and version.status == 200:
        body = version.json()
        if isinstance(body, dict) and isinstance(body.get("version"), str):
            models = _model_ids(answers.get("/v1/models")) or ()
            return Identity("ollama", version=body["version"], models=models, evidence="/api/version")

    models_answer = answers.get("/v1/models")
    models = _model_ids(models_answer)
    needs_key = models_answer is not None and models_answer.status in (401, 403)

    metrics = answers.get("/metrics")
    if metrics is not None and metrics.status == 200 and "vllm:" in metrics.body:
        return Identity(
            "vllm", version=_version(answers.get("/version")), models=models or (), needs_api_key=needs_key,
            evidence="/metrics (vllm:)",
        )

    health = answers.get("/health")
    if health is not None and health.status in (200, 503) and _llamacpp_health(health):
        props, slots = answers.get("/props"), answers.get("/slots")
        if _llamacpp_props(props) or _llamacpp_slots(slots):
            build = ""
            if props is not None and isinstance(props.json(), dict):
                build = str(props.json().get("build_info", ""))  # type: ignore[union-attr]
            return Identity(
                "llamacpp",
                version=build,
                models=models or (),
                needs_api_key=needs_key,
                evidence="/health + " + ("/props" if _llamacpp_props(props) else "/slots"),
            )

    owner = _owned_by(models_answer)
    if owner in ("vllm", "llamacpp"):
        # Their own /v1/models says so, though the distinctive endpoints did not answer.
        return Identity(owner, models=models or (), evidence=f"/v1/models (owned_by {owner})")
    if models is not None:
        return Identity("openai", models=models, evidence="/v1/models")
    if needs_key:
        return Identity("openai", needs_api_key=True, evidence=f"/v1/models ({models_answer.status})")  # type: ignore[union-attr]
    return None


def describe_non_server(answers: Mapping[str, Answer]) -> str:
    """Why a port is not counted as an inference server (for the summary)."""
    statuses = [a for a in answers.values() if a.status is not None]
    if statuses:
        seen = ", ".join(f"{path} {a.status}" for path, a in answers.items() if a.status is not None)
        return f"an HTTP server, but not an inference server ({seen})"
    errors = {a.error for a in answers.values() if a.error}
    return "; ".join(sorted(errors)) or "no answer"


def _version(answer: Answer | None) -> str:
    if answer is None or answer.status != 200:
        return ""
    body = answer.json()
    version = body.get("version") if isinstance(body, dict) else None
    return version if isinstance(version, str) else ""


def _model_ids(answer: Answer | None) -> tuple[str, ...] | None:
    """Model ids of an OpenAI ``/v1/models`` list; None if the answer is not such a list."""
    if answer is None or answer.status != 200:
        return None
    body = answer.json()
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return None
    ids = [entry.get("id") for entry in body["data"] if isinstance(entry, dict)]
    return tuple(str(i) for i in ids if isinstance(i, str))


def _owned_by(answer: Answer | None) -> str:
    """The ``owned_by`` all listed models share ("" if none, or if they differ)."""
    if _model_ids(answer) is None:
        return ""
    owners = {e.get("owned_by") for e in answer.json()["data"] if isinstance(e, dict)}  # type: ignore[union-attr,index]
    return owners.pop() if len(owners) == 1 and isinstance(next(iter(owners)), str) else ""


def _llamacpp_health(answer: Answer) -> bool:
    body = answer.json()
    if not isinstance(body, dict):
        return False
    # Current builds: 200 {"status": "ok"}, 503 {"error": {"message": "Loading model"}};
    # older ones said {"status": "loading model"} or "no slot available" with a 503.
    if body.get("status") in ("ok", "loading model", "no slot available"):
        return True
    error = body.get("error")
    return isinstance(error, dict) and "load" in str(error.get("message", "")).lower()


def _llamacpp_props(answer: Answer | None) -> bool:
    if answer is None or answer.status != 200:
        return False
    body = answer.json()
    return isinstance(body, dict) and ("default_generation_settings" in body or "total_slots" in body)


def _llamacpp_slots(answer: Answer | None) -> bool:
    if answer is None or answer.status != 200:
        return False
    body = answer.json()
    return isinstance(body, list) and all(isinstance(s, dict) and "id" in s for s in body)
