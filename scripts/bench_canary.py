#!/usr/bin/env python3
"""Canary cost: the share of a server's compute time that the watchdog's canaries take, at defaults.

The daemon runs at its default settings (a 4-token canary every 15 s plus 0-10%
jitter) watching, at once:

- ``llama``: llama.cpp's real ``llama-server`` (the tests' tiny GGUF and the cached
  CPU build by default; ``--llama-server``/``--model``/``--server-args`` name a CUDA
  build and a bigger model on a GPU host);
- ``sim-llamacpp``: the simulator's llama.cpp flavour (simulated compute: prefill at
  2,000 tokens/s, decode at 40 tokens/s per request);
- ``sim-ollama``: the simulator's Ollama, measured as ``bench_daemon.py`` did (see below).

Nothing else sends these servers a generation request, so every one in the window
is a canary. For the two llama.cpp targets the share is the server's own compute
time over the window: the growth of ``llamacpp:prompt_seconds_total`` plus
``llamacpp:tokens_predicted_seconds_total`` (from ``/metrics``; llama.cpp adds
each request's ``timings.prompt_ms`` and ``predicted_ms`` to them when it ends)
over the window's length. The real server's log (``print_timing`` lines) gives
each canary's prompt and decode time and its prompt tokens (few when its prompt
is in the cache). For ``sim-ollama`` the share is the access log's duration of
each request (request to last byte: HTTP and the simulated decode included), an
upper bound of compute time.

``--sweep N`` then sends N canaries of each shape straight to the real server (the
request body the daemon builds, ``openai_canary_requests``), for ``max_tokens`` in
1, 2, 4, 8 and the default and a short prompt, with llama.cpp's prompt cache on
(its default) and off (``cache_prompt: false``: a server whose other traffic has
evicted the canary's prompt), and reports the medians of ``timings``.

    python scripts/bench_canary.py --seconds 600 [--sweep 20] [--json out.json]

Goal (issue 15): canaries take <= 0.5% of the GPU's time at defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_daemon import canary_seconds
from benchlib import machine, start_daemon, stop_daemon, table

from watchdog.config.model import CanarySettings
from watchdog.control.client import ControlClient
from watchdog.probes.adapters import CanaryChoice
from watchdog.probes.openai import openai_canary_requests
from watchdog.sim.launch import Simulator

GOAL_PCT = 0.5
COUNTERS = ("llamacpp:prompt_seconds_total", "llamacpp:tokens_predicted_seconds_total",
            "llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total", "llamacpp:n_decode_total")
TIMING = re.compile(r"print_timing: .*?\|\s+(prompt eval|eval) time =\s+([0-9.]+) ms /\s+(\d+) tokens")
SHORT_PROMPT = "OK"


def counters(url: str) -> dict[str, float]:
    """The llama.cpp compute counters from ``/metrics``."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in COUNTERS:
            out[name] = float(value)
    missing = set(COUNTERS) - set(out)
    if missing:
        raise SystemExit(f"{url}/metrics lacks {sorted(missing)} (start llama-server with --metrics)")
    return out


def compute_seconds(before: dict[str, float], after: dict[str, float]) -> float:
    return sum(after[k] - before[k] for k in ("llamacpp:prompt_seconds_total",
                                               "llamacpp:tokens_predicted_seconds_total"))


def llama_log_timings(log: Path, offset: int) -> list[dict[str, float]]:
    """Each finished request's prompt and decode time from llama-server's log after ``offset``."""
    requests: list[dict[str, float]] = []
    pending: dict[str, float] = {}
    with open(log, "rb") as fh:
        fh.seek(offset)
        for raw in fh:
            m = TIMING.search(raw.decode("utf-8", "replace"))
            if not m:
                continue
            if m.group(1) == "prompt eval":
                pending = {"prompt_ms": float(m.group(2)), "prompt_n": int(m.group(3))}
            elif pending:
                requests.append(pending | {"eval_ms": float(m.group(2)), "eval_n": int(m.group(3))})
                pending = {}
    return requests


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


# --------------------------------------------------------------------------- the servers and the daemon

