"""Split a byte stream into lines of bounded length.

Logs and canary streams come from programs we do not trust to behave: a line
without an end must not grow a buffer without bound. A line longer than
``max_line`` bytes is passed on as soon as it passes the limit, cut and marked,
and the rest of it is dropped up to the next newline.
"""

from __future__ import annotations

import re

CUT_MARK = " [...]"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class LineSplitter:
    """Feed bytes, get complete lines (decoded, without the newline)."""

    def __init__(self, max_line: int = 8192) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._cutting = False
        self.cut_lines = 0

    def feed(self, data: bytes) -> list[str]:
        lines: list[str] = []
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            complete = end >= 0
            segment = data[start:end] if complete else data[start:]
            start = end + 1 if complete else len(data)
            if self._cutting:
                self._cutting = not complete
                continue
            self._buffer += segment[: self.max_line + 1 - len(self._buffer)]
            if len(self._buffer) > self.max_line:
                lines.append(self._take(cut=True))
                self._cutting = not complete
            elif complete:
                lines.append(self._take(cut=False))
        return lines

    def flush(self) -> list[str]:
        """The last line if it had no newline (at the end of a stream)."""
        self._cutting = False
        if not self._buffer:
            return []
        return [self._take(cut=False)]

    def _take(self, cut: bool) -> str:
        raw = bytes(self._buffer[: self.max_line])
        self._buffer.clear()
        text = raw.decode("utf-8", "replace").rstrip("\r")
        if cut:
            self.cut_lines += 1
            text += CUT_MARK
        return text


def strip_ansi(text: str) -> str:
    """Colour codes out of a log line (vLLM and uvicorn colour their logs on a terminal)."""
    return _ANSI.sub("", text) if "\x1b" in text else text
