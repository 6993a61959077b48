"""scripts/install.sh, for real: under systemd (PID 1 in a container), from a wheelhouse."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.infra.docker_engine import docker_engine  # noqa: F401 - fixture
from tests.infra.systemd_container import SystemdContainer, systemd_container, systemd_image  # noqa: F401
from tests.infra.wheelhouse import wheelhouse  # noqa: F401 - fixture
from tests.paths import ROOT
from tests.support import wait_for
from watchdog import __version__

SCRIPT = ROOT / "scripts" / "install.sh"
SRC = "/usr/src/inference-watchdog"
WHEELS = "/var/cache/iw-wheelhouse"
UNIT = "inference-watchdog.service"
VENV = "/opt/inference-watchdog/venv"
CONFIG = "/etc/inference-watchdog/watchdog.toml"
STATE = "/var/lib/inference-watchdog"


def _install(box: SystemdContainer, *args: str, check: bool = True):
    return box.exec([f"{SRC}/scripts/install.sh", *args], timeout=300, check=check)


def _copy_tree_and_wheels(box: SystemdContainer, wheels: Path) -> None:
    box.copy_in(ROOT, "/usr/src", name="inference-watchdog")
    box.copy_in(wheels, "/var/cache", name="iw-wheelhouse")


# --------------------------------------------------------------------------- without systemd


def test_help_describes_every_option() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    for option in ("--wheelhouse", "--python", "--now", "--uninstall", "--help"):
        assert option in done.stdout


def test_unknown_option_is_a_usage_error() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "unknown argument: --frobnicate" in done.stderr


# --------------------------------------------------------------------------- under systemd


@pytest.mark.slow
def test_install_is_idempotent_keeps_config_and_uninstall_keeps_state(
    systemd_container: SystemdContainer, wheelhouse: Path
) -> None:
    box = systemd_container
    _copy_tree_and_wheels(box, wheelhouse)

    refused = box.exec(["runuser", "-u", "nobody", "--", f"{SRC}/scripts/install.sh"], check=False)
    assert refused.exit_code == 1
    assert "must run as root" in refused.stderr
    assert box.exec(["test", "-e", VENV], check=False).exit_code != 0

    first = _install(box, "--wheelhouse", WHEELS)
    assert f"wrote {CONFIG} from the example" in first.stdout
    assert box.exec(["systemctl", "is-enabled", UNIT]).stdout.strip() == "enabled"
    assert box.exec(["systemctl", "is-active", UNIT], check=False).stdout.strip() == "inactive"  # no --now
    assert box.exec(["watchdogctl", "--version"]).stdout.strip() == f"watchdogctl, version {__version__}"
    assert box.exec(["readlink", "/usr/local/bin/watchdogctl"]).stdout.strip() == f"{VENV}/bin/watchdogctl"
    assert box.read_file(CONFIG) == (ROOT / "config" / "watchdog.example.toml").read_text()
    assert box.read_file(f"/etc/systemd/system/{UNIT}") == (ROOT / "systemd" / UNIT).read_text()
    assert box.exec(["stat", "-c", "%a", STATE, "/etc/inference-watchdog/credentials"]).stdout.split() == [
        "750",
        "700",
    ]
    # The installed unit, against the real binaries it names: no warning at all.
    verified = box.exec(["systemd-analyze", "verify", f"/etc/systemd/system/{UNIT}"], check=False)
    assert (verified.exit_code, verified.stderr) == (0, "")
    assert box.exec(["watchdogctl", "config", "check", CONFIG]).exit_code == 0

    # An operator edits the config; a second run (an upgrade) keeps it and changes nothing else.
    edited = box.read_file(CONFIG).replace('log_level = "INFO"', 'log_level = "DEBUG"')
    assert edited != box.read_file(CONFIG)
    box.write_file(CONFIG, edited, mode=0o640)
    box.write_file(f"{STATE}/incidents.db", "pretend state\n")
    second = _install(box, "--wheelhouse", WHEELS)
    assert f"kept the existing {CONFIG}" in second.stdout
    assert "using the existing virtual environment" in second.stdout
    assert box.read_file(CONFIG) == edited
    assert box.exec(["systemctl", "is-enabled", UNIT]).stdout.strip() == "enabled"
    assert box.exec(["watchdogctl", "--version"]).exit_code == 0

    # --now never starts the service on a config that does not pass the check.
    box.write_file(CONFIG, edited.replace('log_level = "DEBUG"', 'log_level = "LOUD"'), mode=0o640)
    refused = _install(box, "--wheelhouse", WHEELS, "--now", check=False)
    assert refused.exit_code == 1
    assert f"not starting {UNIT}: {CONFIG} is not valid" in refused.stderr
    assert box.exec(["systemctl", "is-active", UNIT], check=False).stdout.strip() == "inactive"
    box.write_file(CONFIG, edited, mode=0o640)

    removed = _install(box, "--uninstall")
    assert "kept /etc/inference-watchdog" in removed.stdout
    for gone in (VENV, "/usr/local/bin/watchdogctl", f"/etc/systemd/system/{UNIT}"):
        assert box.exec(["test", "-e", gone], check=False).exit_code != 0, f"{gone} still there"
    assert box.read_file(CONFIG) == edited
    assert box.read_file(f"{STATE}/incidents.db") == "pretend state\n"
    assert box.show(UNIT, "LoadState")["LoadState"] == "not-found"
    # Uninstalling what is not there is fine too.
    assert _install(box, "--uninstall").exit_code == 0


HARDENING_PROBE = r"""
import errno, os, sdnotify
state = os.environ["STATE_DIRECTORY"]
open(os.path.join(state, "probe"), "w").write("ok")
checks = {
    "state dir writable": os.path.exists(os.path.join(state, "probe")),
    "other processes' cgroups readable": "/" in open("/proc/1/cgroup").read(),
    "/etc read-only": not os.access("/etc", os.W_OK),
    "credential readable": open(os.path.join(os.environ["CREDENTIALS_DIRECTORY"], "smtp-password")).read() == "s3cret\n",
}
try:
    open("/usr/iw-probe", "w")
    checks["/usr read-only"] = False
