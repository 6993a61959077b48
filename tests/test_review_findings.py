"""Regression tests from the code review: each one proved a defect, since fixed.

Canaries that loaded models, a reload that moved the socket and stopped the daemon, a
second daemon on the same state, GPU sizes that never reached the daemon's engine, a
password printed by `config check`, and zero durations accepted.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from tests.control_support import short_tmpdir
from tests.daemon_support import DaemonProcess, ctl, write_config
from tests.simulator import sim_factory  # noqa: F401 - fixture
from tests.support import until, wait_for
from watchdog.config import load_config
from watchdog.daemon.daemon import Daemon


async def test_the_daemons_engine_knows_the_gpu_sizes(tmp_path: Path, sim_factory: Any) -> None:  # noqa: F811
    """A ggml allocation of 512 MiB failing on a GPU with ~20 GiB free is fragmentation (replay says so,
    test_detect_units says so); the daemon's engine never learns the GPU's size, so it says plain oom."""
    sim = sim_factory("llamacpp", "--gpu-index", "0", gpu_dir=tmp_path / "gpu")
    log = tmp_path / "srv.log"
    log.write_text("")
    config_path = write_config(
        tmp_path / "watchdog.toml", tmp_path,
        [{"name": "srv", "kind": "llamacpp", "url": sim.url, "gpus": [0], "log_file": str(log), "canary": {"enabled": False}}],
        gpu_dir=tmp_path / "gpu",
    )
    daemon = Daemon(str(config_path), load_config(str(config_path)))
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.ready and daemon.gpu_totals, 20, "the first GPU round")
        source = daemon.suite.targets["srv"].logs.source  # type: ignore[union-attr]
        await asyncio.wait_for(source.ready.wait(), 10)
        await until(lambda: daemon.latest.gpus.get(0) is not None, 20, "a GPU sample")
        with log.open("a") as handle:
            handle.write("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 512.00 MiB on device 0: "
                         "cudaMalloc failed: out of memory\n")
        found = await until(lambda: [f.finding for f in daemon.pipeline.engine.active() if f.target == "srv"],
                            20, "a finding from the log line")
        assert found == ["fragmentation"], f"engine.gpu_totals={daemon.pipeline.engine.gpu_totals}"
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 30)


def test_a_second_daemon_on_the_same_socket_refuses_to_start(tmp_path: Path, sim_factory: Any) -> None:  # noqa: F811
    """README: "a socket another daemon still answers on ... makes the daemon refuse to start with a
    message". The daemon logs the error and runs on, sharing state.db with the first one."""
    sim = sim_factory("ollama", gpu_dir=tmp_path / "gpu")
    config = write_config(tmp_path / "watchdog.toml", tmp_path,
                          [{"name": "ollama", "kind": "ollama", "url": sim.url}],
                          gpu_dir=tmp_path / "gpu")
    first = DaemonProcess(config, tmp_path)
    second = None
    try:
        wait_for(lambda: ctl(config, "status", "--json").returncode in (0, 1, 2), 30, "the first daemon")
        second = DaemonProcess(config, tmp_path)
        second.wait_log(lambda line: "control socket" in line.get("msg", ""), 30, "the second daemon's verdict")
        deadline = time.monotonic() + 10
        while second.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not second.alive(), "a second daemon runs on, writing to the same state.db: " + second.log_text()[-600:]
        assert second.proc.returncode != 0
    finally:
        if second is not None:
            second.stop()
        first.stop()


