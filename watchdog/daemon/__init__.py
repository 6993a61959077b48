"""The daemon (``watchdogctl run``): wires probes → pipeline → detect → incidents and schedules them.

It may import every room below it (probes, detect, incidents, status, control,
config, trace); nothing imports it but ``commands/`` and ``cli.py``.
"""
