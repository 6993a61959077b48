"""systemd/inference-watchdog.service: systemd-analyze accepts it without a single warning."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.infra.system import InfraError, ensure_commands
from tests.paths import ROOT
from tests.support import unavailable

UNIT = ROOT / "systemd" / "inference-watchdog.service"
INSTALLED = "/etc/systemd/system/inference-watchdog.service"


def _system_unit_dir() -> Path | None:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "sysinit.target").exists():
            return candidate
    return None


def _verify_in_root(root: Path, unit_text: str) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify --root`` over a small root holding what the unit refers to.

    The root is what install.sh leaves on a host: the unit in /etc/systemd/system,
    an executable at the ExecStart path, /bin/kill for ExecReload, and systemd's
    own units (copied from this host) for the targets the unit is ordered against.
    """
    try:
        ensure_commands({"systemd-analyze": "systemd", "kill": "procps"})
    except InfraError as exc:
        unavailable(f"systemd-analyze: {exc}")
    units = _system_unit_dir()
    if units is None:
        unavailable("no systemd unit directory on this host to verify against")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "lib").symlink_to("usr/lib")
    shutil.copytree(units, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    kill = shutil.which("kill")
    assert kill is not None
    shutil.copy2(Path(kill).resolve(), root / "usr" / "bin" / "kill")
    watchdogctl = root / "opt" / "inference-watchdog" / "venv" / "bin" / "watchdogctl"
    watchdogctl.parent.mkdir(parents=True)
    watchdogctl.write_text("#!/bin/sh\nexit 0\n")
    watchdogctl.chmod(0o755)
    unit = root / INSTALLED.lstrip("/")
    unit.parent.mkdir(parents=True)
    unit.write_text(unit_text)
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", INSTALLED],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_systemd_analyze_verify_accepts_the_unit_with_empty_stderr(tmp_path: Path) -> None:
    done = _verify_in_root(tmp_path / "root", UNIT.read_text())
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo systemd only warns about shows up on stderr."""
    broken = UNIT.read_text().replace("Type=notify", "Type=notfy")
    done = _verify_in_root(tmp_path / "root", broken)
    assert "Failed to parse service type" in done.stderr


def _service_section() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            section = stripped
            continue
        if section == "[Service]":
            key, _, value = stripped.partition("=")
            values.setdefault(key, []).append(value)
    return values


CONTRACT = {
    # What the daemon (sd_notify from its main process) and install.sh rely on.
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecStart": "/opt/inference-watchdog/venv/bin/watchdogctl --config /etc/inference-watchdog/watchdog.toml run",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "Restart": "on-failure",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "StateDirectory": "inference-watchdog",
    "RuntimeDirectory": "inference-watchdog",
    "PrivateTmp": "yes",
}


def test_unit_keeps_the_contract_the_daemon_and_installer_rely_on() -> None:
    service = _service_section()
    assert {key: service.get(key) for key in CONTRACT} == {key: [value] for key, value in CONTRACT.items()}


def test_no_hardening_option_hides_what_the_watchdog_must_see() -> None:
    service = _service_section()
    # Other processes' /proc entries, the GPUs' device nodes: both must stay visible.
    assert service.get("ProtectProc", ["default"]) == ["default"]
    assert service.get("PrivateDevices", ["no"]) == ["no"]
    assert service.get("WatchdogSec") and service.get("RestartSec")
