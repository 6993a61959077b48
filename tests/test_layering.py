"""The rooms' import rules (docs/architecture.md), checked by walking every module's imports with ``ast``.

Every import counts: top-level, inside functions, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "watchdog"

# detect/ decides from records alone: no I/O, no clock, no room that does I/O.
DETECT_FORBIDDEN = (
    "watchdog.probes", "watchdog.daemon", "watchdog.incidents", "watchdog.control", "watchdog.commands",
    "watchdog.sim", "watchdog.discover", "watchdog.status", "watchdog.cli", "watchdog.logs",
    "watchdog.act", "watchdog.notify", "watchdog.metrics",
    "httpx", "aiohttp", "psutil", "sqlite3", "docker", "pynvml", "socket", "subprocess", "os", "asyncio",
    "apscheduler", "sdnotify", "time", "loguru",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = _module_name(path).split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _offences(rooms: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{module} imports {imported}"
                  for module, imports in MODULES.items() if any(_under(module, r) for r in rooms)
                  for imported in imports if any(_under(imported, f) for f in forbidden))


def _importers_of(room: str, allowed: tuple[str, ...]) -> list[str]:
    return sorted(f"{module} imports {imported}"
                  for module, imports in MODULES.items()
                  if not _under(module, room) and not any(_under(module, a) for a in allowed)
                  for imported in imports if _under(imported, room))


def test_the_walk_sees_the_package() -> None:
    assert "watchdog.detect.engine" in MODULES and "watchdog.trace.records" in MODULES["watchdog.detect.engine"]


def test_detect_imports_no_io() -> None:
    assert _offences(("watchdog.detect",), DETECT_FORBIDDEN) == []


@pytest.mark.parametrize("forbidden", ["watchdog.sim", "watchdog.commands", "watchdog.daemon"])
def test_probes_do_not_import(forbidden: str) -> None:
    assert _offences(("watchdog.probes",), (forbidden,)) == []


def test_only_the_cli_imports_commands() -> None:
    assert _importers_of("watchdog.commands", ("watchdog.cli",)) == []


def test_only_the_cli_and_commands_import_the_daemon() -> None:
    assert _importers_of("watchdog.daemon", ("watchdog.cli", "watchdog.commands")) == []


@pytest.mark.parametrize("forbidden", ["watchdog.daemon", "watchdog.probes", "watchdog.commands", "watchdog.sim"])
def test_notify_is_a_listener_that_never_reaches_into_the_daemon(forbidden: str) -> None:
    assert _offences(("watchdog.notify",), (forbidden,)) == []


def test_the_rules_can_fail() -> None:
    """The checks above see a violation when there is one (the daemon imports probes and sim)."""
    assert _offences(("watchdog.daemon",), ("watchdog.probes",)) != []
    assert _importers_of("watchdog.probes", ()) != []
