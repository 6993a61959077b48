"""Truncation: prompts that do not fit the context window, cut short or turned away.

Ollama cuts a prompt that is longer than its context (2048 tokens by default in
many versions) and answers normally, only worse: its log is the only trace
(``msg="truncating input prompt" limit=4096 prompt=7268 keep=4 new=4096``).
llama.cpp's server and vLLM refuse such a request with HTTP 400 and say so in
their logs. Raised once, on the first such line, with the model, the context,
the longest prompt seen, how often it happened in the last hour, what to change
and the extra GPU memory that needs where it can be estimated; cleared after
``truncation_clear_after`` without another.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

from watchdog.detect.base import TargetDetector, Verdict, clear, raise_
from watchdog.detect.view import gib, secs
from watchdog.trace.records import Canary, Event, LogLine, Record, ServerPoll

HOUR = 3600.0
#: Rough KV cache per 1,000 tokens of context as a fraction of the model's size: about right for
#: 7-14B models with grouped-query attention and an f16 cache; only used when the log says nothing.
KV_FRACTION_PER_1K = 0.025


@dataclass(frozen=True, slots=True)
class Cut:
    """One prompt cut or refused: the context it met and its length (tokens), where the line says."""

    action: str  # "truncated" or "rejected"
    context: int | None
    prompt: int | None


_OLLAMA = re.compile(r"truncating input prompt", re.I)
_KV = re.compile(r"\b(limit|prompt|new|keep)=(\d+)")
_LLAMA_NEW = re.compile(r"request \((\d+) tokens\) exceeds the available context size \((\d+) tokens\)", re.I)
_LLAMA_OLD = re.compile(r"exceeds the available context size", re.I)
_LLAMA_TRUNCATED = re.compile(r"input truncated, n_ctx = (\d+).*n_prompt_tokens = (\d+)", re.I)
_VLLM_MAX = re.compile(r"maximum context length is (\d+) tokens", re.I)
_VLLM_PROMPT = tuple(re.compile(p, re.I) for p in (
    r"\((\d+) in the messages", r"(\d+) in the prompt", r"prompt contains at least (\d+)",
    r"request has (\d+) input tokens", r"you requested (\d+) tokens"))  # most precise first
_VLLM_DECODER = re.compile(r"prompt \(length (\d+)\) is longer than the maximum model length of (\d+)", re.I)
_KV_SIZE = re.compile(r"llama_kv_cache\w*:\s+size\s*=\s*([\d.]+) MiB \(\s*(\d+) cells", re.I)


def parse_cut(line: str) -> Cut | None:
    """What a log line says about a prompt that did not fit, or None if it says nothing of the kind."""
    if _OLLAMA.search(line):
        values = {k: int(v) for k, v in _KV.findall(line)}
        return Cut("truncated", values.get("limit"), values.get("prompt"))
    if m := _LLAMA_NEW.search(line):
        return Cut("rejected", int(m.group(2)), int(m.group(1)))
    if m := _LLAMA_TRUNCATED.search(line):
        return Cut("truncated", int(m.group(1)), int(m.group(2)))
    if _LLAMA_OLD.search(line):
        return Cut("rejected", None, None)
    if m := _VLLM_DECODER.search(line):
        return Cut("rejected", int(m.group(2)), int(m.group(1)))
    if m := _VLLM_MAX.search(line):
        found = (p.search(line) for p in _VLLM_PROMPT)
        length = next((int(m.group(1)) for m in found if m), None)
        return Cut("rejected", int(m.group(1)), length)
    return None


def kv_mib_per_token(line: str) -> float | None:
    """llama.cpp's (and Ollama's runner's) KV cache size line: MiB per token of context."""
    m = _KV_SIZE.search(line)
    if m is None or int(m.group(2)) <= 0:
        return None
    return float(m.group(1)) / int(m.group(2))


def suggested_context(prompt: int) -> int:
    """The next power of two that holds the prompt and room for an answer."""
    return 1 << max(11, math.ceil(math.log2(prompt + 512)))


