"""A small, strict reader of the Prometheus text format, for the few series the adapters need.

vLLM and llama.cpp expose progress counters on ``/metrics``. We only need
sums of a handful of series, so this parses sample lines (name, labels,
value), sums a metric over its label sets (several engines or models), and
rejects a body that is not the text format at all: a server answering garbage
must give ``bad_response``, not counters read from noise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

_SAMPLE = re.compile(
    r"""^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
        (?P<labels>\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?
        [ \t]+(?P<value>[^ \t]+)
        (?:[ \t]+-?[0-9]+)?[ \t]*$""",
    re.VERBOSE,
)


# The fast path (issue 15): one pass of the regex engine checks the whole body, then only the
# lines of the wanted series are parsed. It accepts a subset of what the line-by-line reader below accepts (``\n``
# line ends, blanks and tabs, plain numbers), where both give the same sums; any other body is
# read line by line, so an odd but valid body is still read and garbage gets the same error.
_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits on
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABELS = rf'\{{(?:[^"}}{_BREAKS}]++|"(?:[^"\\{_BREAKS}]++|\\[^{_BREAKS}])*+")*+\}}'
_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?Inf|NaN"
_LINE = rf"[ \t]*+(?:#[^{_BREAKS}]*+|{_NAME}(?:{_LABELS})?[ \t]++(?:{_NUMBER})(?:[ \t]++-?[0-9]++)?[ \t]*+)?"
_BODY = re.compile(rf"(?>{_LINE}\n)*+{_LINE}")  # possessive: no backtracking into checked lines


class MetricsFormatError(ValueError):
    """The body is not Prometheus text."""


def parse_sums(text: str, wanted: Iterable[str]) -> dict[str, float]:
    """Sum of each wanted metric over all its label sets; metrics not present are left out.

    Raises MetricsFormatError on a line that is neither a comment nor a sample.
    """
    names = frozenset(wanted)
    if _BODY.fullmatch(text) is None:
        return _parse_sums_by_line(text, names)
    sums: dict[str, float] = {}
    prefixes = tuple(names)
    for line in text.split("\n"):  # every line is a comment, a blank or a sample: look at ours only
        if line.startswith(prefixes) or line[:1] in (" ", "\t"):
            match = _SAMPLE.match(line.strip(" \t"))
            if match is not None and match.group("name") in names:
                value = float(match.group("value"))
                if not math.isnan(value):
                    sums[match.group("name")] = sums.get(match.group("name"), 0.0) + value
    return sums


def _parse_sums_by_line(text: str, names: frozenset[str]) -> dict[str, float]:
    sums: dict[str, float] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise MetricsFormatError(f"line {number} is not a Prometheus sample")
        try:
            value = float(match.group("value"))
        except ValueError:
            raise MetricsFormatError(f"line {number}: value is not a number") from None
        name = match.group("name")
        if name in names and not math.isnan(value):
            sums[name] = sums.get(name, 0.0) + value
    return sums


def first_of(sums: dict[str, float], *names: str) -> float | None:
    """The value of the first name present (metric names changed across server versions)."""
    for name in names:
        if name in sums:
            return sums[name]
    return None
