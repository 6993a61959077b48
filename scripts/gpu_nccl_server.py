#!/usr/bin/env python3
"""A tensor-parallel pair on two GPUs, for scripts/gpu_validate.py --mode nccl.

Two torch processes joined by ``torch.distributed`` over NCCL, one rank per
GPU, like a vLLM tensor-parallel pair: rank 0 serves HTTP (vLLM's API: /health,
/v1/models, /metrics with vLLM's metric names, streaming /v1/completions and
/v1/chat/completions) and starts rank 1 as its child process, as vLLM's API
server starts its workers. Every engine step is real GPU work on both ranks
(matrix products) joined by an NCCL all-reduce; the control messages between
the ranks go over a CPU (gloo) group, so an idle pair is idle on the GPUs too.

- generation: one token per running request per engine step (a batch);
- ``POST /_toy/prefill?seconds=S``: a request with a long prompt whose prefill
  takes S seconds of chunks at full load before its first token; decoding of
  other requests waits for it (no chunked prefill). Every chunk is an engine
  step and adds its tokens to ``vllm:prompt_tokens_total``, so the step counter
  keeps moving while no token is generated;
- ``POST /_toy/stick``: rank 1 stops joining the collectives; rank 0's next
  all-reduce waits for it forever, its GPU spinning at 100%, while HTTP still
  answers and no counter moves: a stuck collective.

``vllm:iteration_tokens_total`` (a histogram of tokens per engine step) is
observed once per step, prefill chunks included, as vLLM V0 did; vLLM V1
observes only steps that produced output (see docs/gpu-validation.md).

NCCL's NVLink multicast stays off (NCCL_NVLS_ENABLE=0), on the shared hosts
where this runs.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

MODEL = "toy-tp2"
OP_STEP, OP_PREFILL, OP_LEAVE, OP_QUIT = 1, 2, 3, 4
PREFILL_CHUNK_TOKENS = 2048
BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Worker:
    """What both ranks do: hold the weights, run a step's products, join the all-reduce."""

    def __init__(self, rank: int, device: str, weights_mib: int, matrix: int) -> None:
        self.rank = rank
        if device == "cuda":
            torch.cuda.set_device(rank)
            self.device = torch.device("cuda", rank)
        else:
            self.device = torch.device("cpu")
        dtype = torch.float16 if device == "cuda" else torch.float32
        self.weights = torch.empty(weights_mib * 1024 * 1024, dtype=torch.uint8, device=self.device)
        self.a = torch.randn(matrix, matrix, device=self.device, dtype=dtype)
        self.b = torch.randn(matrix, matrix, device=self.device, dtype=dtype)

    def run(self, products: int) -> None:
        for _ in range(products):
            self.a = (self.a @ self.b).clamp_(-1, 1)
        shard = self.a[: max(1, self.a.shape[0] // 8)].contiguous()
        dist.all_reduce(shard)  # the tensor-parallel join: waits for the other rank
        self.a[: shard.shape[0]] = shard.clamp_(-1, 1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def control(op: int, arg: int, group: dist.ProcessGroup) -> tuple[int, int]:
    message = torch.tensor([op, arg], dtype=torch.int64)
    dist.broadcast(message, src=0, group=group)
    return int(message[0]), int(message[1])


def follower(worker: Worker, group: dist.ProcessGroup, decode_products: int, prefill_products: int) -> None:
    """Rank 1: do what rank 0 says, step by step, until told to leave or quit."""
    while True:
        op, _ = control(0, 0, group)
        if op == OP_STEP:
            worker.run(decode_products)
        elif op == OP_PREFILL:
            worker.run(prefill_products)
        elif op == OP_LEAVE:
            print("rank 1: no longer joining the collectives", file=sys.stderr, flush=True)
            while True:  # alive, holding its memory, never joining again
                time.sleep(3600)
        elif op == OP_QUIT:
            return


class Request:
    def __init__(self, max_tokens: int, prefill_s: float = 0.0) -> None:
        self.max_tokens = max_tokens
        self.prefill_left = prefill_s
        self.prefilled = prefill_s > 0  # its prompt tokens were counted chunk by chunk
        self.generated = 0
        self.out: queue.Queue[str | None] = queue.Queue()


class Engine:
    """Rank 0's scheduler: a batch of running requests, one engine step at a time."""

    def __init__(self, worker: Worker, group: dist.ProcessGroup, decode_products: int,
                 prefill_products: int, step_pause: float) -> None:
        self.worker, self.group = worker, group
        self.decode_products, self.prefill_products = decode_products, prefill_products
        self.step_pause = step_pause
        self.lock = threading.Condition()
        self.running: list[Request] = []
        self.generated = 0
        self.prompt_tokens = 0
        self.steps = 0
        self.step_tokens_sum = 0
        self.buckets = [0] * len(BUCKETS)
        self.stuck = False
        self.leave_sent = False
        threading.Thread(target=self._loop, daemon=True, name="engine").start()

    def submit(self, request: Request) -> None:
        with self.lock:
            self.running.append(request)
            self.lock.notify_all()

    def stick(self) -> None:
        with self.lock:
            self.stuck = True
            self.lock.notify_all()

    def _observe_step(self, tokens: int) -> None:
        self.steps += 1
        self.step_tokens_sum += tokens
        for i, bound in enumerate(BUCKETS):
            if tokens <= bound:
                self.buckets[i] += 1

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.running and not self.stuck:
                    self.lock.wait()
                prefilling = next((r for r in self.running if r.prefill_left > 0), None)
                stuck = self.stuck
            if stuck and not self.leave_sent:
                control(OP_LEAVE, 0, self.group)
                self.leave_sent = True
            if stuck:
                self.worker.run(self.decode_products)  # rank 1 never joins: blocks here for good
                continue
            started = time.monotonic()
            if prefilling is not None:
                control(OP_PREFILL, 0, self.group)
                self.worker.run(self.prefill_products)
                with self.lock:
                    prefilling.prefill_left -= time.monotonic() - started
                    self.prompt_tokens += PREFILL_CHUNK_TOKENS
                    self._observe_step(PREFILL_CHUNK_TOKENS)
                continue
            control(OP_STEP, 0, self.group)
            self.worker.run(self.decode_products)
            with self.lock:
                batch = list(self.running)
                for request in batch:
                    if request.generated == 0 and not request.prefilled:
                        self.prompt_tokens += 8  # counted when processed, as vLLM counts them
                    request.generated += 1
                    request.out.put("tok ")
                    if request.generated >= request.max_tokens:
                        request.out.put(None)
                        self.running.remove(request)
                self.generated += len(batch)
                self._observe_step(len(batch))
            if self.step_pause:
                time.sleep(self.step_pause)

    def metrics(self) -> str:
        with self.lock:
            label = f'model_name="{MODEL}"'
            prefilling = any(r.prefill_left > 0 for r in self.running)
            running = min(1, len(self.running)) if prefilling else len(self.running)
            waiting = len(self.running) - running
            lines = [
                "# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{{{label}}} {running}",
                "# TYPE vllm:num_requests_waiting gauge", f"vllm:num_requests_waiting{{{label}}} {waiting}",
                "# TYPE vllm:generation_tokens_total counter",
                f"vllm:generation_tokens_total{{{label}}} {self.generated}",
                "# TYPE vllm:prompt_tokens_total counter", f"vllm:prompt_tokens_total{{{label}}} {self.prompt_tokens}",
                "# TYPE vllm:iteration_tokens_total histogram",
            ]
            for bound, count in zip(BUCKETS, self.buckets, strict=True):
                lines.append(f'vllm:iteration_tokens_total_bucket{{{label},le="{float(bound)}"}} {count}')
            lines += [f'vllm:iteration_tokens_total_bucket{{{label},le="+Inf"}} {self.steps}',
                      f"vllm:iteration_tokens_total_count{{{label}}} {self.steps}",
                      f"vllm:iteration_tokens_total_sum{{{label}}} {self.step_tokens_sum}"]
        return "\n".join(lines) + "\n"


def make_handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            path = urlparse(self.path).path
            if path == "/health":
                self._send(200, b"{}")
            elif path == "/v1/models":
                data = [{"id": MODEL, "object": "model", "owned_by": "toy", "max_model_len": 131072}]
                self._send(200, json.dumps({"object": "list", "data": data}).encode())
            elif path == "/metrics":
                self._send(200, engine.metrics().encode(), "text/plain; version=0.0.4")
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            query = parse_qs(url.query)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            if url.path == "/_toy/stick":
                engine.stick()
                self._send(200, b'{"stuck": true}')
            elif url.path == "/_toy/prefill":
                request = Request(int(query.get("tokens", ["32"])[0]), float(query.get("seconds", ["90"])[0]))
                engine.submit(request)
                self._send(200, b'{"prefill": true}')
            elif url.path in ("/v1/completions", "/v1/chat/completions"):
                self._generate(url.path.endswith("chat/completions"), body)
            else:
                self._send(404, b'{"error": "not found"}')

        def _generate(self, chat: bool, body: dict) -> None:
            max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
            request = Request(max_tokens)
            engine.submit(request)
            stream = bool(body.get("stream"))
            try:
                if stream:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                text = []
                while (piece := request.out.get()) is not None:
                    text.append(piece)
                    if stream:
                        choice = {"index": 0, "finish_reason": None}
                        choice.update({"delta": {"content": piece}} if chat else {"text": piece})
                        self._chunk(f"data: {json.dumps({'id': 'x', 'object': 'x', 'model': MODEL, 'choices': [choice]})}\n\n")
                usage = {"prompt_tokens": 8, "completion_tokens": max_tokens, "total_tokens": 8 + max_tokens}
                if stream:
                    done = {"index": 0, "finish_reason": "length"}
                    done.update({"delta": {}} if chat else {"text": ""})
                    self._chunk(f"data: {json.dumps({'id': 'x', 'object': 'x', 'model': MODEL, 'choices': [done], 'usage': usage})}\n\n")
                    self._chunk("data: [DONE]\n\n")
                    self._chunk("")
                else:
                    message = {"index": 0, "finish_reason": "length"}
                    message.update({"message": {"role": "assistant", "content": "".join(text)}} if chat
                                   else {"text": "".join(text)})
                    out = {"id": "x", "object": "x", "model": MODEL, "choices": [message], "usage": usage}
                    self._send(200, json.dumps(out).encode())
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _chunk(self, text: str) -> None:
            data = text.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--master-port", type=int, default=0)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--weights-mib", type=int, default=8192, help="GPU memory each rank holds as its shard")
    parser.add_argument("--matrix", type=int, default=8192)
    parser.add_argument("--decode-products", type=int, default=4)
    parser.add_argument("--prefill-products", type=int, default=16)
    parser.add_argument("--step-pause", type=float, default=0.0, help="pause between decode steps (CPU dry runs)")
    args = parser.parse_args()
    backend = "nccl" if args.device == "cuda" else "gloo"
    child = None
    if args.rank == 0:
        if not args.master_port:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                args.master_port = s.getsockname()[1]
        child = subprocess.Popen([sys.executable, __file__, "--rank", "1", "--master-port", str(args.master_port),
                                  "--device", args.device, "--weights-mib", str(args.weights_mib),
                                  "--matrix", str(args.matrix), "--decode-products", str(args.decode_products),
                                  "--prefill-products", str(args.prefill_products)])
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{args.master_port}", world_size=2,
                            rank=args.rank, timeout=timedelta(hours=1))
    group = dist.new_group(backend="gloo", timeout=timedelta(hours=1))
    worker = Worker(args.rank, args.device, args.weights_mib, args.matrix)
    dist.barrier(group=group)
    worker.run(1)  # the first all-reduce sets NCCL up on both ranks
    if args.rank == 1:
        follower(worker, group, args.decode_products, args.prefill_products)
        return
    engine = Engine(worker, group, args.decode_products, args.prefill_products, args.step_pause)
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(engine))
    server.daemon_threads = True
    print(json.dumps({"event": "ready", "pid": os.getpid(), "rank1_pid": child.pid if child else None,
                      "port": args.port}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
