"""One-shot commands behind ``watchdogctl`` (check, probe, replay, explain, demo).

They may import any room; nothing imports them but ``cli.py``.
"""
