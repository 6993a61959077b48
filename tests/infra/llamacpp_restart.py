"""``restart.command`` for the test's llama-server: ask the fixture to restart it, wait for the answer.

Usage: python llamacpp_restart.py SOCKET   (exit 0 once the new server is healthy)
"""

from __future__ import annotations

import socket
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: llamacpp_restart.py SOCKET", file=sys.stderr)
        return 2
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(120)
        try:
            sock.connect(argv[0])
            sock.sendall(b"restart\n")
            answer = sock.recv(4096).decode(errors="replace").strip()
        except OSError as exc:
            print(f"cannot reach the test fixture at {argv[0]}: {exc}", file=sys.stderr)
            return 1
    print(answer)
    return 0 if answer.startswith("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
