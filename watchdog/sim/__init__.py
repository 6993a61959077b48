"""A simulated inference server (Ollama, vLLM, llama.cpp) and GPU, with fault injection.

Run one with ``python -m watchdog.sim --kind ollama --port 0``; read its GPU
with :class:`watchdog.sim.nvml.SimNvml`. See docs/sim-gpu.md and the README.
Stands alone: imports no other room; only the daemon's builder, the demo and tests import it.
"""
