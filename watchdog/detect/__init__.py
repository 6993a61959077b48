"""Decide: pure detectors over trace-v1 records, the engine that runs them, and its factory.

May import ``config/`` and ``trace/`` only: no I/O, no clock, no room that does I/O
(tests/test_layering.py holds it to that)."""
