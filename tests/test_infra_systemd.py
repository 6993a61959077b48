"""The systemd container fixture: a real systemd as PID 1 that runs and supervises units."""

from __future__ import annotations

import pytest

from tests.infra.docker_engine import docker_engine  # noqa: F401 - fixture
from tests.infra.systemd_container import SystemdContainer, systemd_container, systemd_image  # noqa: F401
from tests.support import wait_for

pytestmark = pytest.mark.slow


def test_systemd_is_pid_1_and_runs_transient_units(systemd_container: SystemdContainer) -> None:
    assert systemd_container.read_file("/proc/1/comm").strip() == "systemd"
    assert systemd_container.boot_state in ("running", "degraded")

    systemd_container.exec(["systemd-run", "--unit=iw-probe", "sleep", "600"])
    shown = wait_for(
        lambda: (s := systemd_container.show("iw-probe.service", "ActiveState", "MainPID"))["ActiveState"] == "active"
        and s,
        20,
        "the transient unit to be active",
    )
    main_pid = int(shown["MainPID"])
    assert main_pid > 1
    # Its process lives in the unit's cgroup, which is how the watchdog attributes it.
    cgroup = systemd_container.read_file(f"/proc/{main_pid}/cgroup")
    assert "/system.slice/iw-probe.service" in cgroup, cgroup


def test_systemd_restarts_a_unit_whose_process_dies(systemd_container: SystemdContainer) -> None:
    systemd_container.exec(
        ["systemd-run", "--unit=iw-crashy", "-p", "Restart=on-failure", "-p", "RestartSec=100ms",
         "/bin/sh", "-c", "sleep 600"]
    )
    first = int(wait_for(lambda: int(systemd_container.show("iw-crashy.service", "MainPID")["MainPID"]), 20,
                         "a main pid"))
    systemd_container.exec(["kill", "-KILL", str(first)])

    def restarted() -> dict[str, str] | None:
        shown = systemd_container.show("iw-crashy.service", "NRestarts", "MainPID", "ActiveState")
        return shown if int(shown["NRestarts"]) >= 1 and shown["ActiveState"] == "active" else None

    shown = wait_for(restarted, 20, "systemd to restart the killed unit")
    assert int(shown["MainPID"]) not in (0, first)


def test_files_copied_in_are_there(systemd_container: SystemdContainer, tmp_path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "hello.txt").write_text("hello from the host\n")
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    path = systemd_container.copy_in(tree, "/srv")
    assert path == "/srv/tree"
    assert systemd_container.read_file("/srv/tree/sub/hello.txt") == "hello from the host\n"
    assert systemd_container.exec(["test", "-e", "/srv/tree/__pycache__"], check=False).exit_code != 0
    systemd_container.write_file("/etc/iw/x.conf", "a = 1\n", mode=0o600)
    assert systemd_container.exec(["stat", "-c", "%a", "/etc/iw/x.conf"]).stdout.strip() == "600"
