"""``python -m watchdog.sim``: run one simulated inference server with its GPU.

Prints one JSON line ``{"event": "ready", "url": ..., "pid": ...}`` on stdout
once it listens, so callers wait on that instead of sleeping.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from watchdog.sim.config import (
    DEFAULT_MODELS,
    DEFAULT_PORTS,
    DEFAULT_SIZES_MIB,
    KINDS,
    GpuDevice,
    SimConfig,
    default_gpu_dir,
    parse_model,
)
from watchdog.sim.engine import SimError
from watchdog.sim.faults import CATALOGUE, FaultError, parse_cli_fault, validate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m watchdog.sim",
        description="A simulated Ollama / vLLM / llama.cpp server with a simulated GPU and fault injection.",
        epilog="faults: " + ", ".join(sorted(CATALOGUE)) + ". Control API: POST /_sim/fault "
               '{"fault": NAME, ...params}, GET /_sim/state.')
    p.add_argument("--kind", choices=KINDS, default="ollama", help="server flavour (default ollama)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None,
                   help="listen port; 0 picks a free one (default: the flavour's usual port)")
    p.add_argument("--model", action="append", default=[], metavar="NAME[=SIZE_MIB]",
                   help="a model the server knows (repeatable; the first is the default)")
    p.add_argument("--model-size-mib", type=float, default=None,
                   help="GPU memory of a model without =SIZE_MIB")
    p.add_argument("--load-time", type=float, default=0.3, metavar="S", help="seconds to load a model")
    p.add_argument("--decode-tps", type=float, default=40.0, help="tokens/s per request while decoding")
    p.add_argument("--prefill-tps", type=float, default=2000.0, help="prompt tokens/s while prefilling")
    p.add_argument("--response-tokens", type=int, default=24,
                   help="length of an answer when the request sets no limit")
    p.add_argument("--parallel", type=int, default=0,
                   help="requests served at once (default: ollama 4, vllm 256, llamacpp 4)")
    p.add_argument("--num-ctx", type=int, default=2048, help="Ollama's default context length")
    p.add_argument("--keep-alive", default="5m", help="Ollama's default keep_alive")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM's share of GPU memory")
    p.add_argument("--log-file", default=None, help="server log file (default: stderr)")
    p.add_argument("--stats-interval", type=float, default=10.0, help="seconds between vLLM stats lines")
    p.add_argument("--gpu-dir", default=None, help=f"GPU state directory (default {default_gpu_dir()})")
    p.add_argument("--gpu-index", type=int, action="append", default=[],
                   help="GPU index used (repeatable: the model is split across them; default 0)")
    p.add_argument("--gpu-name", default="Simulated NVIDIA A10G")
    p.add_argument("--gpu-mem-mib", type=float, default=23028.0, help="GPU total memory")
    p.add_argument("--gpu-base-mib", type=float, default=310.0,
                   help="memory in use that no process owns (driver, context)")
    p.add_argument("--instance", default="", help="name of the state file (default KIND-PID)")
    p.add_argument("--fault", action="append", default=[], metavar="NAME[:k=v,...]",
                   help="a fault active from the start (repeatable)")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop when the process that started this one dies (tests, the demo)")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    size = args.model_size_mib or DEFAULT_SIZES_MIB[args.kind]
    models = [parse_model(m, size) for m in args.model] or [parse_model(DEFAULT_MODELS[args.kind], size)]
    faults = []
    for text in args.fault:
        name, params = parse_cli_fault(text)
        validate(name, params, args.kind)
        faults.append((name, params))
    gpus = [GpuDevice(i, args.gpu_name, args.gpu_mem_mib, args.gpu_base_mib) for i in (args.gpu_index or [0])]
    return SimConfig(
        kind=args.kind, host=args.host, port=DEFAULT_PORTS[args.kind] if args.port is None else args.port,
        models=models, load_time_s=args.load_time, decode_tps=args.decode_tps,
        prefill_tps=args.prefill_tps, response_tokens=args.response_tokens, parallel=args.parallel,
        num_ctx=args.num_ctx, keep_alive=args.keep_alive,
        gpu_memory_utilization=args.gpu_memory_utilization, log_file=args.log_file,
        stats_interval_s=args.stats_interval, gpu_dir=args.gpu_dir or default_gpu_dir(), gpus=gpus,
        instance=args.instance, faults=faults)


async def _watch_parent(stop: asyncio.Event) -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    stop.set()


async def serve(cfg: SimConfig, exit_with_parent: bool = False) -> int:
    from watchdog.sim.server import SimServer, ready_line

    server = SimServer(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if exit_with_parent:
        loop.create_task(_watch_parent(stop))
    try:
        await server.start()
    except (SimError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        await server.stop()
        return 1
    print(ready_line(server), flush=True)
    await stop.wait()
    await server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except (FaultError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(cfg, args.exit_with_parent))


if __name__ == "__main__":
    sys.exit(main())
