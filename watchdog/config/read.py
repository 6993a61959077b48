"""Reading a config file's bytes and TOML, without the pydantic models.

``watchdogctl status`` needs one key of the config (where the control socket is);
building the whole validated :class:`~watchdog.config.model.Config` for it cost
more than the rest of the command (issue 15). :mod:`watchdog.config.load` builds
on this for the full validation.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from watchdog.config.paths import DEFAULT_CONTROL_SOCKET

if TYPE_CHECKING:
    from pathlib import Path

MAX_CONFIG_BYTES = 1024 * 1024
"""A config is a few kilobytes; anything above this is the wrong file (or /dev/zero)."""
MAX_NESTING = 32
"""Tables and arrays nested deeper than this are not a watchdog config (and would exhaust the stack)."""
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config: where (a key path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass
class ConfigError(Exception):
    """A config that cannot be used, with every problem found in it."""

    file: str
    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(f"{self.file}: {problem}" for problem in self.problems)


def read_config_bytes(path: str | Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, or ConfigError.

    Opened non-blocking and checked with fstat before reading, so a FIFO (which would
    wait forever for a writer), a device such as /dev/zero (endless) or a huge file is
    refused instead of hanging or filling memory.
    """
    name = repr(str(path)) if "\x00" in str(path) else str(path)
    if "\x00" in str(path):
        raise ConfigError(name, [Problem("", "the path contains a NUL byte")])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(name, [Problem("", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError(name, [Problem("", "is a directory, expected a TOML file")]) from None
    except OSError as exc:
        raise ConfigError(name, [Problem("", f"cannot read: {exc.strerror}")]) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(name, [Problem("", "is a directory, expected a TOML file")])
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(name, [Problem("", "is not a regular file (a FIFO, socket or device): "
                                                 "expected a TOML file")])
        if info.st_size > limit:
            raise ConfigError(name, [Problem("", f"is {info.st_size} bytes: a config is at most {limit} bytes")])
        with os.fdopen(fd, "rb", closefd=True) as handle:
            fd = -1
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(name, [Problem("", f"cannot read: {exc.strerror}")]) from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > limit:
        raise ConfigError(name, [Problem("", f"is larger than {limit} bytes: a config is not that big")])
    return data


def _bracket_depth(text: str) -> int:
    """An upper bound on nesting from brackets and braces (strings included, so it over-counts):
    cheap, and it stops tomllib from recursing a thousand levels before we can refuse."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def _depth(node: Any, level: int = 0) -> int:
    if level > MAX_NESTING:
        return level
    if isinstance(node, dict):
        return max((_depth(v, level + 1) for v in node.values()), default=level + 1)
    if isinstance(node, list):
        return max((_depth(v, level + 1) for v in node), default=level + 1)
    return level


def parse_toml(data: bytes | str, file: str = "<config>") -> dict[str, Any]:
    """The TOML tables of config text, or ConfigError for text that is not a sane TOML file
    (not UTF-8, too big, nested too deep, a syntax error); ``file`` names it in errors."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(file, [Problem("", f"not UTF-8 text (byte {exc.start})")]) from None
    else:
        text = data
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(file, [Problem("", f"is larger than {MAX_CONFIG_BYTES} bytes: a config is not that big")])
    if _bracket_depth(text) > MAX_NESTING * 2:
        raise ConfigError(file, [Problem("", f"tables or arrays nested more than {MAX_NESTING} deep")])
    import tomllib  # here: `status --socket` has no config to read

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, [_syntax_problem(exc)]) from None
    except RecursionError:
        raise ConfigError(file, [Problem("", f"tables or arrays nested more than {MAX_NESTING} deep")]) from None
    if _depth(raw) > MAX_NESTING:
        raise ConfigError(file, [Problem("", f"tables or arrays nested more than {MAX_NESTING} deep")])
    return raw


def _syntax_problem(exc: ValueError) -> Problem:  # a tomllib.TOMLDecodeError
    message = str(exc)
    match = _TOML_POSITION.search(message)
    if match:
        message = message[: match.start()]
        return Problem("", f"line {match.group(1)}, column {match.group(2)}: TOML syntax error: {message}")
    return Problem("", f"TOML syntax error: {message}")


def control_socket_in(path: str | Path) -> str:
    """The control socket a config file names (the default when it names none), read alone.

    ConfigError when the file cannot be read, is not TOML, or ``[watchdog] control_socket``
    is not text. Every other key is the full validation's business (``config check``,
    the daemon's start and reload): ``watchdogctl status`` must reach a daemon still
    running on an older config while a broken edit waits to be fixed, and building
    the pydantic config just to find one string cost most of its start (issue 15).
    """
    raw = parse_toml(read_config_bytes(path), str(path))
    section = raw.get("watchdog", {})
    if not isinstance(section, dict):
        raise ConfigError(str(path), [Problem("watchdog", f"expected a table, got {show_value(section)}")])
    socket = section.get("control_socket", DEFAULT_CONTROL_SOCKET)
    if not isinstance(socket, str):
        raise ConfigError(str(path), [Problem("watchdog.control_socket", f"expected text, got {show_value(socket)}")])
    return socket


def show_value(value: Any) -> str:
    """A TOML value as an error message names it: text quoted, tables and lists by kind."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
