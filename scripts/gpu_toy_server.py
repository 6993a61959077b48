#!/usr/bin/env python3
"""A toy inference server on a real GPU, for scripts/gpu_validate.py.

It speaks enough of vLLM's HTTP API for the watchdog's vllm adapter
(/health, /v1/models, /metrics with vLLM's metric names, streaming
/v1/completions and /v1/chat/completions), and its "model" is real GPU memory
and real GPU work with torch:

- ``POST /_toy/load``: allocate the model in steps (memory rising at ~0% util);
- generation: each token is a burst of matrix products (high util);
- ``POST /_toy/unload?mode=clean``: drop the weights and ``empty_cache``;
  ``mode=leak``: drop them from the model list but keep a stray reference
  (the memory stays: a failed unload);
- ``POST /_toy/spawn_runner``: a child process that holds GPU memory and
  outlives this server if it is killed (an orphaned runner).

Standard library HTTP server plus torch; no other dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import torch

MODEL = "toy-6g"
MIB = 1024 * 1024


class Toy:
    def __init__(self, device: str, size_mib: int, steps: int, step_s: float, token_s: float = 0.0,
                 matrix: int = 8192, products: int = 8) -> None:
        self.device = device
        self.token_s = token_s
        self.products = products
        self.size_mib = size_mib
        self.steps = steps
        self.step_s = step_s
        self.weights: list[torch.Tensor] = []
        self.stray: list[torch.Tensor] = []
        self.loaded = False
        self.loading = False
        self.running = 0
        self.generated = 0
        self.prompt_tokens = 0
        self.lock = threading.Lock()
        self.gpu_lock = threading.Lock()
        self.runners: list[subprocess.Popen[bytes]] = []
        n = matrix
        self.a = torch.randn(n, n, device=device, dtype=torch.float16 if device != "cpu" else torch.float32)
        self.b = torch.randn(n, n, device=device, dtype=self.a.dtype)

    def load(self) -> None:
        with self.lock:
            if self.loaded or self.loading:
                return
            self.loading = True
        per_step = self.size_mib // self.steps
        weights = []
        for _ in range(self.steps):
            weights.append(torch.empty(per_step * MIB, dtype=torch.uint8, device=self.device))
            time.sleep(self.step_s)
        with self.lock:
            self.weights = weights
            self.loaded, self.loading = True, False

    def unload(self, leak: bool) -> None:
        with self.lock:
            if leak:
                self.stray.extend(self.weights)  # a reference someone forgot: the memory stays
            self.weights = []
            self.loaded = False
        if not leak and self.device != "cpu":
            torch.cuda.empty_cache()

    def token(self) -> None:
        with self.gpu_lock:
            for _ in range(self.products):  # compute-bound: a busy GPU while it generates
                self.a = (self.a @ self.b).clamp_(-1, 1)
            if self.device != "cpu":
                torch.cuda.synchronize()
        if self.token_s:
            time.sleep(self.token_s)
        with self.lock:
            self.generated += 1

    def spawn_runner(self, mib: int) -> int:
        code = (
            "import sys,time,torch\n"
            f"x=torch.empty({mib}*1024*1024,dtype=torch.uint8,device='{self.device}')\n"
            "print('ready',flush=True)\n"
            "while True: time.sleep(3600)\n"
        )
        runner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
        assert runner.stdout is not None
        runner.stdout.readline()
        self.runners.append(runner)
        return runner.pid


def make_handler(toy: Toy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: object) -> None:
            sys.stderr.write("toy: " + fmt % args + "\n")

        def _json(self, status: int, data: object) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}") if length else {}

        def do_GET(self) -> None:  # noqa: N802
            path = urlparse(self.path).path
            if path == "/health":
                self._json(200, {})
            elif path == "/v1/models":
                data = [{"id": MODEL, "object": "model", "owned_by": "toy"}] if toy.loaded else []
                self._json(200, {"object": "list", "data": data})
            elif path == "/metrics":
                text = (
                    "# TYPE vllm:num_requests_running gauge\n"
                    f'vllm:num_requests_running{{model_name="{MODEL}"}} {toy.running}\n'
                    "# TYPE vllm:num_requests_waiting gauge\n"
                    f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0\n'
                    "# TYPE vllm:generation_tokens_total counter\n"
                    f'vllm:generation_tokens_total{{model_name="{MODEL}"}} {toy.generated}\n'
                    "# TYPE vllm:prompt_tokens_total counter\n"
                    f'vllm:prompt_tokens_total{{model_name="{MODEL}"}} {toy.prompt_tokens}\n'
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path == "/_toy/load":
                threading.Thread(target=toy.load, daemon=True).start()
                self._json(200, {"loading": True})
            elif url.path == "/_toy/unload":
                toy.unload(leak=query.get("mode", ["clean"])[0] == "leak")
                self._json(200, {"unloaded": True})
            elif url.path == "/_toy/spawn_runner":
                pid = toy.spawn_runner(int(query.get("mib", ["2048"])[0]))
                self._json(200, {"pid": pid})
            elif url.path in ("/v1/completions", "/v1/chat/completions"):
                self._generate(url.path, self._body())
            else:
                self._json(404, {"error": "not found"})

        def _generate(self, path: str, body: dict) -> None:
            if not toy.loaded:
                self._json(503, {"error": {"message": "model not loaded", "code": 503}})
                return
            chat = path.endswith("chat/completions")
            max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
            stream = bool(body.get("stream"))
            with toy.lock:
                toy.running += 1
                toy.prompt_tokens += 8
            try:
                if stream:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                text = []
                for _i in range(max_tokens):
                    toy.token()
                    text.append("tok ")
                    if stream:
                        choice = {"index": 0, "finish_reason": None}
                        choice.update({"delta": {"content": "tok "}} if chat else {"text": "tok "})
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
                    self._json(200, {"id": "x", "object": "x", "model": MODEL, "choices": [message], "usage": usage})
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                with toy.lock:
                    toy.running -= 1

        def _chunk(self, text: str) -> None:
            data = text.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size-mib", type=int, default=6144)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--step-s", type=float, default=1.0)
    parser.add_argument("--matrix", type=int, default=8192, help="size of the matrices multiplied per token")
    parser.add_argument("--products", type=int, default=8, help="matrix products per token")
    parser.add_argument("--token-s", type=float, default=0.0, help="extra pause per token")
    args = parser.parse_args()
    toy = Toy(args.device, args.size_mib, args.steps, args.step_s, args.token_s, args.matrix, args.products)
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(toy))
    server.daemon_threads = True
    print(json.dumps({"event": "ready", "pid": os.getpid(), "port": args.port}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
