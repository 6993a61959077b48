#!/usr/bin/env python3
"""Validate the watchdog on a real NVIDIA GPU: real torch workloads, the real probes and detectors, live.

Starts scripts/gpu_toy_server.py (a torch "server" speaking vLLM's API) and
runs the project's own GPU probe (NVML), attribution (by the listening port
and the process tree), process probe, server adapter, canaries, flight
recorder and detection engine against it, live, while a timeline drives the
server through what real servers do:

    load 6 GiB in steps (memory rising at 0%) → traffic (high util) → idle with
    the memory held → clean unload (empty_cache) → reload → traffic → failed
    unload (a stray reference) → restart → a child "runner" holding memory
    that outlives its parent (an orphan) → a freeze mid-generation (SIGSTOP)

It asserts the expected findings and their timing (and that nothing else is
raised), writes the trace-v1 recording with its expectation file, and a
report: device, driver, NVML version, per-call NVML timings, what was
detected when.

    python scripts/gpu_validate.py --out DIR

Modes beside this one (``--mode``), with the real daemon in front of real
servers (scripts/gpu_daemon_modes.py): ``llamacpp`` (llama.cpp's server with
CUDA on one GPU), ``split`` (the same server split over two GPUs) and ``nccl``
(two torch ranks joined by NCCL, a long prefill and a stuck collective).
scripts/gpu_device.sh runs them on a GPU host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from watchdog.commands.replay import check_expectations  # noqa: E402
from watchdog.config import parse_config  # noqa: E402
from watchdog.daemon.recorder import FlightRecorder  # noqa: E402
from watchdog.detect.factory import make_engine  # noqa: E402
from watchdog.detect.finding import Finding  # noqa: E402
from watchdog.probes.base import MonotonicClock  # noqa: E402
from watchdog.probes.suite import ProbeSuite  # noqa: E402
from watchdog.trace.header import build_header  # noqa: E402
from watchdog.trace.io import write_trace  # noqa: E402
from watchdog.trace.records import Event, Record  # noqa: E402

TARGET = "toy"


@dataclass
class Run:
    clock: MonotonicClock
    records: list[Record] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    expect: list[dict[str, Any]] = field(default_factory=list)
    quiet: list[dict[str, Any]] = field(default_factory=list)
    phases: list[tuple[float, str]] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ToyServer:
    def __init__(self, port: int, device: str, out: Path, python: str = sys.executable) -> None:
        self.python = python
        self.port = port
        self.device = device
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.out / "toy-server.log", "ab")
        self.proc = subprocess.Popen(
            [self.python, str(ROOT / "scripts" / "gpu_toy_server.py"), "--port", str(self.port),
             "--device", self.device, *(["--matrix", "256", "--token-s", "0.03"] if self.device == "cpu" else [])],
            stdout=subprocess.PIPE, stderr=log,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the toy server did not start; see toy-server.log")

    def post(self, path: str, **kwargs: Any) -> dict[str, Any]:
        response = httpx.post(self.url + path, timeout=60, **kwargs)
        response.raise_for_status()
        return response.json()

    def wait_loaded(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(self.url + "/v1/models", timeout=5).json()["data"]:
                return
            time.sleep(0.2)
        raise RuntimeError("the model did not load")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.proc.wait(30)


class Traffic:
    """Client threads sending streaming completions until stopped."""

    def __init__(self, url: str, clients: int = 2, tokens: int = 48) -> None:
        self.url, self.clients, self.tokens = url, clients, tokens
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "Traffic":
        for _ in range(self.clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with httpx.stream("POST", self.url + "/v1/completions", timeout=60,
                                  json={"model": "toy-6g", "prompt": "x", "max_tokens": self.tokens,
                                        "stream": True}) as response:
                    for _ in response.iter_lines():
                        pass
            except httpx.HTTPError:
                time.sleep(0.5)


async def observe(run: Run, config: Any, stop: asyncio.Event) -> ProbeSuite:
    """The project's real probes and engine, scheduled like the daemon schedules them."""
    engine = make_engine(config)
    recorder = FlightRecorder(3600)

    def emit(record: Record) -> None:
        run.records.append(record)
        recorder.add(record)
        for finding in engine.feed(record):
            run.findings.append(finding)
            print(f"  [{finding.t:7.1f}] {finding.finding} {finding.state}: {finding.summary}", flush=True)

    suite = ProbeSuite(config, run.clock, emit)
    run.emit = emit  # type: ignore[attr-defined]
    probes = suite.targets[TARGET]
    if suite.gpu is not None:
        suite.gpu.start_xid_watch()

    async def every(interval: float, job: Any) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await asyncio.wait_for(job(), timeout=max(interval * 3, 10))
            except Exception as exc:  # noqa: BLE001
                print(f"  probe error: {exc!r}", flush=True)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def canaries() -> None:
        while not stop.is_set():
            if not probes.canary.in_flight and probes.canary.decide().send:
                asyncio.ensure_future(probes.canary.round())
            await asyncio.sleep(1.0)

    run.tasks = [  # type: ignore[attr-defined]
        asyncio.ensure_future(every(2.0, probes.server.round)),
        asyncio.ensure_future(every(2.0, suite.processes.round)),
        asyncio.ensure_future(canaries()),
    ]
    if suite.gpu is not None:
        run.tasks.append(asyncio.ensure_future(every(config.watchdog.gpu_interval, suite.gpu.round)))  # type: ignore[attr-defined]
    return suite


