"""Checks of a valid config against the machine it runs on (``config check``).

Validation (``load.py``) says whether the file is well formed; these checks say
whether it will work here. An ``env:`` or ``file:`` secret that cannot be read now
is valid config, yet the daemon would send unauthenticated requests or fail to
alert: ``config check`` warns about it, and ``--strict`` makes it an error.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from watchdog.config.load import Problem, format_path
from watchdog.config.secrets import SecretError, SecretRef


def secret_problems(config: BaseModel, environ: Mapping[str, str] | None = None) -> list[Problem]:
    """Every secret reference in ``config`` that cannot be resolved now, with its key path."""
    problems = []
    for path, ref in _refs(config, ()):
        try:
            ref.resolve(dict(environ) if environ is not None else None)
        except SecretError as exc:
            problems.append(Problem(format_path(path), f"secret {ref} cannot be read: {exc}"))
        except (OSError, ValueError) as exc:
            problems.append(Problem(format_path(path), f"secret {ref} cannot be read: {type(exc).__name__}"))
    return problems


def _refs(node: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], SecretRef]]:
    if isinstance(node, SecretRef):
        yield path, node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _refs(getattr(node, name), (*path, name))
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from _refs(value, (*path, str(key)))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _refs(value, (*path, index))
