"""``python -m watchdog.sim.relaunch``: (re)start a simulator on a fixed port, as a restart command.

For setups that are neither a container nor a unit (``restart.method =
"command"``), the demo and the tests use this as the restart command: it stops
the simulator named by ``--pidfile`` (SIGTERM, SIGKILL after a grace; a frozen
one too), starts a new one on the same port in its own session (it outlives the
watchdog that ran this), waits until it answers, and exits 0. ``--runs FILE``
appends one line per run (tests count restarts with it); ``--delay S`` waits
before relaunching (a slow restart, to stop a watchdog mid-action);
``--freeze`` SIGSTOPs the new one as soon as it prints its ready line (a server that hangs again).

    python -m watchdog.sim.relaunch --pidfile P --port 11434 [--runs F] -- --kind ollama --gpu-dir G
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx


def stop(pidfile: Path, grace: float = 3.0) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m watchdog.sim.relaunch")
    p.add_argument("--pidfile", required=True, type=Path)
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--runs", type=Path, default=None)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--freeze", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("sim_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    sim_args = [a for a in args.sim_args if a != "--"]
    if args.runs is not None:
        with open(args.runs, "a") as handle:
            handle.write(f"{time.time()}\n")
    if args.delay:
        time.sleep(args.delay)
    stop(args.pidfile)
    log = open(args.pidfile.with_suffix(".out"), "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "watchdog.sim", "--port", str(args.port), *sim_args],
                            stdout=subprocess.PIPE if args.freeze else log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    args.pidfile.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + args.timeout
    if args.freeze:
        # Stopped the moment it prints its ready line, before anyone's request can get an answer
        # (stopping it after our own request answered left a window for the watchdog's poll).
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                if b'"ready"' in line:
                    os.kill(proc.pid, signal.SIGSTOP)
                    return 0
                if not line:
                    break
            if proc.poll() is not None:
                break
        print("the simulator did not print its ready line", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{args.port}/_sim/state"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"the simulator exited with {proc.returncode}", file=sys.stderr)
            return 1
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return 0
        time.sleep(0.1)
    print(f"the simulator did not answer on port {args.port} within {args.timeout:.0f} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
