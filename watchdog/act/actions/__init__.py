"""The actions the actor can take, one module each; each returns an :class:`Outcome`."""

from watchdog.act.actions.base import Outcome, Result

__all__ = ["Outcome", "Result"]
