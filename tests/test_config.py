"""The config file: valid examples pass, every broken one names its key path and exits 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from watchdog.cli import cli
from watchdog.config import ConfigError, load_config, parse_config
from watchdog.config.durations import format_duration, parse_duration
from watchdog.config.model import (
    CanarySettings,
    CloudWatchSettings,
    Config,
    DetectSettings,
    EmfSettings,
    MetricsSettings,
    PolicySettings,
    PrometheusSettings,
    RestartSettings,
    TargetSettings,
    WatchdogSettings,
)
from watchdog.config.secrets import SecretError, SecretRef

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "watchdog.example.toml"

MINIMAL_TARGET = """
[[targets]]
name = "ollama"
kind = "ollama"
url = "http://127.0.0.1:11434"
unit = "ollama.service"
"""


def run_check(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "watchdog.toml"
    path.write_text(textwrap.dedent(text))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    return result.exit_code, result.output


def test_example_config_is_valid() -> None:
    result = CliRunner().invoke(cli, ["config", "check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output
    assert "2 target(s)" in result.output


def test_example_documents_every_key() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    target = raw["targets"][0]
    sections = [
        (raw["watchdog"], WatchdogSettings, "watchdog"),
        (raw["detect"], DetectSettings, "detect"),
        (raw["policy"], PolicySettings, "policy"),
        (target["canary"], CanarySettings, "targets.canary"),
        (target["restart"], RestartSettings, "targets.restart"),
        (raw["metrics"], MetricsSettings, "metrics"),
        (raw["metrics"]["prometheus"], PrometheusSettings, "metrics.prometheus"),
        (raw["metrics"]["cloudwatch"], CloudWatchSettings, "metrics.cloudwatch"),
        (raw["metrics"]["emf"], EmfSettings, "metrics.emf"),
    ]
    example_text = EXAMPLE.read_text()
    for table, model, where in sections:
        # Per-target overrides (no default of their own) may be shown commented out.
        missing = [
            key for key, field in model.model_fields.items()
            if key not in table and not (field.get_default(call_default_factory=True) in (None, {}) and f"\n# {key} =" in example_text)
        ]
        assert not missing, f"[{where}] in the example lacks {missing}"
    # Target keys may be shown commented out (optional overrides), but every one is shown.
    for key in TargetSettings.model_fields:
        shown = (f"\n{key} =", f"\n# {key} =", f"\n[targets.{key}]")
        assert any(form in example_text for form in shown), key


def test_example_values_are_the_defaults() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    config = parse_config(EXAMPLE.read_text())
    assert config.watchdog == WatchdogSettings()
    assert config.detect == DetectSettings()
    assert config.policy == PolicySettings()
    assert config.targets[0].canary == CanarySettings()
    assert config.targets[0].restart == RestartSettings()
    assert config.metrics == MetricsSettings()
    assert raw["targets"][0]["request_timeout"] == "5s"


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        (
            MINIMAL_TARGET + '[targets.canary]\ntimeout = "soon"\n',
            "targets[0].canary.timeout",
            'expected a duration like "30s", got "soon"',
        ),
        (
            "[watchdog]\nlog_fromat = \"json\"\n" + MINIMAL_TARGET,
            "watchdog.log_fromat",
            'unknown key (did you mean "log_format"?)',
        ),
        (
            MINIMAL_TARGET.replace('kind = "ollama"', 'kind = "olama"'),
            "targets[0].kind",
            'expected one of "ollama", "vllm", "llamacpp" or "openai", got "olama"',
        ),
        (
            MINIMAL_TARGET.replace("http://127.0.0.1:11434", "ftp://127.0.0.1:11434"),
            "targets[0].url",
            "expected an http(s) URL",
        ),
        (
            MINIMAL_TARGET + MINIMAL_TARGET,
            "targets[1].name",
            'duplicate target name "ollama" (already used by targets[0])',
        ),
        (
            '[policy]\nmode = "act"\n' + MINIMAL_TARGET.replace('unit = "ollama.service"', ""),
            "targets[0]",
            "no way to restart this target",
        ),
        (
            MINIMAL_TARGET + "[targets.canary]\nmax_tokens = 0\n",
            "targets[0].canary.max_tokens",
            "expected a value >= 1, got 0",
        ),
        (
            MINIMAL_TARGET + 'gpus = "all"\n',
            "targets[0].gpus",
            'expected "auto" or a list of GPU indexes',
        ),
        (
            MINIMAL_TARGET + '[[alerts]]\nname = "s"\nkind = "slack"\nwebhook_url = "https://hooks.example/T0/B0/x"\n',
            "alerts[0].webhook_url",
            'expected a secret reference like "env:NAME" or "file:/path"',
        ),
        (
            MINIMAL_TARGET + '[[alerts]]\nname = "p"\nkind = "pager"\n',
            "alerts[0].kind",
            'expected one of "slack", "webhook", "email", "apprise", got "pager"',
        ),
        (
            MINIMAL_TARGET.replace('name = "ollama"', "url2 = 1"),
            "targets[0].name",
            "required key is missing",
        ),
        (
            '[policy]\nmax_restarts = "three"\n' + MINIMAL_TARGET,
            "policy.max_restarts",
            'expected a whole number, got "three"',
        ),
        (
            MINIMAL_TARGET + "[targets.detect]\nstall_afterr = \"10s\"\n",
            "targets[0].detect.stall_afterr",
            'unknown key (did you mean "stall_after"?)',
        ),
        (
            MINIMAL_TARGET + '[targets.restart]\nmethod = "command"\n',
            "targets[0]",
            'restart.method = "command" needs restart.command',
        ),
        (
            MINIMAL_TARGET + 'process_match = "([unclosed"\n',
            "targets[0].process_match",
            "expected a regular expression",
        ),
        (
            '[watchdog]\ngpu_backend = "sim"\n' + MINIMAL_TARGET,
            "watchdog",
            "needs sim_gpu_dir",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and "\n" not in v and len(v) < 40 else None,
)
def test_broken_config_names_the_key_path(tmp_path: Path, text: str, path: str, expected: str) -> None:
    code, output = run_check(tmp_path, text)
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.startswith(str(tmp_path))]
    assert any(f": {path}: " in line and expected in line for line in lines), output


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    text = MINIMAL_TARGET + MINIMAL_TARGET.replace("http://", "gopher://") + (
        '[targets.canary]\ninterval = "often"\n[policy]\nmode = "yolo"\n'
    )
    code, output = run_check(tmp_path, text)
    assert code == 2
    for path in ("targets[1].url", "targets[1].canary.interval", "policy.mode", "targets[1].name"):
        assert f": {path}: " in output, (path, output)
    assert "problem(s)" in output


def test_literal_secret_is_never_echoed(tmp_path: Path) -> None:
    secret = "xoxb-super-secret-token-123"
    code, output = run_check(
        tmp_path, MINIMAL_TARGET + f'[[alerts]]\nname = "s"\nkind = "slack"\nwebhook_url = "{secret}"\n'
    )
    assert code == 2
    assert secret not in output


def test_observe_mode_needs_no_restart_method() -> None:
    config = parse_config('[policy]\nmode = "observe"\n' + MINIMAL_TARGET.replace('unit = "ollama.service"', ""))
    assert config.targets[0].restart_method() == "none"


def test_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    code, output = run_check(tmp_path, "[watchdog]\nstate_dir = \n")
    assert code == 2
    assert "line 2, column" in output
    assert "watchdog.toml" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("kind", ["missing", "directory", "unreadable", "not-utf8"])
def test_unusable_file_exits_2_with_its_name(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "watchdog.toml"
    if kind == "directory":
        path.mkdir()
    elif kind == "unreadable":
        # Unreadable even for root: reading a process's memory map at offset 0 fails with EIO.
        path = Path("/proc/self/mem")
    elif kind == "not-utf8":
        path.write_bytes(b"[watchdog]\nhost = \"\xff\xfe\"\n")
    # The real console entry point, in a fresh process: no traceback, exit 2.
    result = subprocess.run(
        [sys.executable, "-m", "watchdog", "--config", str(path), "config", "check"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_config_env_variable_and_global_option(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(MINIMAL_TARGET)
    runner = CliRunner()
    result = runner.invoke(cli, ["config", "check"], env={"INFERENCE_WATCHDOG_CONFIG": str(good)})
    assert result.exit_code == 0, result.output
    assert str(good) in result.output
    result = runner.invoke(cli, ["--config", str(tmp_path / "nope.toml"), "config", "check"])
    assert result.exit_code == 2
    assert "nope.toml: file not found" in result.output


def test_target_overrides_merge_with_global_detect() -> None:
    config = parse_config(
        '[detect]\nstall_after = "20s"\nunload_grace = "30s"\n' + MINIMAL_TARGET
        + '[targets.detect]\nstall_after = "5s"\n'
    )
    thresholds = config.detect_for(config.targets[0])
    assert thresholds.stall_after == 5.0
    assert thresholds.unload_grace == 30.0


def test_durations() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25
    assert parse_duration(12) == 12
    for bad in ("soon", "", "5 parsecs", "-3s", True, -1):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert format_duration(90) == "1m30s"
    assert format_duration(0.25) == "250ms"
    assert format_duration(2.5) == "2.5s"


def test_secret_references(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    assert SecretRef.parse("env:TOKEN").resolve({"TOKEN": "abc"}).reveal() == "abc"
    assert SecretRef.parse(f"file:{tmp_path}/token").resolve({}).reveal() == "s3cret"
    relative = SecretRef.parse("file:token")
    assert relative.resolve({"CREDENTIALS_DIRECTORY": str(tmp_path)}).reveal() == "s3cret"
    with pytest.raises(SecretError, match="CREDENTIALS_DIRECTORY"):
        relative.resolve({})
    with pytest.raises(SecretError, match="TOKEN is not set"):
        SecretRef.parse("env:TOKEN").resolve({})
    value = SecretRef.parse("env:TOKEN").resolve({"TOKEN": "abc"})
    assert "abc" not in repr(value) and "abc" not in str(value) and "abc" not in f"{value}"


def test_load_config_raises_only_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.problems[0].message == "file not found"
    assert isinstance(Config(), Config)
