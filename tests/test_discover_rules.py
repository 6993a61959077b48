"""discover's pure rules: which server answered, where a process runs, the config it writes."""

from __future__ import annotations

import json
import tomllib

import pytest

from watchdog.config import parse_config
from watchdog.discover import (
    Answer,
    Discovery,
    Identity,
    KnownContainer,
    Placement,
    Server,
    Silent,
    container_id,
    identify,
    image_kind,
    render_config,
    render_summary,
    service_unit,
)

NOT_FOUND = Answer(404, "404: Not Found")


def answers(**by_path: Answer) -> dict[str, Answer]:
    """Answers keyed by path; paths not given answered 404 (what real servers do)."""
    paths = ("/api/version", "/v1/models", "/metrics", "/version", "/health", "/props", "/slots")
    return {path: by_path.get(path, NOT_FOUND) for path in paths}


def ok(body: object) -> Answer:
    return Answer(200, body if isinstance(body, str) else json.dumps(body))


MODELS = {"object": "list", "data": [{"id": "Qwen/Qwen2.5-7B", "object": "model", "owned_by": "vllm"}]}


# --------------------------------------------------------------------------- identify


def test_ollama_is_known_by_its_version_endpoint() -> None:
    seen = identify(answers(**{"/api/version": ok({"version": "0.6.2"}),
                               "/v1/models": ok({"data": [{"id": "llama3.2:1b", "owned_by": "library"}]})}))
    assert seen == Identity("ollama", version="0.6.2", models=("llama3.2:1b",), evidence="/api/version")


def test_vllm_is_known_by_its_metrics_and_says_its_version() -> None:
    seen = identify(answers(**{
        "/v1/models": ok(MODELS),
        "/metrics": ok("# HELP vllm:num_requests_running ...\nvllm:num_requests_running 0.0\n"),
        "/version": ok({"version": "0.8.5"}),
        "/health": Answer(200, ""),
    }))
    assert seen is not None and (seen.kind, seen.version, seen.models) == ("vllm", "0.8.5", ("Qwen/Qwen2.5-7B",))


def test_vllm_with_an_api_key_is_still_vllm_and_says_it_needs_the_key() -> None:
    seen = identify(answers(**{
        "/v1/models": Answer(401, '{"error": "Unauthorized"}'),
        "/metrics": ok("vllm:num_requests_waiting 0.0\n"),
    }))
    assert seen is not None and (seen.kind, seen.needs_api_key) == ("vllm", True)


@pytest.mark.parametrize(
    "health",
    [
        ok({"status": "ok"}),
        Answer(503, '{"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}'),
        Answer(503, '{"status": "loading model"}'),  # older builds
    ],
)
def test_llamacpp_is_known_by_health_and_props(health: Answer) -> None:
    seen = identify(answers(**{
        "/health": health,
        "/props": ok({"default_generation_settings": {"n_ctx": 4096}, "total_slots": 4, "build_info": "b6800"}),
        "/v1/models": ok({"data": [{"id": "model.gguf", "owned_by": "llamacpp"}]}),
    }))
    assert seen is not None and (seen.kind, seen.version, seen.models) == ("llamacpp", "b6800", ("model.gguf",))


def test_llamacpp_without_props_is_known_by_its_slots() -> None:
    seen = identify(answers(**{"/health": ok({"status": "ok"}), "/slots": ok([{"id": 0, "is_processing": False}])}))
    assert seen is not None and seen.kind == "llamacpp"


def test_any_server_listing_models_is_openai_compatible() -> None:
    # llama-cpp-python's server: /v1/models, no /health, /props or vllm: metrics.
    seen = identify(answers(**{"/v1/models": ok({"object": "list", "data": [{"id": "tiny.gguf", "owned_by": "me"}]})}))
    assert seen == Identity("openai", models=("tiny.gguf",), evidence="/v1/models")


def test_an_openai_compatible_server_that_wants_a_key() -> None:
    seen = identify(answers(**{"/v1/models": Answer(401, "")}))
    assert seen is not None and (seen.kind, seen.needs_api_key, seen.models) == ("openai", True, ())


