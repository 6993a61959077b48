"""Observe: every probe turns what it sees into trace-v1 records (see base.py)."""