class LlamaServer:
    """One ``llama-server`` for the bench (the tests' fixture needs pytest; a GPU host may not have it)."""

    def __init__(self, binary: Path, model: Path, workdir: Path, extra: list[str], threads: int) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.binary, self.model, self.log_path = binary, model, workdir / "llama-server.log"
        self.args = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                     "--metrics", "--slots", "-np", "2", "-c", "2048", "-t", str(threads), *extra]
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(binary.parent), env.get("LD_LIBRARY_PATH")) if p)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=workdir, start_new_session=True)
        deadline = time.monotonic() + 600  # a big model on a GPU loads for a while
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"llama-server exited: {self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise SystemExit(f"llama-server not healthy in time; see {self.log_path}")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_llama(args: argparse.Namespace, work: Path) -> LlamaServer:
    """The given binary and model, or the tests' cached CPU build and tiny model."""
    if args.llama_server and args.model:
        binary, model = Path(args.llama_server), Path(args.model)
    else:
        from tests.infra.llamacpp import server_binary, tiny_model_file

        binary = Path(args.llama_server) if args.llama_server else server_binary()
        model = Path(args.model) if args.model else tiny_model_file()
    return LlamaServer(binary, model, work, shlex.split(args.server_args), args.threads)


def start_watchdog(work: Path, targets: list[tuple[str, str, str]], gpu_backend: str) -> tuple[subprocess.Popen, ControlClient]:
    lines = ["[watchdog]", f'state_dir = "{work / "state"}"', f'control_socket = "{work / "control.sock"}"',
             f'gpu_backend = "{gpu_backend}"', 'log_format = "json"', "[policy]", 'mode = "observe"']
    for name, kind, url in targets:
        lines += ["[[targets]]", f'name = "{name}"', f'kind = "{kind}"', f'url = "{url}"']
    config = work / "watchdog.toml"
    config.write_text("\n".join(lines) + "\n")
    return start_daemon(config, work)


# --------------------------------------------------------------------------- the sweep

