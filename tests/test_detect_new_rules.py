"""Unit tests of issue 16's rules on hand-written records: truncation once, cause in evidence, parsers."""

from __future__ import annotations

from tests.scenarios.catalog import SCENARIOS, truncation_line
from watchdog.commands.replay import replay_trace
from watchdog.detect.engine import DetectionEngine
from watchdog.detect.factory import make_engine
from watchdog.detect.profile import TargetProfile
from watchdog.detect.truncation import kv_mib_per_token, parse_cut, suggested_context
from watchdog.probes.llamacpp import parse_llamacpp_metrics
from watchdog.probes.vllm import parse_vllm_metrics
from watchdog.trace.io import Trace
from watchdog.trace.records import LoadedModel, LogLine, ServerPoll


def test_each_servers_line_is_read_with_its_numbers():
    assert parse_cut(truncation_line("ollama", 2048, 5000)) == parse_cut(
        'level=WARN source=runner.go:159 msg="truncating input prompt" limit=2048 prompt=5000 keep=4 new=2048')
    cut = parse_cut(truncation_line("ollama", 2048, 5000))
    assert (cut.action, cut.context, cut.prompt) == ("truncated", 2048, 5000)
    cut = parse_cut(truncation_line("llamacpp", 4096, 4476))
    assert (cut.action, cut.context, cut.prompt) == ("rejected", 4096, 4476)
    cut = parse_cut(truncation_line("vllm", 8192, 9000))
    assert (cut.action, cut.context, cut.prompt) == ("rejected", 8192, 9000)
    cut = parse_cut("ValueError: The decoder prompt (length 12324) is longer than the maximum model length of 8192.")
    assert (cut.context, cut.prompt) == (8192, 12324)
    assert parse_cut('INFO:     127.0.0.1:51234 - "POST /v1/chat/completions HTTP/1.1" 200 OK') is None
    assert kv_mib_per_token("llama_kv_cache: size =  448.00 MiB (  4096 cells,  28 layers,  1/1 seqs)") == 448 / 4096
    assert suggested_context(5000) == 8192 and suggested_context(100) == 2048


def test_truncation_is_raised_once_for_many_lines_with_what_to_change():
    engine = DetectionEngine([TargetProfile("ollama", "ollama")])
    engine.feed(ServerPoll(t=0.0, target="ollama", state="ready", models=[LoadedModel("qwen3:14b", 9000)]))
    engine.feed(LogLine(t=1.0, target="ollama", line="llama_kv_cache: size =  448.00 MiB (  4096 cells,  28 layers)"))
    findings = []
    for i in range(20):
        findings += engine.feed(LogLine(t=10.0 + i, target="ollama", line=truncation_line("ollama", 4096, 7268 + i)))
    assert [f.state for f in findings] == ["raised"]
    evidence = findings[0].evidence
    assert evidence["model"] == "qwen3:14b" and evidence["context_tokens"] == 4096
    assert evidence["suggested_context"] == 8192 and "OLLAMA_CONTEXT_LENGTH=8192" in evidence["change"]
    assert evidence["extra_vram_mib"] == round(4096 * 448 / 4096)
    cleared = engine.feed(ServerPoll(t=10.0 + 19 + 3600.0, target="ollama", state="ready"))
    assert [f.state for f in cleared] == ["cleared"]


def test_a_busy_slowdown_names_the_gpus_reason_and_clock():
    scenario = SCENARIOS["busy_slow"](0)
    result = replay_trace(Trace(scenario.header, scenario.records))
    raised = [f for f in result.findings if f.finding == "degraded" and f.state == "raised"]
    assert raised and "cause: the GPU reports" in raised[0].summary
    assert raised[0].evidence["rule"] == "counters_busy" and raised[0].evidence["gpu0"]["sm_clock_mhz"] < 1000


def test_a_stuck_collective_is_named_by_the_step_rule():
    scenario = SCENARIOS["stuck_collective"](0)
    result = replay_trace(Trace(scenario.header, scenario.records))
    raised = [f for f in result.findings if f.finding == "hang" and f.state == "raised"]
    assert raised and raised[0].evidence["rule"] == "steps_stalled"


def test_step_and_prompt_counters_are_read_from_real_metric_names():
    vllm = parse_vllm_metrics(
        'vllm:iteration_tokens_total_count{model_name="m"} 1234.0\n'
        'vllm:iteration_tokens_total_sum{model_name="m"} 99999.0\n'
        'vllm:prompt_tokens_total{model_name="m"} 5000.0\n')
    assert vllm["steps_total"] == 1234.0 and vllm["prompt_tokens_total"] == 5000.0
    llama = parse_llamacpp_metrics("llamacpp:n_decode_total 77\nllamacpp:prompt_tokens_total 512\n")
    assert llama["decodes"] == 77 and llama["prompt"] == 512


def test_short_canaries_do_not_clear_a_slowdown_the_counter_found_a_long_one_does():
    from watchdog.trace.records import Canary

    scenario = SCENARIOS["busy_slow"](1)
    engine = make_engine(header=scenario.header)
    target = scenario.header.targets[0].name
    raised_at = None
    for record in scenario.records:
        if any(f.finding == "degraded" and f.state == "raised" for f in engine.feed(record)):
            raised_at = record.t
            break
    assert raised_at is not None
    view = engine.targets[target].view
    model = next(iter(view.models))
    t = raised_at + 1
    engine.feed(ServerPoll(t=t, target=target, state="ready", models=[LoadedModel(model)], running=0, waiting=0,
                           gen_tokens_total=view.tokens))
    changes = []
    for i in range(5):  # quiet moments, 4-token canaries at the usual speed: they say little about decode
        start = t + 2 + 10 * i
        changes += engine.feed(Canary(t=start + 0.3, target=target, model=model, ok=True, started=start,
                                      ttft_s=0.15, tokens=4, tokens_per_s=40.0))
    assert not [f for f in changes if f.finding == "degraded"]
    cleared = engine.feed(Canary(t=t + 60, target=target, model=model, ok=True, started=t + 59, ttft_s=0.15,
                                 tokens=32, tokens_per_s=40.0))
    assert [f.state for f in cleared if f.finding == "degraded"] == ["cleared"]