def event(run: Run, name: str) -> float:
    t = run.clock()
    run.emit(Event(t=t, target=TARGET, event=name, model="toy-6g"))  # type: ignore[attr-defined]
    return t


async def timeline(run: Run, toy: ToyServer) -> None:
    async def phase(name: str) -> float:
        t = run.clock()
        run.phases.append((t, name))
        print(f"[{t:7.1f}] {name}", flush=True)
        return t

    def quiet(start: float, note: str) -> None:
        run.quiet.append({"from": round(start, 2), "to": round(run.clock(), 2), "note": note})

    async def run_in_thread(fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    start = await phase("load 6 GiB in 12 steps (memory rising at ~0% utilisation)")
    event(run, "load_requested")
    toy.post("/_toy/load")
    await run_in_thread(toy.wait_loaded)
    await asyncio.sleep(3)
    await phase("traffic: two clients streaming completions (high utilisation)")
    with Traffic(toy.url):
        await asyncio.sleep(25)
    await phase("idle with the model held in GPU memory")
    await asyncio.sleep(20)
    await phase("clean unload (weights dropped, empty_cache)")
    event(run, "unload_requested")
    toy.post("/_toy/unload?mode=clean")
    await asyncio.sleep(20)
    await phase("reload, then traffic")
    event(run, "load_requested")
    toy.post("/_toy/load")
    await run_in_thread(toy.wait_loaded)
    with Traffic(toy.url, clients=1):
        await asyncio.sleep(10)
    await asyncio.sleep(3)
    quiet(start, "load at 0%, traffic, idle with the memory held, clean unload (CUDA context left), reload")

    onset = await phase("failed unload: a stray reference keeps the weights")
    event(run, "unload_requested")
    toy.post("/_toy/unload?mode=leak")
    run.expect.append({"finding": "failed_unload", "target": TARGET, "onset": round(onset, 2),
                       "raise_by": round(onset + 30, 2), "until": None})
    await asyncio.sleep(25)
    await phase("restart the server (the memory goes with the old process)")
    event(run, "restart_started")
    await run_in_thread(toy.kill, signal.SIGTERM)
    await run_in_thread(toy.start)
    event(run, "restart_finished")
    run.expect[-1]["until"] = round(run.clock() + 15, 2)
    restart_start = run.clock()
    toy.post("/_toy/load")
    await run_in_thread(toy.wait_loaded)
    await asyncio.sleep(10)
    quiet(restart_start, "restart, then loading again")

    await phase("spawn a child runner holding 2 GiB")
    runner = toy.post("/_toy/spawn_runner?mib=2048")["pid"]
    await asyncio.sleep(8)
    onset = await phase(f"the server dies (SIGKILL) and is restarted; its runner {runner} lives on")
    event(run, "restart_started")
    await run_in_thread(toy.kill, signal.SIGKILL)
    await run_in_thread(toy.start)
    event(run, "restart_finished")
    run.expect.append({"finding": "failed_unload", "target": TARGET, "onset": round(onset, 2),
                       "raise_by": round(onset + 35, 2)})
    toy.post("/_toy/load")
    await run_in_thread(toy.wait_loaded)
    await asyncio.sleep(20)
    os.kill(runner, signal.SIGKILL)
    run.expect[-1]["until"] = round(run.clock() + 10, 2)
    await asyncio.sleep(10)

    await phase("a long generation, then the server freezes (SIGSTOP) mid-way")
    generation = threading.Thread(
        target=lambda: _stream_quietly(toy.url, 3000), daemon=True)
    generation.start()
    await asyncio.sleep(4)
    onset = await phase("SIGSTOP")
    toy.kill(signal.SIGSTOP)
    run.expect.append({"finding": "hang", "target": TARGET, "onset": round(onset, 2),
                       "raise_by": round(onset + 30, 2)})
    await asyncio.sleep(35)
    await phase("end (the frozen server is killed once observing stops)")


def _stream_quietly(url: str, tokens: int) -> None:
    try:
        with httpx.stream("POST", url + "/v1/completions", timeout=300,
                          json={"model": "toy-6g", "prompt": "x", "max_tokens": tokens, "stream": True}) as r:
            for _ in r.iter_lines():
                pass
    except httpx.HTTPError:
        pass


def nvml_report() -> dict[str, Any]:
    """Device, driver, NVML version, and what each NVML call costs (measured here)."""
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    info: dict[str, Any] = {
        "device": pynvml.nvmlDeviceGetName(handle),
        "driver": pynvml.nvmlSystemGetDriverVersion(),
        "nvml": pynvml.nvmlSystemGetNVMLVersion(),
        "count": pynvml.nvmlDeviceGetCount(),
        "memory_total_mib": pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024),
    }
    try:
        info["mig_mode"] = pynvml.nvmlDeviceGetMigMode(handle)[0]
    except pynvml.NVMLError as exc:
        info["mig_mode"] = f"n/a ({exc})"
    calls = {
        "nvmlDeviceGetUtilizationRates": lambda: pynvml.nvmlDeviceGetUtilizationRates(handle),
        "nvmlDeviceGetMemoryInfo": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle),
        "nvmlDeviceGetTemperature": lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        "nvmlDeviceGetPowerUsage": lambda: pynvml.nvmlDeviceGetPowerUsage(handle),
        "nvmlDeviceGetComputeRunningProcesses": lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(handle),
        "nvmlDeviceGetProcessUtilization": lambda: pynvml.nvmlDeviceGetProcessUtilization(handle, 0),
        "nvmlDeviceGetCurrentClocksEventReasons": lambda: pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle),
        "nvmlDeviceGetTotalEccErrors": lambda: pynvml.nvmlDeviceGetTotalEccErrors(
            handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC),
        "nvmlDeviceGetRemappedRows": lambda: pynvml.nvmlDeviceGetRemappedRows(handle),
        "nvmlDeviceGetPcieThroughput": lambda: pynvml.nvmlDeviceGetPcieThroughput(handle, pynvml.NVML_PCIE_UTIL_TX_BYTES),
    }
    timings: dict[str, str] = {}
    for name, call in calls.items():
        samples, error = [], None
        for _ in range(5 if "Pcie" in name else 200):
            start = time.perf_counter()
            try:
                call()
            except pynvml.NVMLError as exc:
                error = str(exc)
            samples.append((time.perf_counter() - start) * 1e6)
        median = statistics.median(samples)
        timings[name] = (f"{median / 1000:.1f} ms" if median >= 1000 else f"{median:.0f} µs") + (
            f" (raises: {error})" if error else "")
    info["timings"] = timings
    pynvml.nvmlShutdown()
    return info


