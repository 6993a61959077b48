"""What the detectors know about a target before any observation: its kind, GPUs, thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field

from watchdog.config.model import DetectSettings

#: Server kinds whose work happens on the GPU: a busy CPU there is not progress.
GPU_ONLY_KINDS = frozenset({"vllm"})


@dataclass(frozen=True, slots=True)
class TargetProfile:
    name: str
    kind: str = "openai"
    gpus: tuple[int, ...] = ()
    settings: DetectSettings = field(default_factory=DetectSettings)

    @property
    def cpu_counts_as_work(self) -> bool:
        """llama.cpp and Ollama can run layers on the CPU; vLLM cannot."""
        return self.kind not in GPU_ONLY_KINDS