def one_canary(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send one canary as the daemon would (streamed) and return the server's ``timings``."""
    timings: dict[str, Any] = {}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if '"timings"' in line:
                timings = json.loads(line.split(":", 1)[1]).get("timings", timings)
    if not timings:
        raise SystemExit("the server's stream carried no timings")
    return timings


def sweep(url: str, runs: int) -> list[dict[str, Any]]:
    rows = []
    default_prompt = CanarySettings().prompt
    for cache in (True, False):
        for prompt in (default_prompt, SHORT_PROMPT):
            for max_tokens in (1, 2, 4, 8):
                body = openai_canary_requests(CanaryChoice(None), prompt, max_tokens)[0].body
                body = dict(body, cache_prompt=cache)
                one_canary(url, body)  # warm: the cached case starts from a cached prompt
                got = [one_canary(url, body) for _ in range(runs)]
                prompt_ms = median([t["prompt_ms"] for t in got])
                predicted_ms = median([t["predicted_ms"] for t in got])
                rows.append({"cache_prompt": cache, "prompt": prompt, "max_tokens": max_tokens,
                             "prompt_n": median([t["prompt_n"] for t in got]),
                             "cache_n": median([t.get("cache_n", 0) for t in got]),
                             "predicted_n": median([t["predicted_n"] for t in got]),
                             "prompt_ms": round(prompt_ms, 2), "predicted_ms": round(predicted_ms, 2),
                             "compute_ms": round(prompt_ms + predicted_ms, 2), "runs": runs})
    return rows


# --------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0, help="the measured window")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds before measuring (first canaries)")
    parser.add_argument("--targets", default="llama,sim-llamacpp,sim-ollama")
    parser.add_argument("--llama-server", default=None, help="llama-server binary (default: the tests' cached build)")
    parser.add_argument("--model", default=None, help="GGUF to serve (default: the tests' tiny model)")
    parser.add_argument("--server-args", default="", help='more llama-server arguments, e.g. "-ngl 99"')
    parser.add_argument("--threads", type=int, default=1, help="llama-server -t")
    parser.add_argument("--gpu-backend", default="none", help="the daemon's gpu_backend (auto on a GPU host)")
    parser.add_argument("--sweep", type=int, default=0, metavar="N", help="then N canaries of each shape")
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args()
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    started = datetime.now(UTC)
    host = machine()
    work = Path(tempfile.mkdtemp(prefix="iw-bench-canary-"))
    llama = None
    sims: dict[str, Simulator] = {}
    daemon = None
    result: dict[str, Any] = {"benchmark": "canary cost", "date": started.isoformat(timespec="seconds"),
                              "machine": host, "canary": CanarySettings().model_dump(), "targets": {}}
    try:
        targets: list[tuple[str, str, str]] = []
        if "llama" in wanted:
            (work / "llama").mkdir()
            llama = start_llama(args, work / "llama")
            targets.append(("llama", "llamacpp", llama.url))
            result["llama_server"] = {"binary": str(llama.binary), "model": str(llama.model),
                                      "model_bytes": llama.model.stat().st_size, "args": llama.args[1:]}
        for name in ("sim-llamacpp", "sim-ollama"):
            if name in wanted:
                kind = name.removeprefix("sim-")
                sim = Simulator(kind, gpu_dir=work / "gpu", log_path=work / f"{name}.log", workdir=work).start()
                sims[name] = sim
                targets.append((name, kind, sim.url))
                if kind == "ollama":  # a model held loaded, so canaries go out
                    httpx.post(f"{sim.url}/api/generate", json={"model": sim.model, "prompt": "hi", "stream": False,
                                                                 "keep_alive": -1}, timeout=60)
        daemon, client = start_watchdog(work, targets, args.gpu_backend)
        time.sleep(args.settle)
        before: dict[str, Any] = {}
        for name, kind, url in targets:
            if kind == "llamacpp":
                before[name] = counters(url)
        offsets = {name: sim.log_path.stat().st_size for name, sim in sims.items()}
        llama_offset = llama.log_path.stat().st_size if llama is not None else 0
        t0 = time.monotonic()
        time.sleep(args.seconds)
        window = time.monotonic() - t0
        after = {name: counters(url) for name, kind, url in targets if kind == "llamacpp"}
        status = client.status()
        stop_daemon(daemon)
        daemon = None
        rows = []
        for name, kind, _ in targets:
            entry: dict[str, Any] = {"kind": kind}
            t = status.target(name)
            entry["last_canary_ok"] = None if t is None or t.last_canary is None else t.last_canary.ok
            if kind == "llamacpp":
                busy = compute_seconds(before[name], after[name])
                delta = {k: round(after[name][k] - before[name][k], 6) for k in COUNTERS}
                entry |= {"compute_seconds": round(busy, 4), "share_pct": round(100 * busy / window, 4),
                          "counters_delta": delta,
                          "method": "growth of llamacpp:prompt_seconds_total + tokens_predicted_seconds_total "
                                    "over the window, over the window"}
                if name == "llama":
                    per = llama_log_timings(llama.log_path, llama_offset)
                    entry |= {"canaries": len(per),
                              "per_canary_ms": {"prompt": round(median([p["prompt_ms"] for p in per]), 2),
                                                "decode": round(median([p["eval_ms"] for p in per]), 2),
                                                "total": round(median([p["prompt_ms"] + p["eval_ms"] for p in per]), 2)},
                              "prompt_tokens_median": median([p["prompt_n"] for p in per]),
                              "prompt_tokens_max": max((p["prompt_n"] for p in per), default=0)}
                else:
                    n = round(delta["llamacpp:tokens_predicted_total"] / CanarySettings().max_tokens)
                    entry |= {"canaries": n, "per_canary_ms": {"total": round(1000 * busy / n, 1) if n else None}}
            else:
                busy, n = canary_seconds(sims[name].log_path, offsets[name])
                entry |= {"canaries": n, "request_seconds": round(busy, 3), "share_pct": round(100 * busy / window, 4),
                          "per_canary_ms": {"total": round(1000 * busy / n, 1) if n else None},
                          "method": "access-log duration (request to last byte) of every generation request, "
                                    "summed, over the window: an upper bound of compute time"}
            result["targets"][name] = entry
            share = entry["share_pct"]
            every = window / entry["canaries"] if entry["canaries"] else float("nan")
            value = (f"{share:.3f}% ({entry['canaries']} canaries, one every {every:.1f} s, "
                     f"{entry['per_canary_ms']['total']} ms each)")
            rows.append((f"{name}: canary share", value, f"<= {GOAL_PCT}%",
                         "yes" if share <= GOAL_PCT else f"no (+{share - GOAL_PCT:.2f} points)"))
        result |= {"seconds": round(window, 1), "loadavg_end": os.getloadavg(), "goal_pct": GOAL_PCT}
        print(f"daemon at defaults, {window:.0f} s measured after {args.settle:.0f} s settling:")
        print(table(rows))
        if llama is not None and args.sweep:
            result["sweep"] = sweep(llama.url, args.sweep)
            print(f"\nreal llama-server, {args.sweep} canaries per shape (median of timings):")
            head = ("cache_prompt", "prompt", "max_tokens", "prompt_n", "prompt_ms", "predicted_ms", "compute_ms")
            print(" | ".join(head))
            for r in result["sweep"]:
                print(" | ".join(str(r[k]) for k in head))
    finally:
        if daemon is not None:
            stop_daemon(daemon)
        for sim in sims.values():
            sim.stop()
        if llama is not None:
            llama.close()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
