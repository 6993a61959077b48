"""The daemon (``watchdogctl run``): builds its parts (builder.py), schedules per-target workers,
moves records through the pipeline to detect and incidents, and drives the listeners.

May import every room (and ``sim/`` for the simulated GPU table); nothing imports it but
``commands/`` and ``cli.py``. Listeners plug in through ``watchdog/listener.py``.
"""
