"""The running daemon's metrics: Prometheus scraped over HTTP, CloudWatch read back from moto, EMF lines.

A real ``watchdogctl run`` watches a simulated Ollama and GPU; what it exports is compared
with what ``watchdogctl status --json`` says at the same time, and follows a hang and an XID.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_support import DaemonProcess, ctl, status_json, write_config
from tests.infra.moto_server import MotoServer, moto_server  # noqa: F401 - fixture
from tests.infra.system import free_port
from tests.simulator import sim_factory  # noqa: F401 - fixture
from tests.support import wait_for
from tests.test_metrics_cloudwatch import read_back

FAST_CANARY = {"interval": "2s", "confirm_interval": "1s", "first_token_timeout": "3s", "stall_timeout": "3s",
               "timeout": "10s"}
HOST = "daemon-host"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_running_daemon_exports_to_prometheus_cloudwatch_and_emf(tmp_path: Path, sim_factory,  # noqa: F811
                                                                     moto_server: MotoServer) -> None:  # noqa: F811
    sim = sim_factory("ollama", gpu_dir=tmp_path / "gpu")
    port, emf = free_port(), tmp_path / "emf" / "metrics.jsonl"
    extra = "\n".join([
        "[metrics]", f'host = "{HOST}"',
        "[metrics.prometheus]", "enabled = true", f'listen = "127.0.0.1:{port}"',
        "[metrics.cloudwatch]", "enabled = true", f'endpoint_url = "{moto_server.url}"', 'region = "us-east-1"',
        'interval = "1s"', "high_resolution = true",
        "[metrics.emf]", "enabled = true", f'path = "{emf}"', 'interval = "1s"',
    ]) + "\n"
    target = {"name": "ollama", "kind": "ollama", "url": sim.url, "canary": dict(FAST_CANARY)}
    config = write_config(tmp_path / "w.toml", tmp_path, [target], gpu_dir=tmp_path / "gpu", extra=extra)
    daemon = DaemonProcess(config, tmp_path)
    client = moto_server.client()
    try:
        wait_for(lambda: (s := status_json(config)) and s["daemon"]["ready"], 60, "the daemon to be ready")
        httpx.post(f"{sim.url}/api/generate", json={"model": sim.model, "prompt": "hi", "stream": False},
                   timeout=30).raise_for_status()
        wait_for(lambda: (s := status_json(config)) and s["targets"][0]["last_canary"]
                 and s["targets"][0]["last_canary"]["ok"], 60, "a good canary")

        # Prometheus: the same numbers as status, in Prometheus naming and base units.
        def prometheus_agrees() -> bool:
            status = status_json(config)
            samples = scrape(port)
            gpu = status["gpus"][0]
            return (samples.get(("inference_watchdog_target_healthy", (("target", "ollama"),))) == 1.0
                    and samples.get(("inference_watchdog_gpu_memory_used_bytes", (("gpu", "0"),)))
                    == gpu["mem_used_mib"] * 1024 * 1024
                    and samples.get(("inference_watchdog_canary_ttft_seconds", (("target", "ollama"),)), 0) > 0
                    and samples.get(("inference_watchdog_open_incidents", (("target", "ollama"),))) == 0.0)
        wait_for(prometheus_agrees, 60, "Prometheus values that match status")

        # CloudWatch: put by the daemon, read back with Host and Target/GPU dimensions.
        mem = status_json(config)["gpus"][0]["mem_used_mib"]
        wait_for(lambda: 1.0 in read_back(client, HOST, "TargetHealthy", {"Target": "ollama"}, "Maximum"), 60,
                 "TargetHealthy=1 in CloudWatch")
        wait_for(lambda: float(mem) in read_back(client, HOST, "GPUMemoryUsed", {"GPU": "0"}, "Maximum")
                 or float(mem) in read_back(client, HOST, "GPUMemoryUsed", {"GPU": "0"}, "Minimum"), 60,
                 f"GPUMemoryUsed={mem} in CloudWatch")
        wait_for(lambda: any(v > 0 for v in read_back(client, HOST, "CanaryTTFT", {"Target": "ollama"})), 30,
                 "CanaryTTFT in CloudWatch")

        # An XID and a hang show up in every exporter.
        sim.inject("xid", xid=13)
        wait_for(lambda: scrape(port).get(("inference_watchdog_gpu_xid_errors_total", (("gpu", "0"),))) == 1.0,
                 30, "the XID counted in Prometheus")
        wait_for(lambda: sum(read_back(client, HOST, "XidErrors", {"GPU": "0"}, "Sum")) == 1.0, 60,
                 "one XID in CloudWatch (deltas add up to the count)")
        sim.inject("recover")
        httpx.post(f"{sim.url}/api/generate", json={"model": sim.model, "prompt": "hi", "stream": False},
                   timeout=30).raise_for_status()
        sim.inject("hang")
        wait_for(lambda: scrape(port).get(("inference_watchdog_open_incidents", (("target", "ollama"),))) == 1.0,
                 90, "the hang incident in Prometheus")
        assert scrape(port)[("inference_watchdog_target_healthy", (("target", "ollama"),))] == 0.0
        wait_for(lambda: 0.0 in read_back(client, HOST, "TargetHealthy", {"Target": "ollama"}, "Minimum"), 60,
                 "TargetHealthy=0 in CloudWatch")
        wait_for(lambda: 1.0 in read_back(client, HOST, "OpenIncidents", {"Target": "ollama"}), 60,
                 "OpenIncidents=1 in CloudWatch")
        listed = client.list_metrics(Namespace="InferenceWatchdog",
                                     Dimensions=[{"Name": "Host", "Value": HOST}])["Metrics"]
        assert {m["MetricName"] for m in listed} >= {"TargetHealthy", "CanaryFailures", "GPUUtilization",
                                                      "GPUTemperature", "GPUPower", "Restarts", "Unloads"}

        # EMF: the same names, one line per dimension set.
        lines = [json.loads(line) for line in emf.read_text().splitlines()]
        targets = [d for d in lines if d.get("Target") == "ollama"]
        assert targets and all(d["Host"] == HOST for d in lines)
        assert {"TargetHealthy", "OpenIncidents", "Restarts"} <= set(targets[-1])
        assert any(d.get("GPU") == "0" and "GPUUtilization" in d for d in lines)
    finally:
        sim.inject("recover")
        code = daemon.stop()
    assert code == 0, daemon.log_text()[-3000:]
    log = daemon.log_text()
    assert "prometheus: serving /metrics" in log and "cloudwatch: putting metrics" in log


def test_a_reload_moves_the_prometheus_endpoint(tmp_path: Path, sim_factory) -> None:  # noqa: F811
    sim = sim_factory("ollama", gpu_dir=tmp_path / "gpu")
    old, new = free_port(), free_port()
    target = {"name": "ollama", "kind": "ollama", "url": sim.url, "canary": dict(FAST_CANARY)}
    extra = f'[metrics.prometheus]\nenabled = true\nlisten = "127.0.0.1:{old}"\n'
    config = write_config(tmp_path / "w.toml", tmp_path, [target], gpu_dir=tmp_path / "gpu", extra=extra)
    daemon = DaemonProcess(config, tmp_path)
    try:
        wait_for(lambda: (s := status_json(config)) and s["daemon"]["ready"], 60, "the daemon to be ready")
        wait_for(lambda: ("inference_watchdog_target_healthy", (("target", "ollama"),)) in scrape(old), 30,
                 "metrics on the first port")
        config.write_text(config.read_text().replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}"))
        result = ctl(config, "reload")
        assert result.returncode == 0, result.stdout + result.stderr
        wait_for(lambda: ("inference_watchdog_target_healthy", (("target", "ollama"),)) in scrape(new), 30,
                 "metrics on the new port")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{old}/metrics", timeout=5)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log_text()[-3000:]
