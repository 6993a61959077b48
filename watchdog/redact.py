"""Scrubbing secrets out of text that operators will read (status, history, recordings).

The config holds secrets only by reference, but resolved values travel: an
API key in an error message echoed by a server, a webhook URL in a log line,
``user:password@`` in a URL. Everything the daemon shows or persists from the
outside world goes through a :class:`Redactor`: it masks the exact values of
the configured secrets and a few patterns that are secrets whatever their value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"

# Shapes that are secrets whatever the configured values are.
_PATTERNS = (
    # scheme://user:password@host -> scheme://user:***@host
    (re.compile(r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)[^/\s@]+(?=@)"), r"\g<keep>" + MASK),
    # Authorization: Bearer xyz / Basic xyz. The scheme is written capitalised (or after
    # "Authorization:"), and a credential is not an ordinary word: "a basic environment" or
    # "the bearer cannot" stay as they are.
    (
        re.compile(r"(?P<keep>\bauthorization\b[\"']?\s*[:=]\s*[\"']?(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{4,}",
                   re.IGNORECASE),
        r"\g<keep>" + MASK,
    ),
    (
        re.compile(r"(?P<keep>\b(?:Bearer|Basic|BEARER|BASIC)\s+)(?![a-z]+(?:[\s,;:!?)\]'\"]|\.(?:\s|$)|$))[A-Za-z0-9._~+/=-]{6,}"),
        r"\g<keep>" + MASK,
    ),
    # Credentials in a query string: ?token=..., &api_key=..., &sig=...
    (
        re.compile(
            r"(?P<keep>[?&][A-Za-z0-9_.-]*(?:token|key|secret|password|passwd|sig|signature|auth)"
            r"[A-Za-z0-9_.-]*=)[^&\s\"'#]+",
            re.IGNORECASE,
        ),
        r"\g<keep>" + MASK,
    ),
    # api_key=..., token: ..., password = "..."
    (
        re.compile(
            r"(?P<keep>\b(?:api[_-]?key|token|secret|password|passwd)\b[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,;]{3,}",
            re.IGNORECASE,
        ),
        r"\g<keep>" + MASK,
    ),
)
# Values this short would mask ordinary words; a real secret is longer.
_MIN_KNOWN_LENGTH = 6


class Redactor:
    """Masks known secret values and secret-shaped text. Cheap enough for every record."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        values = {v for v in known if isinstance(v, str) and len(v) >= _MIN_KNOWN_LENGTH}
        # Longest first, so a secret that contains another is masked whole.
        self._known = sorted(values, key=len, reverse=True)

    @classmethod
    def from_config(cls, config: Any, environ: Mapping[str, str] | None = None) -> "Redactor":
        """A redactor for every secret the config refers to that can be resolved now.

        Unresolvable references are skipped: they hold nothing that could leak.
        """
        from watchdog.config.secrets import SecretError

        known: list[str] = []
        for ref in _secret_refs(config):
            try:
                known.append(ref.resolve(dict(environ) if environ is not None else None).reveal())
            except (SecretError, OSError):
                continue
        return cls(known)

    def text(self, value: str) -> str:
        for secret in self._known:
            if secret in value:
                value = value.replace(secret, MASK)
        for pattern, replacement in _PATTERNS:
            value = pattern.sub(replacement, value)
        return value

    def optional(self, value: str | None) -> str | None:
        return None if value is None else self.text(value)

    def data(self, value: Any) -> Any:
        """Every string inside a JSON-like value, redacted (a new value; the input is kept)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.data(v) for v in value]
        return value


def _secret_refs(node: Any) -> Iterable[Any]:
    """Every SecretRef inside a pydantic config (walks models, lists and dicts)."""
    from pydantic import BaseModel

    from watchdog.config.secrets import SecretRef

    if isinstance(node, SecretRef):
        yield node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _secret_refs(getattr(node, name))
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _secret_refs(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _secret_refs(value)


NO_SECRETS = Redactor()
