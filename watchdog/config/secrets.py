"""Secrets by reference: ``env:NAME`` or ``file:/path``.

The config never holds a webhook URL, a password or a token itself, only where
to read it. ``file:`` paths that are not absolute are looked up in
``$CREDENTIALS_DIRECTORY``, which systemd sets for ``LoadCredential=``.
A resolved secret is wrapped in :class:`SecretValue`, whose ``repr`` and
``str`` never show the value, so it cannot leak into logs by accident.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("env", "file")


class SecretError(Exception):
    """A secret reference that cannot be resolved right now."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret lives. Safe to print: it holds no secret."""

    scheme: str
    location: str

    @classmethod
    def parse(cls, text: object) -> "SecretRef":
        if not isinstance(text, str):
            raise ValueError(
                f'expected a secret reference like "env:NAME" or "file:/path", '
                f"got {type(text).__name__}"
            )
        scheme, sep, location = text.partition(":")
        if not sep or scheme not in SCHEMES or not location.strip():
            # Never echo the value: it may be the secret itself, pasted by mistake.
            raise ValueError(
                'expected a secret reference like "env:NAME" or "file:/path" '
                "(secrets are never written into the config itself)"
            )
        return cls(scheme, location.strip())

    def __str__(self) -> str:
        return f"{self.scheme}:{self.location}"

    def resolve(self, environ: dict[str, str] | None = None) -> "SecretValue":
        env = os.environ if environ is None else environ
        if self.scheme == "env":
            value = env.get(self.location)
            if value is None or value == "":
                raise SecretError(f"environment variable {self.location} is not set")
            return SecretValue(value)
        path = Path(self.location)
        if not path.is_absolute():
            creds = env.get("CREDENTIALS_DIRECTORY")
            if not creds:
                raise SecretError(
                    f"relative secret file {self.location!r} needs $CREDENTIALS_DIRECTORY "
                    "(systemd LoadCredential=)"
                )
            path = Path(creds) / path
        try:
            return SecretValue(path.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None


class SecretValue:
    """A resolved secret. Printing it shows a mask, never the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call only where it is sent to its destination."""
        return self._value

    def __repr__(self) -> str:
        return "SecretValue('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretValue) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
