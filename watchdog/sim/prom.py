"""Prometheus text exposition (format 0.0.4), written by hand: the shipped simulator
needs no prometheus_client, and the output is what prometheus_client itself prints."""

from __future__ import annotations

from collections.abc import Iterable


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value))


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def _head(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def gauge(self, name: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        self._head(name, "gauge", help_text)
        self.lines += [f"{name}{_labels(lbl)} {_num(v)}" for lbl, v in samples]

    def counter(self, name: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]],
                created: float | None = None) -> None:
        """``name`` ends in ``_total``, as prometheus_client prints counters."""
        self._head(name, "counter", help_text)
        base = name.removesuffix("_total")
        for lbl, v in samples:
            self.lines.append(f"{name}{_labels(lbl)} {_num(v)}")
            if created is not None:
                self.lines.append(f"{base}_created{_labels(lbl)} {_num(created)}")

    def histogram(self, name: str, help_text: str, labels: dict[str, str], buckets: tuple[float, ...],
                  counts: list[int], total: float, n: int, created: float | None = None) -> None:
        self._head(name, "histogram", help_text)
        for bound, count in zip(buckets, counts):
            self.lines.append(f"{name}_bucket{_labels({**labels, 'le': _num(bound)})} {_num(count)}")
        self.lines.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {_num(n)}")
        self.lines.append(f"{name}_count{_labels(labels)} {_num(n)}")
        self.lines.append(f"{name}_sum{_labels(labels)} {_num(total)}")
        if created is not None:
            self.lines.append(f"{name}_created{_labels(labels)} {_num(created)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
