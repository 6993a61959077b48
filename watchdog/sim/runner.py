"""Real child processes that hold a model's simulated GPU memory ("runners").

Ollama runs each loaded model in a child ``ollama runner`` process and vLLM
runs its engine in an ``EngineCore`` child; the GPU state file names these
children's real pids, so attribution by process tree is exercised for real.
A runner is ``cat`` reading a pipe whose other end only the simulator holds:
it costs nothing, and it exits by itself when the simulator dies (even by
SIGKILL), the way a driver frees the memory of a process tree that is gone.
"""

from __future__ import annotations

import shutil
import subprocess

_CAT = shutil.which("cat") or "/bin/cat"


def spawn_runner(title: str) -> subprocess.Popen[bytes]:
    """A child process whose command line reads ``title`` (as in ``ps``)."""
    return subprocess.Popen(  # noqa: S603 - fixed executable, no shell
        [title], executable=_CAT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, close_fds=True, start_new_session=False,
    )


def stop_runner(proc: subprocess.Popen[bytes], timeout: float = 1.0) -> None:
    """Terminate a runner and reap it, so its pid really disappears."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
    if proc.stdin:
        try:
            proc.stdin.close()
        except OSError:
            pass