def write_report(out: Path, run: Run, info: dict[str, Any], report: Any, probe_timings: dict[str, Any],
                 xid: str, torch_info: str) -> Path:
    lines = [
        "# GPU validation",
        "",
        f"Run of `scripts/gpu_validate.py` on {datetime.now(timezone.utc):%Y-%m-%d} (UTC): the project's real",
        "GPU probe (NVML), attribution, process probe, vLLM adapter, canaries and detection engine, live,",
        "against a torch toy server (`scripts/gpu_toy_server.py`) on a real GPU.",
        "",
        "| | |",
        "| --- | --- |",
        f"| device | {info['device']} ({info['memory_total_mib']} MiB), {info['count']} GPU(s), MIG mode {info['mig_mode']} |",
        f"| driver | {info['driver']} |",
        f"| NVML | {info['nvml']} (nvidia-ml-py) |",
        f"| host | {platform.node()}, Python {platform.python_version()}, {torch_info} |",
        f"| XID events | {xid} |",
        f"| records | {len(run.records)} over {run.clock():.0f} s |",
        "",
        "## NVML calls (median of 200 calls; PCIe throughput: of 5)",
        "",
        "| call | time |",
        "| --- | --- |",
    ]
    lines += [f"| `{name}` | {value} |" for name, value in info["timings"].items()]
    if probe_timings:
        lines += ["", "As the GPU probe measured its own calls during the run:", "",
                  "| call | calls | errors | mean | max |", "| --- | --- | --- | --- | --- |"]
        for name, stats in sorted(probe_timings.items()):
            lines.append(f"| `{name}` | {stats.get('count', '?')} | {stats.get('errors', 0)} | "
                         f"{_us(stats.get('mean_us'))} | {_us(stats.get('max_us'))} |")
    lines += ["", "## Timeline, and what the GPU showed", "",
              "| t (s) | what the script did | GPU util median / max | memory of the server's processes |",
              "| --- | --- | --- | --- |"]
    ends = [t for t, _ in run.phases[1:]] + [run.clock()]
    for (t, name), end in zip(run.phases, ends):
        lines.append(f"| {t:.1f} | {name} | {_phase_gpu(run.records, t, end)} |")
    lines += ["", "## What the watchdog raised", "", "| t (s) | finding | state | summary |", "| --- | --- | --- | --- |"]
    lines += [f"| {f.t:.1f} | {f.finding} | {f.state} | {f.summary} |" for f in run.findings]
    lines += ["", "## Expected", ""]
    lines += expected_rows(run.expect, report)
    lines += ["", f"False positives: {len(report.false_positives)}" + (
        "" if not report.false_positives else "\n\n" + "\n".join(f"- {x}" for x in report.false_positives))]
    lines += ["", f"Result: **{'PASS' if report.ok else 'FAIL'}**", ""]
    path = out / "gpu-validation.md"
    path.write_text("\n".join(lines))
    return path


