"""Pure pieces of the simulator: durations, fault validation, Prometheus text, PyTorch's OOM text."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from watchdog.sim.engine import parse_keep_alive
from watchdog.sim.faults import FaultError, parse_cli_fault, validate
from watchdog.sim.logwriter import nccl_timeout_line, torch_oom_text
from watchdog.sim.prom import Exposition


@pytest.mark.parametrize("value, seconds", [
    (None, 300.0), ("", 300.0), (0, 0.0), ("0", 0.0), (-1, -1.0), ("-1", -1.0), (30, 30.0), ("10", 10.0),
    ("5m", 300.0), ("1h30m", 5400.0), ("300ms", 0.3), ("1.5s", 1.5), ("-1m", -60.0),
])
def test_keep_alive_like_ollama(value, seconds):
    assert parse_keep_alive(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "m", "5x", "1h5", True])
def test_bad_keep_alive(value):
    with pytest.raises(ValueError):
        parse_keep_alive(value)


def test_fault_validation_fills_defaults_and_converts():
    assert validate("hang", {"after_tokens": "4"}, "vllm") == {"after_tokens": 4, "scope": "generation"}
    assert validate("nccl_hang", {"abort": "true"}, "vllm")["abort"] is True
    assert parse_cli_fault("leak:mib_per_s=5,mib_per_load=100") == ("leak", {"mib_per_s": "5", "mib_per_load": "100"})
    for name, params, kind in (("nope", {}, "vllm"), ("failed_unload", {}, "vllm"), ("slow", {"factor": 0}, "vllm"),
                               ("hang", {"scope": "some"}, "ollama"), ("leak", {"mib_per_s": -1}, "ollama"),
                               ("garbage", {"mode": "nice"}, "ollama"), ("http_5xx", {"status": 404}, "ollama")):
        with pytest.raises(FaultError):
            validate(name, params, kind)
    with pytest.raises(FaultError):
        parse_cli_fault("leak:mib_per_s")


def test_exposition_parses_with_prometheus_client():
    exp = Exposition()
    exp.gauge("x:running", "Running.", [({"model_name": 'a"b'}, 2)])
    exp.counter("x:tokens_total", "Tokens.", [({"model_name": "m"}, 7)], created=1.0)
    exp.histogram("x:ttft_seconds", "TTFT.", {"model_name": "m"}, (0.1, 1.0), [1, 2], 0.6, 2, created=1.0)
    families = {f.name: f for f in text_string_to_metric_families(exp.text())}
    assert families["x:running"].samples[0].labels == {"model_name": 'a"b'}
    assert families["x:tokens"].samples[0].value == 7
    buckets = [s for s in families["x:ttft_seconds"].samples if s.name.endswith("_bucket")]
    assert [(s.labels["le"], s.value) for s in buckets] == [("0.1", 1), ("1.0", 2), ("+Inf", 2)]


def test_failure_texts_match_the_real_ones():
    oom = torch_oom_text(0, 2048, 23028, 500, 42, 20000, 6000)
    assert oom.startswith("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 22.49 GiB of which 0.49 GiB is free.")
    assert "5.86 GiB is reserved by PyTorch but unallocated" in oom
    line = nccl_timeout_line(7, 600043, 600000)
    assert "Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, OpType=ALLREDUCE" in line
    assert line.endswith("Timeout(ms)=600000) ran for 600043 milliseconds before timing out.")
