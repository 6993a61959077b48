"""`watchdogctl demo` runs the real daemon against simulated servers and passes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.daemon_support import ROOT


@pytest.mark.slow
def test_demo_detects_and_fixes_every_fault_and_raises_nothing_else() -> None:
    result = subprocess.run([sys.executable, "-m", "watchdog", "demo"], capture_output=True, text=True,
                            timeout=240, cwd=ROOT, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "PASS: every fault was detected and fixed, and nothing else was raised" in output
    for line in ("● hang on ollama", "● failed_unload on ollama", "● memory_growth on vllm", "✓ hang on ollama cleared",
                 "✔ hang on ollama fixed by restart", "✔ failed_unload on ollama fixed by kill_orphans",
                 "✔ memory_growth on vllm fixed by restart"):
        assert line in output, output[-5000:]
    assert "fixed by" in output and "recovered after" in output
    assert "false alarms: none" in output
    # Beside each detection, the alert the daemon delivered to the demo's webhook stand-in.
    for line in ("✉ alert sent: CRITICAL: hang on ollama", "✉ alert sent: CRITICAL: failed_unload on ollama",
                 "✉ alert sent: WARNING: memory_growth on vllm", "✉ alert sent: RESOLVED: hang on ollama"):
        assert line in output, output[-5000:]
