"""Decide: pure detectors over trace-v1 records (no I/O, no wall clock)."""