def test_a_vllm_health_endpoint_alone_is_not_taken_for_llamacpp() -> None:
    # vLLM answers /health with an empty 200; only llama.cpp's JSON body counts.
    seen = identify(answers(**{"/health": Answer(200, ""), "/v1/models": ok(MODELS)}))
    assert seen is not None and seen.kind == "vllm"  # from owned_by, its metrics being off


@pytest.mark.parametrize(
    "by_path",
    [
        {},  # a web server that 404s everything
        {"/health": ok({"status": "ok"})},  # some other service's health check
        {"/api/version": ok({"version": 3})},  # not Ollama's shape
        {"/v1/models": ok("<html>not json</html>")},
        {"/v1/models": ok({"data": "nope"})},
        {"/v1/models": ok(["a", "list"])},
        {"/v1/models": Answer(200, "\x00\xff" * 1000)},
        {"/metrics": ok("process_cpu_seconds_total 1\n")},
    ],
)
def test_other_http_servers_and_garbage_are_not_inference_servers(by_path: dict[str, Answer]) -> None:
    assert identify(answers(**by_path)) is None


def test_nothing_listening_is_not_a_server() -> None:
    assert identify({"/api/version": Answer(None, error="nothing listening")}) is None


@pytest.mark.parametrize(
    ("image", "kind"),
    [
        ("ollama/ollama", "ollama"),
        ("ollama/ollama:0.6.2", "ollama"),
        ("docker.io/ollama/ollama:latest", "ollama"),
        ("vllm/vllm-openai:v0.8.5", "vllm"),
        ("ghcr.io/ggml-org/llama.cpp:server", "llamacpp"),
        ("ghcr.io/ggml-org/llama.cpp:server-cuda", "llamacpp"),
        ("ghcr.io/ggerganov/llama.cpp:server-cuda", "llamacpp"),
        ("ghcr.io/ggml-org/llama.cpp:full-cuda", None),  # a CLI image, no HTTP server
        ("ollama/ollama@sha256:" + "a" * 64, "ollama"),
        ("localhost:5000/ollama/ollama:1", None),  # a private copy: not assumed
        ("nginx:latest", None),
        ("myollama/ollama", None),
    ],
)
def test_known_images(image: str, kind: str | None) -> None:
    assert image_kind(image) == kind


# --------------------------------------------------------------------------- placement

CID = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "cgroup",
    [
        f"12:pids:/docker/{CID}\n1:name=systemd:/docker/{CID}\n0::/\n",  # cgroup v1, cgroupfs driver
        f"0::/system.slice/docker-{CID}.scope\n",  # cgroup v2, systemd driver
        f"0::/docker/{CID}\n",  # cgroup v2, cgroupfs driver
    ],
)
def test_a_container_is_named_by_its_cgroup(cgroup: str) -> None:
    assert container_id(cgroup) == CID
    assert service_unit(cgroup) == ""


@pytest.mark.parametrize(
    ("cgroup", "unit"),
    [
        ("0::/system.slice/ollama.service\n", "ollama.service"),
        ("1:name=systemd:/system.slice/vllm@gpu0.service\n4:memory:/system.slice/vllm@gpu0.service\n", "vllm@gpu0.service"),
        ("0::/system.slice/docker.service\n", ""),  # docker-proxy: the engine's, not a server's
        ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/llama.service\n", ""),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", ""),
        ("0::/\n", ""),
        ("garbage\n\n::\n", ""),
    ],
)
def test_a_service_unit_is_named_by_its_cgroup(cgroup: str, unit: str) -> None:
    assert service_unit(cgroup) == unit
    assert container_id(cgroup) == ""


def test_a_unit_inside_a_systemd_container_names_both() -> None:
    cgroup = f"1:name=systemd:/docker/{CID}/system.slice/iw-sim.service\n"
    assert (container_id(cgroup), service_unit(cgroup)) == (CID, "iw-sim.service")


# --------------------------------------------------------------------------- render


