"""An action's outcome, and the deadline every action runs under."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Result = Literal["ok", "failed", "timeout", "skipped", "would"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What came of an action: its result, one line for the timeline, and structured facts."""

    result: Result
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.result == "ok"


def brief(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


async def blocking(fn: Callable[[], T], timeout: float) -> T:
    """Run blocking work (Docker SDK, systemctl, psutil) in a thread, under a deadline.

    On timeout the thread is left to finish on its own (it cannot be killed), the
    caller gets ``asyncio.TimeoutError`` and records ``timeout``.
    """
    return await asyncio.wait_for(asyncio.to_thread(fn), timeout=timeout)