except OSError:
    checks["/usr read-only"] = True
try:
    os.close(os.open("/dev/nvidia0", os.O_RDWR))
    checks["GPU device node openable"] = True
except OSError as exc:
    # No NVIDIA driver in the test: ENXIO. A device policy shutting it out: EPERM.
    checks["GPU device node openable"] = exc.errno == errno.ENXIO
failed = [name for name, ok in checks.items() if not ok]
notifier = sdnotify.SystemdNotifier()
notifier.notify("READY=1\nSTATUS=" + ("hardening ok" if not failed else "failed: " + ", ".join(failed)))
import time
wedge = os.path.join(state, "wedge")
while not os.path.exists(wedge):  # a wedged main loop: no more WATCHDOG=1
    notifier.notify("WATCHDOG=1")
    time.sleep(0.5)
os.unlink(wedge)
time.sleep(3600)
"""


@pytest.mark.slow
def test_the_hardened_unit_starts_notifies_and_is_restarted_when_wedged(
    systemd_container: SystemdContainer, wheelhouse: Path
) -> None:
    """The unit's sandbox, credentials, Type=notify and WatchdogSec work under a real systemd.

    ExecStart is replaced (drop-in) by a small program in the installed venv that
    checks from inside what the daemon relies on, and reports it through STATUS=.
    """
    box = systemd_container
    _copy_tree_and_wheels(box, wheelhouse)
    _install(box, "--wheelhouse", WHEELS)
    box.write_file("/usr/local/lib/iw-probe.py", HARDENING_PROBE)
    box.exec(["mknod", "-m", "666", "/dev/nvidia0", "c", "195", "0"])  # as NVIDIA's driver makes it
    box.write_file("/etc/inference-watchdog/credentials/smtp-password", "s3cret\n", mode=0o600)
    box.write_file(
        f"/etc/systemd/system/{UNIT}.d/probe.conf",
        "[Service]\nExecStart=\n"
        f"ExecStart={VENV}/bin/python /usr/local/lib/iw-probe.py\n"
        "LoadCredential=smtp-password:/etc/inference-watchdog/credentials/smtp-password\n"
        "WatchdogSec=3s\nRestartSec=500ms\n",
    )
    box.exec(["systemctl", "daemon-reload"])
    started = box.exec(["systemctl", "start", UNIT], timeout=60, check=False)
    assert started.exit_code == 0, box.journal(UNIT)
    shown = box.show(UNIT, "ActiveState", "SubState", "StatusText", "NRestarts")
    assert shown["ActiveState"] == "active", box.journal(UNIT)
    assert shown["StatusText"] == "hardening ok", shown
    assert box.read_file(f"{STATE}/probe") == "ok"

    # Its main loop stops pinging: systemd kills it through WatchdogSec and starts it again.
    box.write_file(f"{STATE}/wedge", "")

    def restarted() -> dict[str, str] | None:
        now = box.show(UNIT, "NRestarts", "ActiveState", "StatusText")
        return now if int(now["NRestarts"]) == 1 and now["ActiveState"] == "active" and now["StatusText"] else None

    wait_for(restarted, 30, "systemd to restart the unit after its watchdog timeout")
    journal = box.journal(UNIT)
    assert "Watchdog timeout (limit 3s)!" in journal, journal
    assert "Failed with result 'watchdog'" in journal, journal
    box.exec(["systemctl", "stop", UNIT])


# --------------------------------------------------------------------------- end to end


def _missing_daemon_parts() -> list[str]:
    from watchdog.cli import cli

    missing = [f"watchdogctl {name}" for name in ("run", "debug") if name not in cli.commands]
    try:
        import watchdog.sim  # noqa: F401
    except ImportError:
        missing.append("watchdog.sim")
    return missing


WEDGE_CONFIG = """
[watchdog]
log_format = "json"
log_level = "INFO"
gpu_backend = "none"

