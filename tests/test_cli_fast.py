"""``watchdogctl status`` without pydantic (issue 15): the plain views of the snapshot mirror the
models and render exactly as they do, the socket is read from the config alone, and the command,
run as a real process against a real daemon, never imports pydantic (nor rich for --json)."""

from __future__ import annotations

import io
import json
import os
import re
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined
from rich.console import Console

from tests.control_support import HEADER, mini_daemon, observations, short_tmpdir
from tests.paths import ROOT
from tests.test_status import WALL, build, hang
from watchdog.config import load_config
from watchdog.config.read import ConfigError, control_socket_in
from watchdog.detect.finding import Finding
from watchdog.status import model
from watchdog.status.render import render_status
from watchdog.status.summary import exit_code_for, summary_line
from watchdog.status.view import EMPTY, VIEWS, SnapshotError, snapshot_view

# Runs watchdogctl in this interpreter and, at exit, lists the heavy packages it imported (a None in
# sys.modules is an import refused on purpose: watchdog/__init__.py refuses httpx's CLI that way).
HOOK = (
    "import atexit, sys\n"
    "def _seen():\n"
    "    loaded = {name.split('.')[0] for name, module in sys.modules.items() if module is not None}\n"
    "    tops = sorted(loaded & {'pydantic', 'pydantic_core', 'rich', 'loguru', 'httpx', 'annotated_types'})\n"
    "    sys.stderr.write('\\nIMPORTED ' + ','.join(tops) + '\\n')\n"
    "atexit.register(_seen)\n"
    "from watchdog.cli import main\n"
    "main()\n"
)


