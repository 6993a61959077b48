"""A server log file in each flavour's own format, for the log probe to follow.

The lines mimic what Ollama (slog + gin), vLLM (its logger + uvicorn access
lines) and llama.cpp's server print, including the exact failure texts in
``/work/shared/notes/failure-signatures.md``: a log probe matching those texts
on a real server matches them here.
"""

from __future__ import annotations

import os
import sys
import threading
from datetime import datetime, timezone
from typing import TextIO

GIB = 1024.0


def _gib(mib: float) -> str:
    return f"{mib / GIB:.1f} GiB"


def torch_oom_text(device: int, tried_mib: float, total_mib: float, free_mib: float, pid: int,
                   used_mib: float, reserved_unallocated_mib: float) -> str:
    """PyTorch's CUDA out-of-memory message (torch 2.x), one line."""
    allocated = max(used_mib - reserved_unallocated_mib - 400.0, 0.0)
    return (
        f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {tried_mib / GIB:.2f} GiB. "
        f"GPU {device} has a total capacity of {total_mib / GIB:.2f} GiB of which "
        f"{free_mib / GIB:.2f} GiB is free. Process {pid} has {used_mib / GIB:.2f} GiB memory in use. "
        f"Of the allocated memory {allocated / GIB:.2f} GiB is allocated by PyTorch, and "
        f"{reserved_unallocated_mib / GIB:.2f} GiB is reserved by PyTorch but unallocated. "
        "If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  "
        "See documentation for Memory Management  "
        "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
    )


def nccl_timeout_line(seq: int, ran_ms: int, timeout_ms: int, rank: int = 0) -> str:
    """The PyTorch NCCL process-group watchdog line after a collective timed out."""
    now = datetime.now()
    stamp = now.strftime("%m%d %H:%M:%S") + f".{now.microsecond:06d}"
    return (
        f"[rank{rank}]:[E{stamp} ProcessGroupNCCL.cpp:632] [Rank {rank}] Watchdog caught collective "
        f"operation timeout: WorkNCCL(SeqNum={seq}, OpType=ALLREDUCE, NumelIn=4194304, "
        f"NumelOut=4194304, Timeout(ms)={timeout_ms}) ran for {ran_ms} milliseconds before timing out."
    )


class ServerLog:
    """Appends lines to a file (or stderr), flushed at once so a follower sees them."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stream: TextIO
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._stream = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        else:
            self._stream = sys.stderr

    def line(self, text: str) -> None:
        with self._lock:
            try:
                self._stream.write(text + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # a full disk or a closed stderr must not take the server down

    def close(self) -> None:
        if self.path:
            self._stream.close()

    # -- what every flavour reports; subclasses give the format -------------------------------
    def info(self, msg: str, source: str = "server.go:1", **kv: object) -> None:
        raise NotImplementedError

    def warning(self, msg: str, source: str = "server.go:1", **kv: object) -> None:
        raise NotImplementedError

    def error(self, msg: str, source: str = "server.go:1", **kv: object) -> None:
        raise NotImplementedError

    def access(self, method: str, path: str, status: int, seconds: float, remote: str) -> None:
        raise NotImplementedError

    def listening(self, url: str) -> None:
        raise NotImplementedError

    def load_started(self, model: str, size_mib: float) -> None:
        raise NotImplementedError

    def load_done(self, model: str, seconds: float) -> None:
        raise NotImplementedError

    def oom(self, text_lines: list[str]) -> None:
        for text in text_lines:
            self.error(text)

    def stats(self, prompt_tps: float, gen_tps: float, running: int, waiting: int,
              kv_usage: float) -> None:
        """Periodic engine statistics (vLLM prints these; others print nothing)."""


class OllamaLog(ServerLog):
    """Ollama's slog lines (``time=... level=INFO source=... msg=...``) and gin access lines."""

    def _slog(self, level: str, source: str, msg: str, kv: dict[str, object]) -> None:
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        parts = [f"time={stamp}", f"level={level}", f"source={source}", f"msg={_quote(msg)}"]
        parts += [f"{key.replace('__', '.')}={_quote(value)}" for key, value in kv.items()]
        self.line(" ".join(parts))

    def info(self, msg: str, source: str = "server.go:1", **kv: object) -> None:
        self._slog("INFO", source, msg, kv)

    def warning(self, msg: str, source: str = "server.go:1", **kv: object) -> None:
        self._slog("WARN", source, msg, kv)

    def error(self, msg: str, source: str = "server.go:1", **kv: object) -> None:
        self._slog("ERROR", source, msg, kv)

    def access(self, method: str, path: str, status: int, seconds: float, remote: str) -> None:
        stamp = datetime.now().strftime("%Y/%m/%d - %H:%M:%S")
        self.line(f"[GIN] {stamp} | {status:3d} | {_gin_duration(seconds):>13} | {remote:>15} | "
                  f"{method:<7} \"{path}\"")

    def listening(self, url: str) -> None:
        host = url.split("://", 1)[-1]
        self.info("Listening on " + host + " (version 0.12.6)", source="routes.go:1331")

    def load_started(self, model: str, size_mib: float) -> None:
        self.info("starting llama server", source="server.go:399",
                  cmd=f"ollama runner --model {model} --port 0")

    def load_done(self, model: str, seconds: float) -> None:
        self.info(f"llama runner started in {seconds:.2f} seconds", source="server.go:637")

    def oom(self, text_lines: list[str]) -> None:
        for text in text_lines:
            self.line(text)