def _phase_gpu(records: list[Record], start: float, end: float) -> str:
    from watchdog.trace.records import GpuSample

    samples = [r for r in records if isinstance(r, GpuSample) and start <= r.t < end and r.util is not None]
    if not samples:
        return "- | -"
    utils = sorted(r.util for r in samples)  # type: ignore[misc]
    held = [sum(p.mem_mib or 0 for p in r.procs if p.target == TARGET) for r in samples]
    return (f"{statistics.median(utils):.0f}% / {utils[-1]:.0f}% | "
            f"{min(held) / 1024:.1f}–{max(held) / 1024:.1f} GiB")


def expected_rows(expect: list[dict[str, Any]], report: Any) -> list[str]:
    """The expectations as a table: when each was raised, how long after its onset."""
    rows = ["| finding | onset (s) | raised at (s) | after | window |", "| --- | --- | --- | --- | --- |"]
    for item in expect:
        hit = next((f for it, f in report.detected
                    if it["finding"] == item["finding"] and it["onset"] == item["onset"]), None)
        raised = f"{hit.t:.1f}" if hit else "-"
        after = f"{hit.t - item['onset']:.1f} s" if hit else "MISSED"
        rows.append(f"| {item['finding']} | {item['onset']:.1f} | {raised} | {after} | "
                    f"{item['raise_by'] - item['onset']:.0f} s |")
    return rows


def _us(micros: Any) -> str:
    if not isinstance(micros, (int, float)):
        return "?"
    return f"{micros / 1000:.1f} ms" if micros >= 1000 else f"{micros:.0f} µs"