def _server(port: int, kind: str, **placement: object) -> Server:
    return Server(port, f"http://127.0.0.1:{port}", Identity(kind), Placement(**placement))  # type: ignore[arg-type]


def _checked(text: str) -> dict:  # type: ignore[type-arg]
    parse_config(text, "<discover>")  # the config schema accepts it (raises ConfigError if not)
    return tomllib.loads(text)


def test_starter_config_has_one_target_per_server_and_passes_the_schema() -> None:
    found = Discovery(servers=[
        _server(11434, "ollama", pid=10, container_id=CID, container_name="ollama", image="ollama/ollama"),
        _server(8000, "vllm", pid=11, unit="vllm.service"),
        _server(8080, "llamacpp", pid=12, process="llama-server -m m.gguf"),
    ])
    config = _checked(render_config(found, host="nas", when="2026-01-01 00:00 UTC"))
    assert config["policy"] == {"mode": "observe"}
    assert [(t["name"], t["kind"], t["url"]) for t in config["targets"]] == [
        ("ollama", "ollama", "http://127.0.0.1:11434"),
        ("vllm", "vllm", "http://127.0.0.1:8000"),
        ("llamacpp", "llamacpp", "http://127.0.0.1:8080"),
    ]
    assert config["targets"][0]["container"] == "ollama"
    assert config["targets"][1]["unit"] == "vllm.service"
    # Nothing to restart the bare process through: said so, and valid even in "act" mode.
    assert config["targets"][2]["restart"] == {"method": "none"}
    parse_config(render_config(found).replace('mode = "observe"', 'mode = "act"'))


def test_names_are_unique_and_valid_whatever_the_containers_are_called() -> None:
    found = Discovery(servers=[
        _server(1001, "ollama"),
        _server(1002, "ollama"),
        _server(1003, "ollama", container_id=CID, container_name="my ollama/😀"),
        _server(1004, "vllm", container_id=CID[::-1]),  # Docker could not name it
    ])
    config = _checked(render_config(found))
    names = [t["name"] for t in config["targets"]]
    assert names == ["ollama", "ollama-1002", "my-ollama", "vllm"]
    assert config["targets"][3]["container"] == CID[::-1][:12]


def test_a_server_wanting_a_key_gets_a_commented_reference_never_a_value() -> None:
    found = Discovery(servers=[Server(8000, "http://127.0.0.1:8000", Identity("vllm", needs_api_key=True), Placement())])
    text = render_config(found)
    assert '# api_key = "env:VLLM_API_KEY"' in text
    assert "api_key" not in _checked(text)["targets"][0]


def test_nothing_found_is_still_a_valid_config_with_an_example() -> None:
    text = render_config(Discovery(silent=[Silent(11434, "nothing listening")]))
    assert _checked(text).get("targets") is None
    assert '# kind = "ollama"' in text


def test_a_known_container_that_does_not_answer_is_listed_in_comments_and_summary() -> None:
    idle = KnownContainer(CID, "vllm", "vllm/vllm-openai:latest", "vllm", pid=5, published={})
    found = Discovery(containers=[idle], notes=["Docker: fine"])
    text = render_config(found)
    _checked(text)
    assert '"vllm" (vllm/vllm-openai:latest): no port published on this host' in text
    summary = "\n".join(render_summary(found))
    assert 'container "vllm" (vllm/vllm-openai:latest): running, no server traced to it' in summary
    assert "note: Docker: fine" in summary


def test_summary_says_where_each_server_runs() -> None:
    found = Discovery(
        servers=[
            _server(11434, "ollama", pid=10, container_id=CID, container_name="ollama", image="ollama/ollama"),
            _server(8000, "vllm", pid=11, process="vllm serve", unit="vllm.service"),
        ],
        silent=[Silent(8080, "connected, but no answer in time (hung?)")],
    )
    lines = render_summary(found)
    assert lines[0] == "found 2 inference server(s)"
    assert 'container "ollama" (ollama/ollama), pid 10' in lines[1]
    assert "unit vllm.service, pid 11 (vllm serve)" in lines[2]
    assert lines[3] == "  port 8080: connected, but no answer in time (hung?)"
