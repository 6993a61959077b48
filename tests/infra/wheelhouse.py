"""A wheelhouse of the package and its runtime dependencies, for ``install.sh --wheelhouse``.

The systemd image runs Debian 12's Python 3.11, so wheels built by this (3.11)
interpreter install there. Dependency wheels are cached under /tmp keyed by
pyproject.toml; our own wheel is rebuilt from the working tree every session.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.infra.system import InfraError, cached_file, recipe_key, run
from tests.paths import ROOT
from tests.support import unavailable

TARGET_PYTHON = (3, 11)  # Debian 12's, in the systemd image


def _pip_wheel(args: list[str], dest: Path) -> None:
    run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", *args, "-w", str(dest)],
        timeout=600,
        what="pip wheel",
    )


def build_wheelhouse(dest: Path) -> Path:
    """Fill ``dest`` with inference-watchdog's wheel and its dependencies' wheels."""
    if sys.version_info[:2] != TARGET_PYTHON:
        raise InfraError(
            f"wheels for the systemd image need Python {TARGET_PYTHON[0]}.{TARGET_PYTHON[1]}, "
            f"this is {sys.version_info[0]}.{sys.version_info[1]}"
        )
    key = recipe_key((ROOT / "pyproject.toml").read_text(), sys.version)

    def build_deps(partial: Path) -> None:
        work = partial.with_suffix(".d")
        shutil.rmtree(work, ignore_errors=True)
        _pip_wheel([str(ROOT)], work)
        for own in work.glob("inference_watchdog-*.whl"):
            own.unlink()
        shutil.make_archive(str(partial), "tar", work)
        Path(f"{partial}.tar").rename(partial)
        shutil.rmtree(work, ignore_errors=True)

    deps = cached_file(f"wheels-{key}.tar", build_deps)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.unpack_archive(deps, dest, "tar")
    _pip_wheel(["--no-deps", str(ROOT)], dest)
    if not list(dest.glob("inference_watchdog-*.whl")):
        raise InfraError(f"pip wheel left no inference_watchdog wheel in {dest}")
    return dest


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of wheels: the package (from this working tree) and its dependencies."""
    try:
        return build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))
    except InfraError as exc:
        unavailable(f"wheelhouse: {exc}")
        raise  # unreachable