def ctl(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """watchdogctl ARGS as a fresh process; its result and the heavy packages it imported."""
    environment = {k: v for k, v in os.environ.items() if k != "INFERENCE_WATCHDOG_SOCKET"}
    environment.update({"COLUMNS": "220", "NO_COLOR": "1", **(env or {})})
    done = subprocess.run([sys.executable, "-c", HOOK, *args], cwd=ROOT, env=environment, capture_output=True,
                          check=False, text=True, timeout=120)
    marker = done.stderr.rsplit("IMPORTED ", 1)
    assert len(marker) == 2, done.stderr
    return done, set(filter(None, marker[1].strip().split(",")))


@pytest.fixture(scope="module")
def daemon():
    with mini_daemon(HEADER) as running:
        running.feed(observations(running.clock()))
        yield running


def rich_snapshot() -> model.StatusSnapshot:
    """Every part the renderer shows: findings on a target and a GPU, XIDs, a refused reload,
    a paused target with its budget, and alert sinks."""
    fault = Finding(85.0, "gpu:1", "gpu_fault", "raised", "XID 79 on GPU 1")
    reload = model.ReloadStatus(at=datetime.fromtimestamp(WALL + 50, tz=UTC), ok=False,
                                message="targets[0].url: expected an http(s) URL")
    from watchdog.status import DaemonInfo

    daemon = DaemonInfo(config_path="/etc/iw.toml", mode="act", ready=False, last_reload=reload,
                        problems=["the state dir is full"])
    sinks = [model.AlertSinkStatus(name="ops", kind="slack", state="failing", pending=2, delivered=5,
                                   last_error="HTTP 500")]
    actions = {"vllm": model.ActionStatus(state="backoff", mode="dry-run", paused=True,
                                          paused_until=datetime.fromtimestamp(WALL + 900, tz=UTC),
                                          paused_reason="maintenance", restarts_left=1, max_restarts=3),
               "ollama": model.ActionStatus(state="watching", mode="act", restarts_left=3, max_restarts=3)}
    return build(findings=[hang(), fault, Finding(90.0, "ollama", "memory_growth", "raised", "+2 GiB")],
                 daemon=daemon, alerts=sinks, actions=actions)


def rendered(snapshot: object, color: bool) -> str:
    out = io.StringIO()
    console = (Console(file=out, width=250, force_terminal=True, color_system="truecolor") if color
               else Console(file=out, width=250, color_system=None))
    render_status(snapshot, console)  # type: ignore[arg-type]
    return out.getvalue()


# --- the views mirror the models --------------------------------------------------------------


def test_every_model_of_the_snapshot_has_a_view_with_the_same_fields_and_defaults():
    models = {name: cls for name, cls in vars(model).items()
              if isinstance(cls, type) and issubclass(cls, BaseModel) and cls.__module__ == model.__name__
              and not name.startswith("_")}
    assert set(models) == set(VIEWS)
    for name, cls in models.items():
        view = VIEWS[name]
        assert list(view._fields) == list(cls.model_fields), name
        for field, info in cls.model_fields.items():
            if info.default_factory is list:
                assert getattr(view, field) is EMPTY, f"{name}.{field}"
            elif info.default is PydanticUndefined:
                assert not hasattr(view, field), f"{name}.{field} is required in the model"
            else:
                assert getattr(view, field) == info.default, f"{name}.{field}"


def test_a_view_renders_exactly_as_its_model():
    snap = rich_snapshot()
    view = snapshot_view(json.loads(snap.model_dump_json()))
    assert view.state == snap.state == "critical" and view.target("vllm").action.paused
    for color in (False, True):
        assert rendered(view, color) == rendered(snap, color)
    plain = rendered(view, False)
    for expected in ("paused until", "maintenance", "1/3 restarts left", "mode dry-run", "Alerts", "HTTP 500",
                     "REFUSED", "first round not done yet", "daemon problem: the state dir is full",
                     "gpu:1 gpu_fault", "2 (last 31, 20s ago)"):
        assert expected in plain, expected
    assert summary_line(view) == summary_line(snap) and exit_code_for(view) == exit_code_for(snap) == 2
    assert exit_code_for(snapshot_view(json.loads(build().model_dump_json()))) == 0


def test_unknown_fields_are_ignored_as_the_models_ignore_them():
    data = json.loads(build(findings=[hang()]).model_dump_json())
    data["from_a_newer_daemon"] = {"x": 1}
    data["targets"][0]["another"] = 2
    view = snapshot_view(data)
    assert rendered(view, False) == rendered(model.StatusSnapshot.model_validate(data), False)


def _broken(change) -> dict:
    data = json.loads(build(findings=[hang()]).model_dump_json())
    change(data)
    return data


@pytest.mark.parametrize(("change", "where"), [
    (lambda d: d.pop("daemon"), "daemon: missing"),
    (lambda d: d.update(state="fine"), "state: expected one of ok, degraded, critical, unknown"),
    (lambda d: d.update(targets={"a": 1}), "targets: expected a list"),
    (lambda d: d["targets"][1]["server"].update(age_s="long"), "targets[1].server.age_s: expected float"),
    (lambda d: d["targets"][1]["findings"][0].update(since="yesterday"), "targets[1].findings[0].since"),
    (lambda d: d["targets"][1]["findings"][0].update(severity="mild"), "expected one of warning, critical"),
    (lambda d: d["gpus"][0].update(index="first"), "gpus[0].index: expected int"),
    (lambda d: d["targets"][0].update(last_canary=[]), "targets[0].last_canary: expected an object"),
])
def test_what_the_model_refuses_the_view_refuses_with_the_path(change, where):
    data = _broken(change)
    with pytest.raises(ValidationError):
        model.StatusSnapshot.model_validate(data)
    with pytest.raises(SnapshotError, match=re.escape(where)):
        snapshot_view(data)
    with pytest.raises(SnapshotError, match="expected an object"):
        snapshot_view([1, 2])


# --- the socket from the config, read alone ----------------------------------------------------


def test_the_socket_read_alone_is_the_one_the_full_config_names(tmp_path: Path):
    example = (ROOT / "config" / "watchdog.example.toml").read_text()
    path = tmp_path / "watchdog.toml"
    path.write_text(example)
    assert control_socket_in(path) == load_config(path).watchdog.control_socket
    path.write_text("[policy]\nmode = 'observe'\n"
                    "[[targets]]\nname = 'x'\nkind = 'ollama'\nurl = 'http://127.0.0.1:11434'\n")
    assert control_socket_in(path) == load_config(path).watchdog.control_socket  # the default
    path.write_text("[watchdog]\ncontrol_socket = 5\n")
    with pytest.raises(ConfigError, match=r"watchdog.control_socket: expected text, got 5"):
        control_socket_in(path)
    path.write_text("[watchdog\n")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        control_socket_in(path)
    with pytest.raises(ConfigError, match="file not found"):
        control_socket_in(tmp_path / "missing.toml")


# --- the command, as a process, against a real daemon ------------------------------------------


def test_status_imports_no_pydantic_in_any_form(daemon):
    sock = str(daemon.socket_path)
    with short_tmpdir() as root:
        config = root / "watchdog.toml"
        example = (ROOT / "config" / "watchdog.example.toml").read_text()
        assert "control_socket" in example
        # A config the daemon accepts (the documented example), pointed at this daemon's socket.
        lines = [f'control_socket = "{sock}"' if line.startswith("control_socket") else line
                 for line in example.splitlines()]
        config.write_text("\n".join(lines) + "\n")
        load_config(config)
        table, table_imports = ctl("--config", str(config), "status")
        by_socket, socket_imports = ctl("status", "--socket", sock)
        as_json, json_imports = ctl("--config", str(config), "status", "--json")
        by_env, env_imports = ctl("status", env={"INFERENCE_WATCHDOG_SOCKET": sock})
    for done in (table, by_socket, as_json, by_env):
        assert done.returncode == 0, done.stderr
    for text in (table.stdout, by_socket.stdout, by_env.stdout):
        for expected in ("OK", "Targets", "llama3.1:8b (6.0 GiB)", "TTFT 0.30 s", "55 °C"):
            assert expected in text, expected
    assert "rich" in table_imports and "rich" in socket_imports  # the hook sees what is imported
    for imported in (table_imports, socket_imports, env_imports):
        assert imported.isdisjoint({"pydantic", "pydantic_core", "annotated_types", "loguru", "httpx"}), imported
    assert json_imports == set(), json_imports  # --json: not even rich
    # --json prints the daemon's snapshot as the models would have printed it.
    printed = json.loads(as_json.stdout)
    assert model.StatusSnapshot.model_validate(printed).model_dump(mode="json") == printed
    assert as_json.stdout == json.dumps(printed, indent=2, ensure_ascii=False) + "\n"


def test_the_hook_sees_pydantic_where_a_command_uses_it(daemon):
    done, imported = ctl("history", "--socket", str(daemon.socket_path))
    assert done.returncode == 0, done.stderr
    assert "pydantic" in imported


def test_exit_codes_and_errors_without_pydantic(daemon):
    sock = str(daemon.socket_path)
    t = daemon.clock()
    daemon.feed(observations(t), [Finding(t, "vllm", "hang", "raised", "no tokens for 31 s")])
    try:
        critical, imported = ctl("status", "--socket", sock)
        assert critical.returncode == 2 and "CRITICAL" in critical.stdout and "no tokens for 31 s" in critical.stdout
        assert "pydantic" not in imported
    finally:
        daemon.feed(observations(t + 0.1), [Finding(t + 0.1, "vllm", "hang", "cleared", "tokens again")])
    with short_tmpdir() as root:
        gone, imported = ctl("status", "--socket", str(root / "none.sock"))
        assert gone.returncode == 3 and "does not exist" in gone.stderr and "pydantic" not in imported
        config = root / "watchdog.toml"
        config.write_text("[watchdog\n")
        syntax, _ = ctl("--config", str(config), "status")
        assert syntax.returncode == 2 and "TOML syntax error" in syntax.stderr and syntax.stdout == ""
        config.write_text("[watchdog]\ncontrol_socket = 5\n")
        wrong, _ = ctl("--config", str(config), "status")
        assert wrong.returncode == 2 and "watchdog.control_socket: expected text, got 5" in wrong.stderr
        # A config invalid elsewhere: the daemon runs on the config it loaded before, so status still
        # reaches it (the broken edit is reported by `config check` and refused by a reload).
        config.write_text(f'[watchdog]\ncontrol_socket = "{sock}"\npoll_intervall = 5\n')
        reached, imported = ctl("--config", str(config), "status")
        assert reached.returncode == 0 and "Targets" in reached.stdout and "pydantic" not in imported
        # ...and when nothing answers there, the config's problems are what to fix (exit 2).
        config.write_text(f'[watchdog]\ncontrol_socket = "{root / "none.sock"}"\npoll_intervall = 5\n')
        broken, _ = ctl("--config", str(config), "status")
        assert broken.returncode == 2 and "poll_intervall" in broken.stderr and "unknown key" in broken.stderr


class _Answers(BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self) -> None:  # the http.server API names it so
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass

    def address_string(self) -> str:
        return "unix"


@pytest.fixture
def not_a_daemon() -> Iterator[tuple[Path, type[_Answers]]]:
    """A unix-socket HTTP server that answers whatever its handler's ``body`` is."""
    handler = type("Answers", (_Answers,), {})
    with short_tmpdir() as root:
        path = root / "other.sock"
        server = socketserver.UnixStreamServer(str(path), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield path, handler
        finally:
            server.shutdown()
            server.server_close()


def test_an_answer_that_is_not_a_snapshot_is_an_error_not_a_traceback(not_a_daemon):
    path, handler = not_a_daemon
    handler.body = json.dumps({"state": "ok", "generated_at": "2026-12-01T00:00:00Z"}).encode()
    missing, _ = ctl("status", "--socket", str(path))
    assert missing.returncode == 3 and missing.stdout == ""
    assert "not a status snapshot: daemon: missing" in missing.stderr and "Traceback" not in missing.stderr
    handler.body = b"[1, 2]"
    as_json, _ = ctl("status", "--json", "--socket", str(path))
    assert as_json.returncode == 3 and as_json.stdout == "" and "expected an object" in as_json.stderr
