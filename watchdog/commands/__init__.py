"""One-shot commands behind ``watchdogctl`` (check, probe, replay, explain, demo).

They may import any room (``daemon.builder`` to build a probe suite); nothing imports
them but ``cli.py``.
"""