[policy]
mode = "observe"

[[targets]]
name = "sim-ollama"
kind = "ollama"
url = "http://127.0.0.1:{port}"
unit = "iw-sim-ollama.service"

[targets.canary]
interval = "5s"

[debug]
allow_wedge = true
"""


@pytest.mark.slow
@pytest.mark.xfail(
    bool(_missing_daemon_parts()),
    reason=f"needs {', '.join(_missing_daemon_parts())} (being written in parallel)",
    run=False,  # it cannot pass before they exist; once they do, it runs and must pass
    strict=False,
)
def test_installed_service_watches_a_server_and_systemd_restarts_it_when_wedged(
    systemd_container: SystemdContainer, wheelhouse: Path
) -> None:
    box = systemd_container
    _copy_tree_and_wheels(box, wheelhouse)
    _install(box, "--wheelhouse", WHEELS)
    port = 11434
    box.exec(
        ["systemd-run", "--unit=iw-sim-ollama", f"{VENV}/bin/python", "-m", "watchdog.sim",
         "--kind", "ollama", "--port", str(port)]
    )
    wait_for(
        lambda: box.exec([f"{VENV}/bin/python", "-c",
                          f"import httpx; httpx.get('http://127.0.0.1:{port}/api/version').raise_for_status()"],
                         check=False, timeout=10).exit_code == 0,
        30,
        "the simulated Ollama to answer",
    )
    box.write_file(CONFIG, WEDGE_CONFIG.format(port=port), mode=0o640)
    # A short watchdog interval for the test; production keeps the unit's 30s.
    box.write_file(f"/etc/systemd/system/{UNIT}.d/test.conf", "[Service]\nWatchdogSec=5s\nRestartSec=1s\n")
    box.exec(["systemctl", "daemon-reload"])
    box.exec(["systemctl", "start", UNIT], timeout=200)

    def running_with_status() -> dict[str, str] | None:
        shown = box.show(UNIT, "ActiveState", "StatusText", "NRestarts", "MainPID")
        return shown if shown["ActiveState"] == "active" and shown["StatusText"] else None

    before = wait_for(running_with_status, 60, "the service active with a STATUS line")
    assert "sim-ollama" in before["StatusText"] or re.search(r"\d+ target", before["StatusText"]), before

    box.exec(["watchdogctl", "--config", CONFIG, "debug", "wedge", "--seconds", "60"], timeout=30)

    def restarted() -> dict[str, str] | None:
        shown = box.show(UNIT, "ActiveState", "NRestarts", "MainPID")
        return shown if int(shown["NRestarts"]) > int(before["NRestarts"]) and shown["ActiveState"] == "active" else None

    after = wait_for(restarted, 40, "systemd to restart the wedged daemon through WatchdogSec")
    assert after["MainPID"] != before["MainPID"]
    journal = box.journal(UNIT, lines=300)
    assert "Watchdog timeout" in journal, journal
    assert "Failed with result 'watchdog'" in journal, journal
    wait_for(running_with_status, 60, "the restarted service active with a STATUS line")
