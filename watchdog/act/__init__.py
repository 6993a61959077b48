"""Act: carry out what the policy decides about incidents (restart, unload, kill), and prove it.

``Actor`` listens on ``Incidents.bus``; ``states`` is its per-target state
machine; ``policy`` the pure rules (ladders, budget, guards); ``store`` what
must survive a crash; ``actions/`` one module per action. See README "Actions
and policy".
"""

from watchdog.act.actor import ActError, Actor
from watchdog.act.host import ActHost, IncidentsPort
from watchdog.act.policy import EffectivePolicy, TargetSnapshot
from watchdog.act.states import Machine, State

__all__ = ["ActError", "ActHost", "Actor", "EffectivePolicy", "IncidentsPort", "Machine", "State", "TargetSnapshot"]