class TruncationDetector(TargetDetector):
    finding = "truncation"
    wants = (LogLine, ServerPoll, Canary, Event)

    def __init__(self, view) -> None:  # type: ignore[no-untyped-def]
        super().__init__(view)
        self.cuts: deque[tuple[float, Cut]] = deque()
        self.last_t: float | None = None
        self.kv_per_token: float | None = None

    def observe(self, record: Record) -> Verdict | None:
        t = self.view.now
        if isinstance(record, Event) and record.event == "restart_finished":
            self.kv_per_token = None
        if isinstance(record, LogLine):
            per_token = kv_mib_per_token(record.line)
            if per_token is not None:
                self.kv_per_token = per_token
                return None
            cut = parse_cut(record.line)
            if cut is not None:
                return self._take(t, cut)
        while self.cuts and self.cuts[0][0] < t - HOUR:
            self.cuts.popleft()
        if self.active and self.last_t is not None and t - self.last_t >= self.settings.truncation_clear_after:
            return clear(f"no prompt cut or refused for {secs(t - self.last_t)}")
        return None

    def _take(self, t: float, cut: Cut) -> Verdict | None:
        self.cuts.append((t, cut))
        self.last_t = t
        while self.cuts and self.cuts[0][0] < t - HOUR:
            self.cuts.popleft()
        if self.active:
            return None  # raised once, not once per line; the count is in the next summary
        return self._verdict(cut)

    def _verdict(self, cut: Cut) -> Verdict:
        view = self.view
        kind = view.profile.kind
        contexts = [c.context for _, c in self.cuts if c.context]
        prompts = [c.prompt for _, c in self.cuts if c.prompt]
        context = cut.context or (max(contexts) if contexts else None)
        longest = max(prompts) if prompts else None
        models = list(view.models)
        model = models[0] if len(models) == 1 else None
        count = len(self.cuts)
        need = suggested_context(longest) if longest else None
        change = _what_to_change(kind, need)
        extra_mib, how = self._extra_vram(context, need, model)
        what = "cut to fit" if cut.action == "truncated" else "refused as too long for"
        sizes = ""
        if longest and context:
            sizes = f" ({longest} tokens against a context of {context})"
        elif context:
            sizes = f" (context {context} tokens)"
        who = f" for {model}" if model else ""
        cost = f"; that needs about {gib(extra_mib)} more GPU memory ({how})" if extra_mib else ""
        summary = (f"prompts{who} are {what} the context window{sizes}: {count} in the last hour; {change}{cost}")
        return raise_(summary, model=model, models=models or None, action=cut.action, context_tokens=context,
                      prompt_tokens=longest, count_last_hour=count, suggested_context=need, change=change,
                      extra_vram_mib=round(extra_mib) if extra_mib else None, extra_vram_basis=how or None)

    def _extra_vram(self, context: int | None, need: int | None, model: str | None) -> tuple[float | None, str]:
        if not context or not need or need <= context:
            return None, ""
        if self.kv_per_token:
            return (need - context) * self.kv_per_token, "from the KV cache size in the server's log"
        if self.view.profile.kind == "vllm":
            return None, ""  # vLLM sizes its KV cache up front: a longer context costs concurrency, not memory
        size = self.view.model_vram.get(model) if model else None
        if size:
            return size * KV_FRACTION_PER_1K * (need - context) / 1000.0, "rough, from the model's size"
        return None, ""


def _what_to_change(kind: str, need: int | None) -> str:
    n = str(need) if need else "N"
    if kind == "ollama":
        return (f"raise the context: OLLAMA_CONTEXT_LENGTH={n} (OLLAMA_NUM_CTX in older setups) for the server, "
                f'or "num_ctx": {n} in the request\'s options or PARAMETER num_ctx {n} in the Modelfile')
    if kind == "llamacpp":
        return f"start llama-server with --ctx-size {n} (with --parallel P, each slot gets ctx-size/P)"
    if kind == "vllm":
        return f"start vLLM with --max-model-len {n} (at most the model's own maximum)"
    return f"raise the server's context window to at least {n} tokens"
