"""The actor's pure parts with a fake clock: state machine, ladders, budget, guards, windows, config."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from watchdog.act.policy import (
    EffectivePolicy,
    TargetSnapshot,
    budget,
    driving_finding,
    in_window,
    memory_back,
    restart_blocked,
)
from watchdog.act.states import ALLOWED, IllegalTransition, Machine, State
from watchdog.act.store import ActionStore
from watchdog.config import ConfigError
from watchdog.config.load import parse_config

TARGET = """
[[targets]]
name = "ollama"
kind = "ollama"
url = "http://127.0.0.1:11434"
unit = "ollama.service"
"""


def wall(hh: int, mm: int) -> float:
    return datetime(2026, 12, 1, hh, mm, tzinfo=UTC).timestamp()


# --- the state machine ----------------------------------------------------------------------------

def test_machine_walks_the_happy_path_and_records_each_transition() -> None:
    m = Machine("ollama")
    for state in (State.ACTING, State.VERIFYING, State.RECOVERED, State.WATCHING):
        assert m.change(state, "why") is not None
    assert [t.new for t in m.history] == [State.ACTING, State.VERIFYING, State.RECOVERED, State.WATCHING]
    assert m.history[0].line("ollama") == "act: watching → acting: why"


@pytest.mark.parametrize(("start", "bad"), [
    (State.WATCHING, State.RECOVERED),  # recovered without acting or verifying
    (State.RECOVERED, State.ACTING),    # must go back to watching first
    (State.GAVE_UP, State.ACTING),      # gave up: no more actions
    (State.WAITING, State.VERIFYING),
])
def test_machine_refuses_transitions_the_table_does_not_allow(start: State, bad: State) -> None:
    m = Machine("t", start)
    with pytest.raises(IllegalTransition):
        m.change(bad, "no")
    assert m.state == start


def test_every_state_can_get_back_to_watching() -> None:
    for state, allowed in ALLOWED.items():
        assert state == State.WATCHING or State.WATCHING in allowed


def test_same_state_is_no_transition() -> None:
    m = Machine("t")
    assert m.change(State.WATCHING, "again") is None and m.history == []


# --- ladders and config ---------------------------------------------------------------------------

def test_default_ladders() -> None:
    config = parse_config(TARGET)
    p = EffectivePolicy.of(config, config.targets[0])
    assert p.ladder("hang") == ["restart", "restart", "give_up"]
    assert p.ladder("failed_unload") == ["unload", "kill_orphans", "restart", "give_up"]
    assert p.ladder("down") == ["restart", "give_up"]
    assert p.ladder("memory_growth") == ["drain", "restart", "give_up"]
    assert p.ladder("gpu_fault") == []
    assert p.method == "systemd" and p.mode == "act"


def test_per_target_overrides_win() -> None:
    config = parse_config(
        '[policy]\nmax_restarts = 5\nladders = { down = ["restart", "restart", "give_up"] }\n'
        + TARGET + '[targets.restart]\nmode = "dry-run"\nmax_restarts = 1\ngrace = "30s"\n'
        'ladders = { hang = ["restart", "give_up"] }\n'
    )
    p = EffectivePolicy.of(config, config.targets[0])
    assert (p.mode, p.max_restarts, p.grace) == ("dry-run", 1, 30.0)
    assert p.ladder("hang") == ["restart", "give_up"]
    assert p.ladder("down") == ["restart", "restart", "give_up"]


@pytest.mark.parametrize(("text", "message"), [
    ('[policy]\nladders = { hang = ["reboot"] }\n', "unknown step 'reboot'"),
    ('[policy]\nladders = { hangs = ["restart"] }\n', "unknown finding 'hangs'"),
    ('[policy]\nladders = { hang = ["give_up", "restart"] }\n', "give_up can only be the last step"),
    ('[policy]\nladders = { hang = ["restart", "drain"] }\n', "drain can only be the first step"),
    ('[policy]\nmode = "yolo"\n', "mode"),
    ('[policy]\nmaintenance_window = "2am-4am"\n', 'expected a daily window in UTC like "02:00-04:00"'),
    ('[policy]\nkill_grace = "0s"\n', "above zero"),
])
def test_bad_policies_are_refused_with_a_key_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text + TARGET)
    assert message in str(info.value)
    assert "policy." in str(info.value)


def test_observe_override_needs_no_restart_method() -> None:
    text = TARGET.replace('unit = "ollama.service"\n', "") + '[targets.restart]\nmode = "observe"\n'
    parse_config(text)  # no error: this target is never acted on
    with pytest.raises(ConfigError):
        parse_config(TARGET.replace('unit = "ollama.service"\n', ""))


def test_driving_finding_prefers_the_urgent_one() -> None:
    assert driving_finding(["memory_growth", "hang"]) == "hang"
    assert driving_finding(["degraded"]) == "degraded"
    assert driving_finding([]) is None


# --- budget with a fake clock ---------------------------------------------------------------------

def test_budget_counts_restarts_in_the_window_only() -> None:
    now = 10_000.0
    b = budget([now - 4000, now - 3000, now - 100], now, limit=3, window=3600)
    assert (b.used, b.left, b.spent) == (2, 1, False)
    assert b.frees_at == now - 3000 + 3600
    b = budget([now - 3000, now - 100, now - 5], now, limit=3, window=3600)
    assert b.spent and b.left == 0


def test_a_resume_starts_the_budget_afresh() -> None:
    now = 10_000.0
    assert budget([now - 300, now - 200, now - 100], now, 3, 3600, reset_at=now - 150).used == 1


def test_budget_survives_a_new_store_on_the_same_file(tmp_path) -> None:
    path = tmp_path / "state.db"
    store = ActionStore(path)
    for started in (100.0, 200.0):
        row = store.begin(target="t", incident_id=1, finding="hang", step=0, action="restart", method="command",
                          started=started)
        store.finish(row, result="failed", finished=started + 1, detail="x")
    store.begin(target="t", incident_id=1, finding="hang", step=1, action="restart", method="command", started=300.0)
    store.record(target="t", incident_id=1, finding="hang", step=1, action="restart", method="command",
                 started=301.0, result="would", finished=301.0)
    store.close()
    again = ActionStore(path)  # a crash-looping watchdog opens it afresh
    assert sorted(again.restart_starts("t", 0.0)) == [100.0, 200.0, 300.0]  # "would" does not count
    [unfinished] = again.unfinished()
    assert unfinished.started == 300.0 and unfinished.result is None
    again.interrupt(unfinished.id, 310.0, "killed")
    assert again.unfinished() == []
    assert sorted(again.restart_starts("t", 0.0)) == [100.0, 200.0, 300.0]  # interrupted still counts


def test_pause_until_and_resume(tmp_path) -> None:
    store = ActionStore(tmp_path / "state.db")
    store.pause("a", at=100.0, until=200.0, reason="operator")
    store.pause("b", at=100.0, until=None, reason="gave up: budget")
    assert set(store.paused(150.0)) == {"a", "b"}
    assert set(store.paused(250.0)) == {"b"}  # a pause with --for ends by itself
    store.resume("b", at=260.0)
    assert store.paused(260.0) == {} and store.budget_reset_at("b") == 260.0


# --- guards ---------------------------------------------------------------------------------------

def test_never_restart_a_loading_server() -> None:
    assert "loading" in (restart_blocked(TargetSnapshot(loading=True, findings=frozenset({"down"}))) or "")


def test_never_restart_a_prefill() -> None:
    snap = TargetSnapshot(state="ready", running=2, busy=True, findings=frozenset({"degraded"}))
    assert "prefill" in (restart_blocked(snap) or "")
    # The hang detector already told a stuck collective from a prefill (busy_stall_after).
    assert restart_blocked(TargetSnapshot(state="ready", running=2, busy=True, findings=frozenset({"hang"}))) is None


def test_never_restart_a_healthy_idle_server_holding_a_model() -> None:
    snap = TargetSnapshot(state="ready", models=("llama3",), held_mib=5000)
    assert "idle with a model held" in (restart_blocked(snap) or "")
    assert restart_blocked(snap, manual=True) is None  # an operator asked for it


def test_a_hung_server_holding_a_model_may_be_restarted() -> None:
    snap = TargetSnapshot(state="ready", models=("llama3",), held_mib=5000, findings=frozenset({"hang"}))
    assert restart_blocked(snap) is None


def test_maintenance_window() -> None:
    assert in_window("", wall(13, 0))
    assert in_window("02:00-04:00", wall(3, 59)) and not in_window("02:00-04:00", wall(4, 0))
    assert in_window("23:00-01:00", wall(0, 30)) and in_window("23:00-01:00", wall(23, 0))
    assert not in_window("23:00-01:00", wall(12, 0))


def test_memory_back() -> None:
    assert memory_back(4000, 100, 3900)
    assert not memory_back(4000, 3990, 3900)
    assert memory_back(0, 0, None)
    assert not memory_back(4000, 2500, None)  # less than half of what was held came back
