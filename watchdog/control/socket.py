"""The control socket file: created safely, with the right mode and group, never stolen.

- An existing path that is not a socket is never touched (it is not ours).
- A socket that answers belongs to a running daemon: refuse to start a second one.
- A socket that does not answer is stale (a daemon that died): replaced.
- The new socket is bound under a temporary name, given its mode (0660) and
  group, then renamed into place, so nobody ever sees it with the wrong
  permissions, and a stale file is replaced atomically.
"""

from __future__ import annotations

import errno
import grp
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

SOCKET_MODE = 0o660
# sockaddr_un.sun_path is 108 bytes on Linux, including the final NUL.
_MAX_PATH = 107


class ControlSocketError(Exception):
    """The control socket cannot be created; the message says why and what to do."""


@dataclass
class ControlSocket:
    """A bound, listening control socket and the file it lives at."""

    sock: socket.socket
    path: Path
    inode: int

    def remove(self) -> None:
        """Remove the socket file, unless it has been replaced since (by a newer daemon)."""
        try:
            if os.lstat(self.path).st_ino == self.inode:
                self.path.unlink()
        except OSError:
            pass


def bind_control_socket(
    path: str | Path, group: str = "", mode: int = SOCKET_MODE, backlog: int = 512
) -> ControlSocket:
    """A listening unix stream socket at ``path`` (mode ``mode``, group ``group`` when set)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if len(os.fsencode(tmp)) > _MAX_PATH:
        raise ControlSocketError(
            f"control socket path too long for a unix socket ({len(os.fsencode(path))} bytes): {path}"
        )
    gid = _group_id(group) if group else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlSocketError(f"cannot create {path.parent}: {exc.strerror}") from None
    _check_existing(path)
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, mode)
        if gid is not None:
            try:
                os.chown(tmp, -1, gid)
            except PermissionError:
                raise ControlSocketError(
                    f"cannot give {path} to group {group!r}: the daemon must run as root or be a member of it"
                ) from None
        os.rename(tmp, path)
        inode = os.lstat(path).st_ino
        sock.listen(backlog)
        sock.setblocking(False)
    except ControlSocketError:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise
    except OSError as exc:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise ControlSocketError(f"cannot create the control socket {path}: {exc.strerror or exc}") from None
    return ControlSocket(sock, path, inode)


def _check_existing(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; not touching it (remove it if it is stale)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return  # stale: nobody listens; replaced by the rename
        if isinstance(exc, TimeoutError) or exc.errno == errno.EAGAIN:
            raise ControlSocketError(f"{path} is in use by a daemon that does not answer; stop it first") from None
        raise ControlSocketError(f"cannot check the existing socket {path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise ControlSocketError(f"another daemon is already listening on {path}")


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ControlSocketError(f"control_group {group!r}: no such group on this host") from None
