"""Reading watchdog.toml into a :class:`Config`, with errors an operator can act on.

A broken file never produces a traceback: every problem is reported with the
file name and the key path (``targets[1].canary.timeout``), all of them at
once, so one run of ``watchdogctl config check`` shows everything to fix.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from watchdog.config.model import Config
from watchdog.config.paths import CONFIG_ENV, DEFAULT_CONFIG_PATH  # noqa: F401 - re-exported
from watchdog.config.read import (  # noqa: F401 - re-exported
    MAX_CONFIG_BYTES,
    MAX_NESTING,
    ConfigError,
    Problem,
    parse_toml,
    read_config_bytes,
    show_value,
)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file. Raises ConfigError, never anything else."""
    path = Path(path)
    raw_bytes = read_config_bytes(path)
    return parse_config(raw_bytes, str(path))


def parse_config(data: bytes | str, file: str = "<config>") -> Config:
    """Validate config text; ``file`` names it in errors."""
    return validate_config(parse_toml(data, file), file)


def validate_config(raw: dict[str, Any], file: str = "<config>") -> Config:
    problems = _duplicate_names(raw)
    policy = raw.get("policy")
    mode = policy.get("mode", "act") if isinstance(policy, dict) else "act"
    try:
        config = Config.model_validate(raw, context={"restarts_enabled": mode != "observe"})
    except ValidationError as exc:
        problems = [_describe(error, raw) for error in exc.errors()] + problems
        config = None
    if problems:
        raise ConfigError(file, _unique(problems))
    assert config is not None
    return config


def _duplicate_names(raw: dict[str, Any]) -> list[Problem]:
    problems = []
    for section, what in (("targets", "target"), ("alerts", "alert sink")):
        items = raw.get(section)
        if not isinstance(items, list):
            continue
        first_seen: dict[str, int] = {}
        for index, item in enumerate(items):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str):
                continue
            if name in first_seen:
                problems.append(
                    Problem(
                        f"{section}[{index}].name",
                        f'duplicate {what} name "{name}" (already used by {section}[{first_seen[name]}])',
                    )
                )
            else:
                first_seen[name] = index
    return problems


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    out = []
    for problem in problems:
        if problem not in seen:
            seen.add(problem)
            out.append(problem)
    return out


def _describe(error: Any, raw: dict[str, Any]) -> Problem:
    """Turn one pydantic error into a key path and a sentence for an operator."""
    loc, node = _real_location(error["loc"], raw)
    path = format_path(loc)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "extra_forbidden":
        key = loc[-1] if loc else ""
        return Problem(path, "unknown key" + _suggestion(str(key), _keys_at(loc[:-1])))
    if kind == "missing":
        return Problem(path, "required key is missing")
    if kind == "literal_error":
        return Problem(path, f"expected one of {_quoted(ctx.get('expected', ''))}, got {show_value(value)}")
    if kind in ("union_tag_invalid",):
        return Problem(path + ".kind" if path else "kind",
                       f"expected one of {_quoted(ctx.get('expected_tags', ''))}, got {show_value(ctx.get('tag'))}")
    if kind == "union_tag_not_found":
        return Problem(path + ".kind" if path else "kind", "required key is missing")
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return Problem(path, f"expected a whole number, got {show_value(value)}")
    if kind == "finite_number":
        return Problem(path, f"expected a finite number, got {show_value(value)}")
    if kind in ("float_parsing", "float_type"):
        return Problem(path, f"expected a number, got {show_value(value)}")
    if kind in ("bool_parsing", "bool_type"):
        return Problem(path, f"expected true or false, got {show_value(value)}")
    if kind == "string_type":
        return Problem(path, f"expected text, got {show_value(value)}")
    if kind == "list_type":
        return Problem(path, f"expected a list, got {show_value(value)}")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return Problem(path, f"expected a table, got {show_value(value)}")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "?")
        return Problem(path, f"expected a value {sign} {bound}, got {show_value(value)}")
    if kind == "too_short":
        return Problem(path, f"expected at least {ctx.get('min_length', 1)} item(s)")
    del node
    return Problem(path, error["msg"])


def _real_location(loc: tuple[Any, ...], raw: Any) -> tuple[tuple[Any, ...], Any]:
    """Drop the tags pydantic inserts for unions, keeping keys the file has."""
    kept: list[Any] = []
    node = raw
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str):
            if part in node:
                kept.append(part)
                node = node[part]
                continue
            if _is_tag(part):
                continue
            kept.append(part)  # a missing or unknown key: still part of the path
            node = None
            continue
        if isinstance(node, list) and isinstance(part, int):
            kept.append(part)
            node = node[part] if 0 <= part < len(node) else None
            continue
        if isinstance(part, str) and _is_tag(part):
            continue
        kept.append(part)
        node = None
    return tuple(kept), node


def _is_tag(part: str) -> bool:
    return part in ("slack", "webhook", "email") or "[" in part or part.startswith("function-")


def format_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys accepted at a path, by walking the schema along it."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return []
        model = _inner_model(fields[part].annotation)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    models = [m for arg in typing.get_args(annotation) if (m := _inner_model(arg)) is not None]
    if not models:
        return None
    if len(models) == 1:
        return models[0]
    # A union of sink types: accept the keys any of them has.
    merged = type("AnyOf", (), {"model_fields": {k: v for m in models for k, v in m.model_fields.items()}})
    return merged


def _suggestion(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if close:
        return f' (did you mean "{close[0]}"?)'
    if candidates:
        return f" (expected one of: {', '.join(candidates)})"
    return ""


def _quoted(expected: str) -> str:
    return expected.replace("'", '"')
