"""Observe: every probe turns what it sees into trace-v1 records (see base.py).

Entry points (each round emits through ``emit`` and never raises):

- :class:`watchdog.probes.suite.ProbeSuite` builds and wires them all for a config;
- ``ServerProbe.round()`` (suite.py) over a :class:`~watchdog.probes.adapters.ServerAdapter`
  (``ollama``, ``vllm``, ``llamacpp``, ``openai``);
- ``CanaryProbe.round()`` (canary.py), ``GpuProbe.round()`` (gpu.py) with its XID thread,
  ``ProcessProbe.round()`` (processes.py), ``LogProbe.run()`` (logwatch.py);
- :class:`~watchdog.probes.attribution.Attributor`: which processes belong to which target;
"""
