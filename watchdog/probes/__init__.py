"""Observe: every probe turns what it sees into trace-v1 records (see base.py).

May import ``config/``, ``trace/``, ``logs``; never ``sim/`` (the simulated NVML table
is handed in), ``daemon/`` or ``commands/``. Entry points (each round emits through
``emit`` and never raises):

- :class:`watchdog.probes.suite.ProbeSuite` builds and wires them all for a config;
  :func:`watchdog.probes.round.run_round` runs one round of them (``check``, ``probe``);
- ``ServerProbe.round()`` (suite.py) over a :class:`~watchdog.probes.adapters.ServerAdapter`
  (``ollama``, ``vllm``, ``llamacpp``, ``openai``);
- ``CanaryProbe.round()`` / ``decide()`` + ``send()`` (canary.py), ``GpuProbe.round()`` (gpu.py)
  with its XID thread, ``ProcessProbe.round()`` (processes.py), ``LogProbe.run()`` (logwatch.py);
- :class:`~watchdog.probes.attribution.Attributor`: which processes belong to which target;
"""
