"""What one simulator instance is: its flavour, models, timing and GPU(s)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("ollama", "vllm", "llamacpp")

DEFAULT_PORTS = {"ollama": 11434, "vllm": 8000, "llamacpp": 8080}
DEFAULT_MODELS = {
    "ollama": "llama3.2:1b",
    "vllm": "Qwen/Qwen2.5-0.5B-Instruct",
    "llamacpp": "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
}
#: Weights (and, for Ollama and llama.cpp, the default context) in MiB.
DEFAULT_SIZES_MIB = {"ollama": 2600.0, "vllm": 950.0, "llamacpp": 900.0}
#: Requests served at once: OLLAMA_NUM_PARALLEL, vLLM's max_num_seqs, llama.cpp's --parallel.
DEFAULT_PARALLEL = {"ollama": 4, "vllm": 256, "llamacpp": 4}
GPU_DIR_ENV = "WATCHDOG_SIM_GPU_DIR"


def default_gpu_dir() -> str:
    return os.environ.get(GPU_DIR_ENV) or str(Path(tempfile.gettempdir()) / "watchdog-sim-gpu")


@dataclass(frozen=True)
class ModelSpec:
    """A model the server knows (Ollama: pulled; vLLM / llama.cpp: the one served)."""

    name: str
    size_mib: float

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def family(self) -> str:
        lowered = self.name.lower()
        for family in ("llama", "qwen2", "qwen", "mistral", "gemma", "phi"):
            if family in lowered:
                return family
        return "llama"

    @property
    def parameter_size(self) -> str:
        return f"{self.size_mib / 1024 * 1.6:.1f}B"


def parse_model(text: str, default_size_mib: float) -> ModelSpec:
    """``NAME`` or ``NAME=SIZE_MIB`` (``=`` because Ollama names contain ``:``)."""
    name, sep, size = text.rpartition("=")
    if not sep:
        return ModelSpec(text, default_size_mib)
    return ModelSpec(name, float(size))


@dataclass
class GpuDevice:
    index: int
    name: str = "Simulated NVIDIA A10G"
    mem_total_mib: float = 23028.0
    base_used_mib: float = 310.0

    @property
    def uuid(self) -> str:
        return f"GPU-sim-{self.index}"


@dataclass
class SimConfig:
    kind: str = "ollama"
    host: str = "127.0.0.1"
    port: int = 0
    models: list[ModelSpec] = field(default_factory=list)
    load_time_s: float = 0.3
    decode_tps: float = 40.0
    prefill_tps: float = 2000.0
    response_tokens: int = 24
    parallel: int = 0
    num_ctx: int = 2048
    keep_alive: str = "5m"
    gpu_memory_utilization: float = 0.9
    log_file: str | None = None
    stats_interval_s: float = 10.0
    gpu_dir: str = field(default_factory=default_gpu_dir)
    gpus: list[GpuDevice] = field(default_factory=lambda: [GpuDevice(0)])
    instance: str = ""
    faults: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not self.models:
            self.models = [ModelSpec(DEFAULT_MODELS[self.kind], DEFAULT_SIZES_MIB[self.kind])]
        if self.parallel <= 0:
            self.parallel = DEFAULT_PARALLEL[self.kind]
        if not self.instance:
            self.instance = f"{self.kind}-{os.getpid()}"
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        for rate, label in ((self.decode_tps, "decode rate"), (self.prefill_tps, "prefill rate")):
            if rate <= 0:
                raise ValueError(f"{label} must be positive")

    @property
    def gpu_state_path(self) -> Path:
        return Path(self.gpu_dir) / f"{self.instance}.json"
