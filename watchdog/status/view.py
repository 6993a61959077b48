"""The status snapshot as plain read-only data, built from the daemon's JSON without pydantic.

``watchdogctl status`` only reads a snapshot to print it: validating it through
the pydantic models of :mod:`watchdog.status.model` cost 110-180 ms of a
330 ms command (importing pydantic, its plugin loader reading every installed
package's metadata, building the schemas; issue 15). The classes here mirror
those models field for field (names, types, defaults; ``tests/test_cli_fast.py``
holds the two together), so the renderer takes either. :func:`snapshot_view`
checks what the renderer relies on (types, the allowed states, ISO times) and
raises :class:`SnapshotError` for anything else, as the models would; unknown
keys are ignored, as the models ignore them.

Plain classes, not dataclasses: creating these 14 as frozen dataclasses took
15 ms on the development machine, as plain classes about 1 ms.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

SCHEMA_VERSION = 1

if TYPE_CHECKING:
    Health = Literal["ok", "degraded", "critical", "unknown"]
    Severity = Literal["warning", "critical"]
    SinkState = Literal["ok", "failing", "idle"]

# The models' Literal fields: the annotations below stay strings (``from __future__ import
# annotations``) and _value reads them, so these names are checked here at run time.
_CHOICES: dict[str, tuple[str, ...]] = {
    "Health": ("ok", "degraded", "critical", "unknown"),
    "Severity": ("warning", "critical"),
    "SinkState": ("ok", "failing", "idle"),
}


class SnapshotError(ValueError):
    """The daemon's answer is not a status snapshot this client can show."""


class _Empty:
    """The default of a list field: a new empty list in each view (as ``default_factory=list``)."""

    def __repr__(self) -> str:
        return "EMPTY"


EMPTY: Any = _Empty()


class _View:
    """A read-only record whose fields are its class's annotations; a class attribute is a
    field's default (a field without one is required)."""

    _fields: ClassVar[dict[str, str]]

    def __init_subclass__(cls) -> None:
        cls._fields = dict(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063 - inspect costs an import

    def __init__(self, **values: Any) -> None:
        for name in self._fields:
            if name in values:
                value = values[name]
            elif (default := getattr(type(self), name, _Empty)) is EMPTY:
                value = []
            elif default is _Empty:
                raise TypeError(f"{type(self).__name__}: {name} is required")
            else:
                value = default
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class ActiveFinding(_View):
    finding: str
    severity: Severity
    summary: str
    since: datetime
    target: str


class IncidentRef(_View):
    id: int
    since: datetime
    severity: Severity
    findings: list[str]


class ServerStatus(_View):
    state: str
    error: str | None = None
    running: int | None = None
    waiting: int | None = None
    kv_cache_usage: float | None = None
    age_s: float


class ModelStatus(_View):
    name: str
    vram_mib: int | None = None
    expires_in_s: float | None = None


class CanaryStatus(_View):
    model: str | None = None
    ok: bool
    error: str | None = None
    ttft_s: float | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    age_s: float


class TargetGpu(_View):
    index: int
    util: float | None = None
    mem_used_mib: int | None = None
    mem_total_mib: int | None = None
    target_mem_mib: int | None = None


class ActionStatus(_View):
    state: str
    mode: str | None = None
    paused: bool = False
    paused_until: datetime | None = None
    paused_reason: str | None = None
    restarts_left: int | None = None
    max_restarts: int | None = None


class TargetStatus(_View):
    name: str
    kind: str
    state: Health
    server: ServerStatus | None = None
    models: list[ModelStatus] = EMPTY
    last_canary: CanaryStatus | None = None
    gpus: list[TargetGpu] = EMPTY
    findings: list[ActiveFinding] = EMPTY
    incident: IncidentRef | None = None
    canary_failures: int = 0
    action: ActionStatus | None = None


class XidStatus(_View):
    xid: int
    pid: int | None = None
    age_s: float


class GpuStatus(_View):
    index: int
    name: str = ""
    state: Health
    util: float | None = None
    mem_used_mib: int | None = None
    mem_total_mib: int | None = None
    temp_c: float | None = None
    power_w: float | None = None
    error: str | None = None
    age_s: float | None = None
    targets: list[str] = EMPTY
    xids: list[XidStatus] = EMPTY
    findings: list[ActiveFinding] = EMPTY
    incident: IncidentRef | None = None
    xid_errors: int = 0


class ReloadStatus(_View):
    at: datetime
    ok: bool
    message: str


class DaemonStatus(_View):
    version: str
    pid: int | None = None
    host: str = ""
    started_at: datetime | None = None
    uptime_s: float | None = None
    config_path: str | None = None
    mode: str | None = None
    ready: bool = False
    last_reload: ReloadStatus | None = None
    problems: list[str] = EMPTY


class AlertSinkStatus(_View):
    name: str
    kind: str
    state: SinkState
    pending: int = 0
    delivered: int = 0
    dropped: int = 0
    last_delivered_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None


class StatusSnapshot(_View):
    schema_version: int = SCHEMA_VERSION
    generated_at: datetime
    state: Health
    daemon: DaemonStatus
    targets: list[TargetStatus] = EMPTY
    gpus: list[GpuStatus] = EMPTY
    alerts: list[AlertSinkStatus] = EMPTY

    def target(self, name: str) -> TargetStatus | None:
        return next((t for t in self.targets if t.name == name), None)

    def gpu(self, index: int) -> GpuStatus | None:
        return next((g for g in self.gpus if g.index == index), None)


VIEWS: dict[str, type] = {cls.__name__: cls for cls in (
    ActiveFinding, IncidentRef, ServerStatus, ModelStatus, CanaryStatus, TargetGpu, ActionStatus, TargetStatus,
    XidStatus, GpuStatus, ReloadStatus, DaemonStatus, AlertSinkStatus, StatusSnapshot,
)}
"""Every view class by name: the same names as the pydantic models they mirror."""


def snapshot_view(data: Any) -> StatusSnapshot:
    """The snapshot in ``data`` (``GET /status``'s JSON, decoded), checked; SnapshotError if it is not one."""
    return _build(StatusSnapshot, data, "")


def _build(cls: type[_View], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise SnapshotError(f"{where or 'the snapshot'}: expected an object, got {_kind(data)}")
    values = {}
    for name, annotation in cls._fields.items():
        path = f"{where}.{name}" if where else name
        if name in data:
            values[name] = _value(annotation, data[name], path)
        elif not hasattr(cls, name):
            raise SnapshotError(f"{path}: missing")
    return cls(**values)


def _value(annotation: str, value: Any, path: str) -> Any:
    """``value`` checked against the (string) annotation of a field above."""
    if annotation.endswith(" | None"):
        return None if value is None else _value(annotation[: -len(" | None")], value, path)
    if annotation.startswith("list[") and annotation.endswith("]"):
        if not isinstance(value, list):
            raise SnapshotError(f"{path}: expected a list, got {_kind(value)}")
        return [_value(annotation[5:-1], item, f"{path}[{i}]") for i, item in enumerate(value)]
    check = _SCALARS.get(annotation)
    if check is not None:
        if not check(value):
            raise SnapshotError(f"{path}: expected {annotation}, got {_kind(value)}")
        return value
    if annotation == "datetime":
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                pass
        raise SnapshotError(f"{path}: expected an ISO 8601 time, got {_kind(value)}")
    if annotation in _CHOICES:
        if value not in _CHOICES[annotation]:
            raise SnapshotError(f"{path}: expected one of {', '.join(_CHOICES[annotation])}, got {_kind(value)}")
        return value
    return _build(VIEWS[annotation], value, path)


_SCALARS = {
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

