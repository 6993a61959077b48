"""Which log lines matter: the failure signatures of inference servers (pure).

Only lines that are evidence for a finding are passed on as ``LogLine``
records: out-of-memory errors (CUDA, PyTorch, llama.cpp, Ollama), NCCL errors
and watchdog timeouts, Ollama's unload and truncation warnings, prompts
refused for the context (llama.cpp, vLLM), the KV cache's size, dying
runners and engines, and the final line of a Python traceback (the one that
names the error). Each carries the name of the pattern that matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PATTERNS: tuple[tuple[str, str], ...] = (
    # Out of memory, in the words each stack uses.
    ("torch_oom", r"(?:torch\.(?:cuda\.)?)?OutOfMemoryError|CUDA out of memory"),
    ("cuda_malloc_failed", r"cudaMalloc failed"),
    ("cuda_buffer_alloc_failed", r"unable to allocate (?:CUDA|ROCm|Metal|Vulkan)\d* buffer"),
    ("cuda_oom", r"\bout of memory\b.*\b(?:CUDA|cuda|GPU|gpu|VRAM|vram)\b|\b(?:CUDA|cuda|GPU)\b.*\bout of memory\b"),
    ("cublas_alloc_failed", r"CUBLAS_STATUS_ALLOC_FAILED"),
    ("cuda_error", r"CUDA error\b|cudaError\w*|CUDA_ERROR_\w+|an illegal memory access was encountered"),
    # NCCL: errors and the process group watchdog's collective timeout.
    ("nccl_timeout", r"Watchdog caught collective operation timeout|NCCL[^\n]*timed? ?out"),
    ("nccl_error", r"NCCL (?:error|WARN)|nccl\w*Error|ncclUnhandledCudaError|ncclSystemError|ncclInternalError"),
    # Ollama's scheduler and runners.
    ("vram_not_recovered", r"gpu VRAM usage didn't recover within timeout"),
    ("runner_terminated", r"llama runner process has terminated|llama runner process no longer running"),
    ("prompt_truncated", r"truncating input prompt"),
    # Prompts longer than the context, refused (llama.cpp, vLLM) or cut (older llama.cpp).
    ("context_exceeded", r"exceeds the available context size|maximum context length is \d+ tokens"
                         r"|is longer than the maximum model length|input truncated, n_ctx"),
    # The KV cache's size per token of context: what a longer context costs (llama.cpp, Ollama).
    ("kv_cache_size", r"llama_kv_cache\w*:\s+size\s*=\s*[\d.]+ MiB \(\s*\d+ cells"),
    # vLLM's engine.
    ("engine_dead", r"EngineDeadError|AsyncEngineDeadError|Engine loop has died|engine core .*died"),
    # Crashes.
    ("crash", r"Segmentation fault|SIGSEGV|SIGABRT|core dumped|^panic: |fatal error: "),
)
_COMPILED = tuple((name, re.compile(pattern, re.IGNORECASE if name == "prompt_truncated" else 0))
                  for name, pattern in PATTERNS)
_TRACEBACK_START = re.compile(r"Traceback \(most recent call last\):")
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b(?::|$)")
_LOG_PREFIX = re.compile(
    r"^(?:\S+\s+\|\s+)?"  # docker compose "service | "
    r"(?:\(\w+(?: pid=\d+)?\)\s+)?"  # ray/vLLM "(EngineCore_0 pid=12)"
    r"(?:(?:ERROR|WARNING|INFO|DEBUG|CRITICAL)\s+\S+\s+\S+\s+\[[^\]]*\]\s+)?"  # vLLM "ERROR 06-01 10:00:00 [x.py:1] "
)


@dataclass(frozen=True, slots=True)
class Match:
    line: str
    pattern: str


class LogFilter:
    """Feed lines of one target's log in order; get back those that matter.

    Keeps a little state: after ``Traceback (most recent call last):`` the
    first unindented ``SomeError: ...`` line is the traceback's verdict.
    """

    def __init__(self, max_traceback_lines: int = 400) -> None:
        self._in_traceback = 0
        self.max_traceback_lines = max_traceback_lines

    def feed(self, line: str) -> Match | None:
        for name, pattern in _COMPILED:
            if pattern.search(line):
                if self._in_traceback and _EXCEPTION_LINE.match(_LOG_PREFIX.sub("", line)):
                    self._in_traceback = 0  # this line is the traceback's verdict too
                return Match(line, name)
        if _TRACEBACK_START.search(line):
            self._in_traceback = 1
            return None
        if self._in_traceback:
            self._in_traceback += 1
            body = _LOG_PREFIX.sub("", line)
            if _EXCEPTION_LINE.match(body):
                self._in_traceback = 0
                return Match(line, "exception")
            if self._in_traceback > self.max_traceback_lines:
                self._in_traceback = 0
        return None


def classify_line(line: str) -> str | None:
    """The name of the first pattern a single line matches (no traceback state)."""
    for name, pattern in _COMPILED:
        if pattern.search(line):
            return name
    return None