def test_reload_over_the_socket_that_moves_the_socket_keeps_watching(tmp_path: Path,
                                                                       sim_factory: Any) -> None:  # noqa: F811
    """`watchdogctl reload` after control_socket changed: the reload runs inside the request handler,
    stops the control server (which cancels that very handler) and never restarts the probes."""
    sim = sim_factory("ollama", gpu_dir=tmp_path / "gpu")
    targets = [{"name": "ollama", "kind": "ollama", "url": sim.url}]
    with short_tmpdir() as short:
        config = write_config(tmp_path / "watchdog.toml", short, [dict(t) for t in targets], gpu_dir=tmp_path / "gpu")
        daemon = DaemonProcess(config, tmp_path)
        try:
            wait_for(lambda: ctl(config, "status", "--json").returncode in (0, 1, 2), 30, "the daemon")
            old_socket = short / "control.sock"
            new_socket = short / "control2.sock"
            text = config.read_text().replace(f'control_socket = "{old_socket}"', f'control_socket = "{new_socket}"')
            config.write_text(text)
            transport = httpx.HTTPTransport(uds=str(old_socket))
            with httpx.Client(transport=transport, base_url="http://watchdog", timeout=15) as client:
                try:
                    client.post("/reload")
                except httpx.HTTPError:
                    pass  # the answer may be lost with the old socket; what counts is what follows

            def fresh_status() -> dict[str, Any] | None:
                result = ctl(config, "status", "--json")
                if result.returncode == 3 or not result.stdout.strip():
                    return None
                data = json.loads(result.stdout)
                server = data["targets"][0]["server"]
                return data if data["daemon"]["ready"] and server and server["age_s"] < 3 else None

            try:
                wait_for(fresh_status, 20, "the daemon on its new socket, ready, polling again")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; new socket exists: {new_socket.exists()}; daemon log tail: "
                                     f"{daemon.log_text()[-1500:]}") from None
        finally:
            daemon.stop()


def test_config_check_never_prints_a_password_from_a_target_url(tmp_path: Path) -> None:
    """Secrets are never written into the config, and config check's summary is "secret-free"; a URL
    with user:password@ passes validation and the password is printed."""
    config = tmp_path / "watchdog.toml"
    config.write_text('[policy]\nmode = "observe"\n[[targets]]\nname = "x"\nkind = "openai"\n'
                      'url = "http://admin:hunter2secret@127.0.0.1:9999"\n')
    result = ctl(config, "config", "check", str(config))
    assert "hunter2secret" not in result.stdout + result.stderr


def test_a_zero_recorder_window_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    """Durations accept 0 everywhere; recorder_window = "0s" passes `config check`, then `run` dies with a
    ValueError traceback and exit 1 (which systemd retries), instead of exit 2 with the key path."""
    config = tmp_path / "watchdog.toml"
    config.write_text(f'[watchdog]\nstate_dir = "{tmp_path / "state"}"\ngpu_backend = "none"\n'
                      'recorder_window = "0s"\n[policy]\nmode = "observe"\n')
    result = ctl(config, "config", "check", str(config))
    assert result.returncode == 2 and "recorder_window" in result.stderr, result.stdout + result.stderr


async def test_canaries_to_an_openai_compatible_server_never_load_models(sim_factory: Any) -> None:  # noqa: F811
    """kind = "openai" in front of a server that loads on demand (Ollama's /v1, llama-swap, LM Studio,
    LocalAI): /v1/models lists every installed model, and the canary round-robins over them, so each
    canary loads a model nobody asked for (and evicts or crowds out the one in use)."""
    from watchdog.config.model import TargetSettings
    from watchdog.probes.adapters import make_adapter
    from watchdog.probes.canary import CanaryProbe

    sim = sim_factory("ollama", "--model", "a:1b=800", "--model", "b:1b=800", "--load-time", "0.2",
                      "--decode-tps", "200")
    records: list[Any] = []
    start = time.monotonic()

    def clock() -> float:
        return time.monotonic() - start

    target = TargetSettings(name="srv", kind="openai", url=sim.url, restart={"method": "none"})
    adapter = make_adapter(target, clock)
    canary = CanaryProbe(adapter, target.canary, clock, records.append)
    try:
        assert httpx.get(f"{sim.url}/api/ps", timeout=5).json()["models"] == []  # nothing loaded
        for _ in range(2):
            canary.note_poll(await adapter.poll())
            await canary.round(force=True)
        loaded = [m["name"] for m in httpx.get(f"{sim.url}/api/ps", timeout=5).json()["models"]]
        assert loaded == [], f"the watchdog's canaries loaded {loaded}"
    finally:
        await adapter.aclose()