async def main_async(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:  # no GPU: check the script itself (toy on the CPU, no NVML)
        info = {"device": "none (dry run)", "driver": "-", "nvml": "-", "count": 0, "memory_total_mib": 0,
                "mig_mode": "-", "timings": {}}
    else:
        info = nvml_report()
    print(f"device: {info['device']}, driver {info['driver']}, NVML {info['nvml']}", flush=True)
    torch_info = subprocess.run(
        [args.toy_python, "-c", "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}')"],
        capture_output=True, text=True).stdout.strip()
    port = free_port()
    config = parse_config(f"""
[watchdog]
gpu_backend = "{'none' if args.dry_run else 'nvml'}"
gpu_interval = "1s"
poll_interval = "2s"
process_interval = "2s"
[policy]
mode = "observe"
[[targets]]
name = "{TARGET}"
kind = "vllm"
url = "http://127.0.0.1:{port}"
[targets.canary]
interval = "5s"
""")
    run = Run(MonotonicClock())
    toy = ToyServer(port, "cpu" if args.dry_run else "cuda", out, args.toy_python)
    toy.start()
    stop = asyncio.Event()
    suite = await observe(run, config, stop)
    try:
        await timeline(run, toy)
    finally:
        stop.set()
        await asyncio.gather(*run.tasks, return_exceptions=True)  # type: ignore[attr-defined]
        probe_timings = suite.gpu.timings() if suite.gpu is not None else {}
        xid = "registered" if suite.gpu is not None and getattr(suite.gpu, "_xid", None) is not None else "n/a"
        if suite.gpu is not None and getattr(suite.gpu, "_xid", None) is not None:
            registered = getattr(suite.gpu._xid, "registered", [])
            xid = f"registered on GPU(s) {registered} (none occurred)" if registered else "registration failed"
        header = build_header(config, list(suite.gpu.devices) if suite.gpu else [],
                              target_gpus=suite.target_gpus(), wall_zero=run.clock.wall_start)
        await suite.aclose()
        toy.kill()
    duration = run.clock()
    expect = {
        "trace": "gpu-validation.trace.jsonl",
        "source": f"recorded live by scripts/gpu_validate.py on {info['device']}, driver {info['driver']}",
        "duration": round(duration, 1),
        "expect": [{k: v for k, v in item.items() if v is not None} for item in run.expect],
        "tolerate": [],
        "quiet": run.quiet,
    }
    records = sorted(run.records, key=lambda r: r.t)
    write_trace(out / "gpu-validation.trace.jsonl", header, records)
    (out / "gpu-validation.expect.json").write_text(json.dumps(expect, indent=1) + "\n")
    report = check_expectations(run.findings, expect)
    path = write_report(out, run, info, report, probe_timings, xid, torch_info)
    print(path.read_text(), flush=True)
    return 0 if report.ok else 1


def device_modes(args: argparse.Namespace) -> int:
    """The modes with the real daemon: llamacpp, split, nccl (see scripts/gpu_daemon_modes.py)."""
    import gpu_daemon_modes as modes

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    if args.dry_run:
        info: dict[str, Any] = {"device": "none (dry run)", "driver": "-", "count": 0}
    else:
        info = nvml_report()
        (out / "nvml.json").write_text(json.dumps(info, indent=1))
    source = f"recorded live by the daemon (scripts/gpu_validate.py --mode {args.mode}) on " \
             f"{info['count']}x {info['device']}, driver {info['driver']}"
    print(f"device: {info['count']}x {info['device']}, driver {info['driver']}", flush=True)
    try:
        result = _device_mode(args, modes, out, work, source)
    finally:
        for cleanup in reversed(modes.CLEANUP):
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - already gone
                pass
    print(result.get("markdown") or json.dumps(result, indent=1, default=str), flush=True)
    return 0 if result.get("ok") else 1


def _device_mode(args: argparse.Namespace, modes: Any, out: Path, work: Path, source: str) -> dict[str, Any]:
    if args.mode == "llamacpp":
        result = modes.run_llamacpp(out, work / "llamacpp", Path(args.llama_server), Path(args.model), source,
                                    gpu_backend="none" if args.dry_run else "nvml",
                                    ngl="0" if args.dry_run else "99", act=args.act)
    elif args.mode == "split":
        result = modes.run_split(out, work / "split", Path(args.llama_server), Path(args.model), source)
    else:
        result = modes.run_nccl(out, work / "nccl", source, device="cpu" if args.dry_run else "cuda",
                                prefill_s=args.prefill_s, busy_stall_after=args.busy_stall_after,
                                expect_within=args.expect_within or None)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("toy", "llamacpp", "split", "nccl"), default="toy")
    parser.add_argument("--out", default="gpu-validation-out")
    parser.add_argument("--work", default="/tmp/gpu-validate-work", help="state dirs, logs, sockets (modes "
                        "with the daemon)")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: run on the CPU, without NVML")
    parser.add_argument("--toy-python", default=sys.executable, help="the interpreter with torch (default: this one)")
    parser.add_argument("--llama-server", default="llama-server", help="llama-server built with CUDA")
    parser.add_argument("--model", default="model.gguf", help="the GGUF to serve (scripts/gguf_random.py)")
    parser.add_argument("--act", action="store_true", help='llamacpp: policy.mode = "act": the daemon restarts '
                        "the server through its restart.command (default: observe; the script restarts it)")
    parser.add_argument("--prefill-s", type=float, default=90.0, help="nccl: length of the long prefill")
    parser.add_argument("--busy-stall-after", type=float, default=None,
                        help="nccl: override the target's busy_stall_after (default: the daemon's)")
    parser.add_argument("--expect-within", type=float, default=60.0,
                        help="nccl: the stuck collective must raise a hang this soon (default 60 s, the "
                        "engine-step rule); 0: expect it from the busy fallback instead")
    args = parser.parse_args()
    if args.mode != "toy":
        sys.path.insert(0, str(ROOT / "scripts"))
        sys.exit(device_modes(args))
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