class VllmLog(ServerLog):
    """vLLM's logger (``INFO 11-23 10:46:00 [file.py:123] msg``) and uvicorn's access lines."""

    def _log(self, level: str, source: str, msg: str) -> None:
        stamp = datetime.now().strftime("%m-%d %H:%M:%S")
        self.line(f"{level} {stamp} [{source}] {msg}")

    def info(self, msg: str, source: str = "api_server.py:1", **kv: object) -> None:
        self._log("INFO", source, msg + _kv_suffix(kv))

    def warning(self, msg: str, source: str = "api_server.py:1", **kv: object) -> None:
        self._log("WARNING", source, msg + _kv_suffix(kv))

    def error(self, msg: str, source: str = "core.py:1", **kv: object) -> None:
        self._log("ERROR", source, msg + _kv_suffix(kv))

    def access(self, method: str, path: str, status: int, seconds: float, remote: str) -> None:
        from http import HTTPStatus

        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        self.line(f"INFO:     {remote}:{40000 + os.getpid() % 20000} - \"{method} {path} HTTP/1.1\" "
                  f"{status} {phrase}")

    def listening(self, url: str) -> None:
        self.info(f"Starting vLLM API server 0 on {url}", source="launcher.py:29")
        self.line("INFO:     Started server process [%d]" % os.getpid())
        self.line("INFO:     Waiting for application startup.")
        self.line("INFO:     Application startup complete.")

    def load_started(self, model: str, size_mib: float) -> None:
        self.info(f"Starting to load model {model}...", source="gpu_model_runner.py:1770")

    def load_done(self, model: str, seconds: float) -> None:
        self.info(f"Model loading took {seconds:.4f} seconds", source="gpu_model_runner.py:1801")

    def oom(self, text_lines: list[str]) -> None:
        self.error("EngineCore encountered a fatal error.", source="core.py:711")
        self.line("Traceback (most recent call last):")
        self.line('  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py", '
                  "line 702, in run_engine_core")
        for text in text_lines:
            self.line(text)

    def stats(self, prompt_tps: float, gen_tps: float, running: int, waiting: int,
              kv_usage: float) -> None:
        self.info(f"Engine 000: Avg prompt throughput: {prompt_tps:.1f} tokens/s, "
                  f"Avg generation throughput: {gen_tps:.1f} tokens/s, Running: {running} reqs, "
                  f"Waiting: {waiting} reqs, GPU KV cache usage: {kv_usage * 100:.1f}%, "
                  "Prefix cache hit rate: 0.0%", source="loggers.py:123")


class LlamaCppLog(ServerLog):
    """llama.cpp's server lines (``srv  func: msg``, ``slot func: id N | task M | ...``)."""

    def info(self, msg: str, source: str = "srv  ", **kv: object) -> None:
        self.line(f"{source} {msg}{_kv_suffix(kv)}")

    def warning(self, msg: str, source: str = "srv  ", **kv: object) -> None:
        self.line(f"{source} warning: {msg}{_kv_suffix(kv)}")

    def error(self, msg: str, source: str = "srv  ", **kv: object) -> None:
        self.line(f"{source} error: {msg}{_kv_suffix(kv)}")

    def access(self, method: str, path: str, status: int, seconds: float, remote: str) -> None:
        self.line(f"srv  log_server_r: request: {method} {path} {remote} {status}")

    def listening(self, url: str) -> None:
        self.line(f"main: server is listening on {url} - starting the main loop")

    def load_started(self, model: str, size_mib: float) -> None:
        self.line(f"llama_model_loader: loaded meta data from {model}")
        self.line(f"load_tensors: offloaded all layers to GPU, CUDA0 model buffer size = "
                  f"{size_mib:.2f} MiB")

    def load_done(self, model: str, seconds: float) -> None:
        self.line("main: model loaded")
        self.line("srv  update_slots: all slots are idle")

    def oom(self, text_lines: list[str]) -> None:
        for text in text_lines:
            self.line(text)


def make_log(kind: str, path: str | None) -> ServerLog:
    return {"ollama": OllamaLog, "vllm": VllmLog, "llamacpp": LlamaCppLog}[kind](path)


def _quote(value: object) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "._-/:" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _kv_suffix(kv: dict[str, object]) -> str:
    return "".join(f", {key}={value}" for key, value in kv.items())


def _gin_duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.6f}ms"
    if seconds < 60:
        return f"{seconds:.9f}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.9f}s"
