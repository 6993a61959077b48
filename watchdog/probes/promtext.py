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


class MetricsFormatError(ValueError):
    """The body is not Prometheus text."""


def parse_sums(text: str, wanted: Iterable[str]) -> dict[str, float]:
    """Sum of each wanted metric over all its label sets; metrics not present are left out.

    Raises MetricsFormatError on a line that is neither a comment nor a sample.
    """
    names = set(wanted)
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
