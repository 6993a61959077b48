"""A target's state as the actor sees it, and the transitions allowed between states.

Modelled on supervisord's ``states.py`` / ``process.py``: explicit states, a
table of the transitions each state allows, and one ``change`` that refuses any
other (supervisord's ``_assertInState``). Every accepted transition becomes one
line in the incident's timeline, so the timeline reads as the machine's trace::

    WATCHING ─▶ WAITING ─▶ ACTING ─▶ VERIFYING ─▶ RECOVERED ─▶ WATCHING
                  │           │           │
                  │           ▼           ▼
                  └──────▶ GAVE_UP ◀── BACKOFF ─▶ ACTING (next rung)

WAITING is a drain (non-urgent findings) or a maintenance window; BACKOFF is the
cooldown after an action that did not fix it; GAVE_UP (ladder or budget spent)
pauses the target until ``watchdogctl resume``. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class State(str, Enum):
    WATCHING = "watching"
    WAITING = "waiting"
    ACTING = "acting"
    VERIFYING = "verifying"
    RECOVERED = "recovered"
    BACKOFF = "backoff"
    GAVE_UP = "gave_up"

    def __str__(self) -> str:
        return self.value


ALLOWED: dict[State, frozenset[State]] = {
    State.WATCHING: frozenset({State.WAITING, State.ACTING, State.VERIFYING, State.GAVE_UP}),
    State.WAITING: frozenset({State.ACTING, State.GAVE_UP, State.WATCHING}),
    State.ACTING: frozenset({State.VERIFYING, State.BACKOFF, State.GAVE_UP, State.WATCHING}),
    State.VERIFYING: frozenset({State.RECOVERED, State.BACKOFF, State.GAVE_UP, State.WATCHING}),
    State.BACKOFF: frozenset({State.ACTING, State.GAVE_UP, State.WATCHING, State.WAITING}),
    State.RECOVERED: frozenset({State.WATCHING}),
    State.GAVE_UP: frozenset({State.WATCHING}),
}
#: States in which an episode is running: a new finding joins it instead of starting another.
BUSY = frozenset({State.WAITING, State.ACTING, State.VERIFYING, State.BACKOFF})


class IllegalTransition(AssertionError):
    """A transition the table does not allow: a bug in the actor, never an operator error."""


@dataclass(frozen=True, slots=True)
class Transition:
    old: State
    new: State
    why: str

    def line(self, target: str) -> str:
        """The timeline line, e.g. "act: watching → acting: hang: restart (rung 1 of 3)"."""
        return f"act: {self.old} → {self.new}: {self.why}"


class Machine:
    """One target's state. ``change`` is the only way to move it."""

    def __init__(self, target: str, state: State = State.WATCHING) -> None:
        self.target = target
        self.state = state
        self.history: list[Transition] = []

    @property
    def busy(self) -> bool:
        return self.state in BUSY

    def can(self, new: State) -> bool:
        return new in ALLOWED[self.state]

    def change(self, new: State, why: str) -> Transition | None:
        """Move to ``new``; None if already there (like supervisord's ``change_state``)."""
        if new == self.state:
            return None
        if new not in ALLOWED[self.state]:
            raise IllegalTransition(f"{self.target}: {self.state} → {new} is not allowed ({why})")
        transition = Transition(self.state, new, why)
        self.state = new
        self.history.append(transition)
        if len(self.history) > 64:
            del self.history[:-64]
        return transition
