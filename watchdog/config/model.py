"""The configuration schema: what an operator may write in watchdog.toml.

Every section forbids unknown keys, so a typo is an error rather than a
setting silently ignored. Durations are written as text ("30s") and held as
float seconds. Secrets are held as :class:`SecretRef` (where to read them),
never as values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Literal, Union
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from watchdog.config.durations import format_duration, parse_duration
from watchdog.config.paths import DEFAULT_CONTROL_SOCKET, DEFAULT_STATE_DIR
from watchdog.config.secrets import SecretRef

SERVER_KINDS = ("ollama", "vllm", "llamacpp", "openai")
ServerKind = Literal["ollama", "vllm", "llamacpp", "openai"]
FINDINGS = (
    "hang",
    "down",
    "failed_unload",
    "memory_growth",
    "fragmentation",
    "oom",
    "degraded",
    "gpu_fault",
    "truncation",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _duration(value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise PydanticCustomError("duration", "{detail}", {"detail": str(exc)}) from None


def _secret(value: object) -> SecretRef:
    if isinstance(value, SecretRef):
        return value
    try:
        return SecretRef.parse(value)
    except ValueError as exc:
        raise PydanticCustomError("secret_ref", "{detail}", {"detail": str(exc)}) from None


def _positive_duration(value: object) -> float:
    seconds = _duration(value)
    if seconds <= 0:
        raise PydanticCustomError("positive_duration", 'expected a duration above zero like "30s", got {got}',
                                  {"got": repr(value)})
    return seconds


Duration = Annotated[
    float, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str, when_used="json")
]
#: Intervals, timeouts and windows: zero would mean "busy-loop", "always fail" or "keep nothing".
Positive = Annotated[
    float, BeforeValidator(_positive_duration), PlainSerializer(format_duration, return_type=str, when_used="json")
]
Secret = Annotated[SecretRef, BeforeValidator(_secret), PlainSerializer(str, return_type=str, when_used="json")]
Percent = Annotated[float, Field(ge=0, le=100)]


def _gpus(value: object) -> object:
    if value == "auto":
        return value
    if isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        return sorted(set(value))
    raise PydanticCustomError(
        "gpus", 'expected "auto" or a list of GPU indexes like [0, 1], got {got}', {"got": repr(value)}
    )


GpuSelection = Annotated[Union[Literal["auto"], list[int]], BeforeValidator(_gpus)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


class WatchdogSettings(Section):
    """Global settings: where state lives, how it logs, default sampling cadence."""

    state_dir: str = DEFAULT_STATE_DIR
    log_format: Literal["auto", "text", "json"] = "auto"
    log_level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    host: str = ""
    control_socket: str = DEFAULT_CONTROL_SOCKET
    control_group: str = ""
    gpu_backend: Literal["auto", "nvml", "sim", "none"] = "auto"
    sim_gpu_dir: str = ""
    gpu_interval: Positive = 2.0
    poll_interval: Positive = 5.0
    process_interval: Positive = 5.0
    recorder_window: Positive = 900.0
    incident_context: Duration = 300.0
    flap_window: Duration = 300.0

    @model_validator(mode="after")
    def _sim_needs_dir(self) -> "WatchdogSettings":
        if self.gpu_backend == "sim" and not self.sim_gpu_dir:
            raise PydanticCustomError(
                "sim_dir", 'gpu_backend = "sim" needs sim_gpu_dir (where the simulators write their GPUs)'
            )
        return self


class CanarySettings(Section):
    """A tiny prompt sent now and then to prove the server still generates."""

    enabled: bool = True
    models: list[str] = Field(default_factory=list)
    prompt: str = "Reply with the single word OK."
    max_tokens: int = Field(default=4, ge=1, le=512)
    interval: Positive = 15.0
    confirm_interval: Positive = 2.0
    connect_timeout: Positive = 3.0
    first_token_timeout: Positive = 8.0
    stall_timeout: Positive = 8.0
    timeout: Positive = 60.0

    @model_validator(mode="after")
    def _deadlines_fit(self) -> "CanarySettings":
        if self.timeout < self.first_token_timeout:
            raise PydanticCustomError(
                "deadlines", "timeout (the total deadline) must be at least first_token_timeout"
            )
        return self


Mode = Literal["act", "dry-run", "observe"]
#: What a rung of an escalation ladder may say (see watchdog/act/policy.py).
LADDER_STEPS = ("restart", "unload", "kill_orphans", "drain", "give_up")
#: The default ladders: the smallest action first, a restart only where it is what fixes it.
DEFAULT_LADDERS: dict[str, list[str]] = {
    "hang": ["restart", "restart", "give_up"],
    "down": ["restart", "give_up"],
    "failed_unload": ["unload", "kill_orphans", "restart", "give_up"],
    "memory_growth": ["drain", "restart", "give_up"],
    "fragmentation": ["drain", "restart", "give_up"],
    "degraded": ["drain", "restart", "give_up"],
    "oom": [],
    "gpu_fault": [],
}


def _ladders(value: object) -> object:
    if not isinstance(value, dict):
        return value
    for finding, steps in value.items():
        if finding not in FINDINGS:
            raise PydanticCustomError(
                "ladder", "unknown finding {got} (expected one of {known})",
                {"got": repr(finding), "known": ", ".join(FINDINGS)},
            )
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
            raise PydanticCustomError("ladder", "the ladder for {f} must be a list of steps", {"f": finding})
        for step in steps:
            if step not in LADDER_STEPS:
                raise PydanticCustomError(
                    "ladder", "unknown step {got} in the ladder for {f} (expected one of {known})",
                    {"got": repr(step), "f": finding, "known": ", ".join(LADDER_STEPS)},
                )
        if "give_up" in steps[:-1]:
            raise PydanticCustomError("ladder", "give_up can only be the last step (ladder for {f})", {"f": finding})
        if steps and steps[0] != "drain" and "drain" in steps:
            raise PydanticCustomError("ladder", "drain can only be the first step (ladder for {f})", {"f": finding})
    return value


Ladders = Annotated[dict[str, list[str]], BeforeValidator(_ladders)]
_WINDOW = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])$")


def _window(value: object) -> object:
    if value == "" or (isinstance(value, str) and _WINDOW.match(value)):
        return value
    raise PydanticCustomError(
        "window", 'expected a daily window in UTC like "02:00-04:00" (or "" for any time), got {got}',
        {"got": repr(value)},
    )


MaintenanceWindow = Annotated[str, BeforeValidator(_window)]


class RestartSettings(Section):
    """How the watchdog may restart this server, and per-target overrides of [policy]."""

    method: Literal["auto", "docker", "systemd", "command", "none"] = "auto"
    command: list[str] = Field(default_factory=list)
    timeout: Positive = 120.0
    #: Docker: seconds between SIGTERM and SIGKILL when stopping the container.
    stop_timeout: Positive = 10.0
    mode: Mode | None = None
    max_restarts: int | None = Field(default=None, ge=0)
    restart_window: Positive | None = None
    grace: Positive | None = None
    ladders: Ladders = Field(default_factory=dict)


class DetectSettings(Section):
    """Detector thresholds. Defaults work for Ollama, vLLM and llama.cpp untuned."""

    stall_after: Positive = 15.0
    busy_stall_after: Positive = 300.0
    step_stall_after: Positive = 45.0
    canary_failures: int = Field(default=2, ge=1, le=10)
    idle_util_percent: Percent = 10.0
    busy_cpu_percent: float = Field(default=50.0, ge=0)
    down_after: Positive = 15.0
    startup_grace: Duration = 600.0
    unload_grace: Duration = 10.0
    unload_release_fraction: float = Field(default=0.5, gt=0, le=1)
    growth_min_mib: int = Field(default=512, ge=1)
    growth_fraction: float = Field(default=0.05, ge=0)
    growth_window: Positive = 120.0
    degraded_factor: float = Field(default=4.0, gt=1)
    degraded_canaries: int = Field(default=3, ge=1)
    degraded_cause_factor: float = Field(default=2.0, gt=1)
    degraded_window: Positive = 120.0
    oom_clear_after: Duration = 600.0
    truncation_clear_after: Duration = 3600.0
    ignore_xids: list[int] = Field(default_factory=list)


class DetectOverrides(Section):
    """Per-target overrides of [detect]; a key left out takes the global value."""

    stall_after: Positive | None = None
    busy_stall_after: Positive | None = None
    step_stall_after: Positive | None = None
    canary_failures: int | None = Field(default=None, ge=1, le=10)
    idle_util_percent: Percent | None = None
    busy_cpu_percent: float | None = Field(default=None, ge=0)
    down_after: Positive | None = None
    startup_grace: Duration | None = None
    unload_grace: Duration | None = None
    unload_release_fraction: float | None = Field(default=None, gt=0, le=1)
    growth_min_mib: int | None = Field(default=None, ge=1)
    growth_fraction: float | None = Field(default=None, ge=0)
    growth_window: Positive | None = None
    degraded_factor: float | None = Field(default=None, gt=1)
    degraded_canaries: int | None = Field(default=None, ge=1)
    degraded_cause_factor: float | None = Field(default=None, gt=1)
    degraded_window: Positive | None = None
    oom_clear_after: Duration | None = None
    truncation_clear_after: Duration | None = None
    ignore_xids: list[int] | None = None

    def apply_to(self, base: DetectSettings) -> DetectSettings:
        changes = {k: v for k, v in self.model_dump().items() if v is not None}
        return base.model_copy(update=changes)


class TargetSettings(Section):
    """One supervised inference server."""

    name: str
    kind: ServerKind
    url: str
    enabled: bool = True
    api_key: Secret | None = None
    gpus: GpuSelection = "auto"
    container: str = ""
    unit: str = ""
    log_file: str = ""
    process_match: str = ""
    poll_interval: Positive | None = None
    process_interval: Positive | None = None
    request_timeout: Positive = 5.0
    canary: CanarySettings = Field(default_factory=CanarySettings)
    restart: RestartSettings = Field(default_factory=RestartSettings)
    detect: DetectOverrides = Field(default_factory=DetectOverrides)

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _NAME.match(value):
            raise PydanticCustomError(
                "target_name",
                "expected a name of letters, digits, '.', '_' or '-' (at most 63), got {got}",
                {"got": repr(value)},
            )
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.username is not None or parts.password is not None:
            # Never echo the URL: it holds a credential.
            raise PydanticCustomError(
                "http_url", "credentials do not belong in the URL: give the key as api_key = \"env:NAME\""
            )
        if parts.query or parts.fragment:
            # Never echo the URL: a query string is where tokens hide (?token=..., ?key=...).
            raise PydanticCustomError(
                "http_url", "a query string does not belong in the server URL (it may hold a credential): "
                "give the key as api_key = \"env:NAME\""
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PydanticCustomError(
                "http_url",
                'expected an http(s) URL like "http://127.0.0.1:11434", got {got}',
                {"got": repr(value)},
            )
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise PydanticCustomError("http_url", "the port in {got} is not a number", {"got": repr(value)}) from None
        return value.strip().rstrip("/")

    @field_validator("process_match")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise PydanticCustomError(
                "regex", "expected a regular expression: {detail}", {"detail": str(exc)}
            ) from None
        return value

    @model_validator(mode="after")
    def _restartable(self, info: ValidationInfo) -> "TargetSettings":
        restarts_enabled = bool((info.context or {}).get("restarts_enabled", True))
        if self.restart.mode is not None:
            restarts_enabled = self.restart.mode != "observe"
        if self.restart.method == "command" and not self.restart.command:
            raise PydanticCustomError(
                "restart", 'restart.method = "command" needs restart.command (a list of words)'
            )
        if self.restart.method == "docker" and not self.container:
            raise PydanticCustomError("restart", 'restart.method = "docker" needs container')
        if self.restart.method == "systemd" and not self.unit:
            raise PydanticCustomError("restart", 'restart.method = "systemd" needs unit')
        if restarts_enabled and self.enabled and self.restart_method() == "none" and self.restart.method == "auto":
            raise PydanticCustomError(
                "restart",
                "no way to restart this target while policy.mode is \"act\": set container, unit "
                'or restart.command, or say restart.method = "none"',
            )
        return self

    def gpus_seen(self, found: Iterable[int] = ()) -> list[int]:
        """The target's GPUs: the configured list, or (``gpus = "auto"``) those its
        processes were ``found`` on. The one place that reads the "auto" rule."""
        return list(found) if self.gpus == "auto" else list(self.gpus)

    def restart_method(self) -> str:
        """The restart method after resolving "auto"."""
        method = self.restart.method
        if method != "auto":
            return method
        if self.container:
            return "docker"
        if self.unit:
            return "systemd"
        if self.restart.command:
            return "command"
        return "none"


class PolicySettings(Section):
    """When to act, and how much, before handing over to a human."""

    mode: Mode = "act"
    max_restarts: int = Field(default=3, ge=0)
    restart_window: Positive = 3600.0
    cooldown: Duration = 120.0
    #: After an action: time the server gets to come back (load its model) before it is judged.
    grace: Positive = 120.0
    #: Non-urgent findings wait for no running requests, at most this long.
    drain_timeout: Positive = 600.0
    #: Non-urgent findings are acted on only inside this daily UTC window ("" = any time).
    maintenance_window: MaintenanceWindow = ""
    #: A kill: SIGTERM, then SIGKILL after this long.
    kill_grace: Positive = 10.0
    #: A forced unload: how long the request and the memory's return may take.
    unload_timeout: Positive = 30.0
    ladders: Ladders = Field(default_factory=dict)

    def ladder(self, finding: str) -> list[str]:
        """The ladder for a finding: the configured one, else the default."""
        return list(self.ladders.get(finding, DEFAULT_LADDERS.get(finding, [])))


class _AlertBase(Section):
    """What every sink has: a name, the least severity it hears about, limits and reminders."""

    name: str
    min_severity: Literal["warning", "critical"] = "warning"
    rate_limit: int = Field(default=20, ge=0)
    rate_window: Positive = 3600.0
    remind_every: Duration = 14400.0
    expire_after: Positive = 86400.0
    timeout: Positive = 10.0

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _NAME.match(value):
            raise PydanticCustomError(
                "alert_name",
                "expected a name of letters, digits, '.', '_' or '-' (at most 63), got {got}",
                {"got": repr(value)},
            )
        return value


class SlackAlert(_AlertBase):
    kind: Literal["slack"]
    webhook_url: Secret


class WebhookAlert(_AlertBase):
    kind: Literal["webhook"]
    url: Secret
    headers: dict[str, Secret] = Field(default_factory=dict)
    format: Literal["json", "discord", "ntfy", "pagerduty"] = "json"
    signing_secret: Secret | None = None
    routing_key: Secret | None = None

    @model_validator(mode="after")
    def _pagerduty_key(self) -> "WebhookAlert":
        if self.format == "pagerduty" and self.routing_key is None:
            raise PydanticCustomError(
                "routing_key", 'format = "pagerduty" needs routing_key (the integration key, as "env:NAME")'
            )
        return self


class EmailAlert(_AlertBase):
    kind: Literal["email"]
    smtp_host: str
    smtp_port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    ca_file: str = ""
    username: str = ""
    password: Secret | None = None
    sender: str
    recipients: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _auth_pair(self) -> "EmailAlert":
        if bool(self.username) != (self.password is not None):
            raise PydanticCustomError("smtp_auth", "username and password go together (both, or neither)")
        for address in (self.sender, *self.recipients):
            if "@" not in address or any(c in address for c in "\r\n<>"):
                raise PydanticCustomError(
                    "email_address", "expected a plain address like ops@example.com, got {got}", {"got": repr(address)}
                )
        return self


class AppriseAlert(_AlertBase):
    """Any service Apprise knows (needs the [apprise] extra); the URLs hold tokens, so they are secrets."""

    kind: Literal["apprise"]
    urls: list[Secret] = Field(min_length=1)


AlertSink = Annotated[Union[SlackAlert, WebhookAlert, EmailAlert, AppriseAlert], Field(discriminator="kind")]


class PrometheusSettings(Section):
    """``/metrics`` for Prometheus, served by the daemon."""

    enabled: bool = False
    #: host:port; loopback by default (the metrics name your targets and GPUs).
    listen: str = "127.0.0.1:9817"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise PydanticCustomError("listen", 'expected host:port like "127.0.0.1:9817", got "{value}"',
                                      {"value": value})
        return value


class CloudWatchSettings(Section):
    """PutMetricData to Amazon CloudWatch (the [cloudwatch] extra: boto3)."""

    enabled: bool = False
    namespace: str = Field(default="InferenceWatchdog", min_length=1, max_length=255)
    #: "" = the AWS environment's region, else the instance's (IMDSv2).
    region: str = ""
    interval: Positive = 60.0
    #: Another endpoint (a VPC endpoint, a test stand-in); "" = AWS's own.
    endpoint_url: str = ""
    #: StorageResolution 1 s (pair with a short interval; costs more requests).
    high_resolution: bool = False
    #: Datapoints kept while CloudWatch is unreachable or throttling; the oldest are dropped beyond.
    buffer: int = Field(default=10000, ge=100, le=1_000_000)


class EmfSettings(Section):
    """CloudWatch Embedded Metric Format lines for the CloudWatch agent: no API calls."""

    enabled: bool = False
    #: A file to append JSON lines to; "" = standard output.
    path: str = ""
    namespace: str = Field(default="InferenceWatchdog", min_length=1, max_length=255)
    interval: Positive = 60.0
    high_resolution: bool = False


class MetricsSettings(Section):
    #: The Host dimension: "" = the EC2 instance id (IMDSv2) on EC2, else the host name.
    host: str = ""
    prometheus: PrometheusSettings = Field(default_factory=PrometheusSettings)
    cloudwatch: CloudWatchSettings = Field(default_factory=CloudWatchSettings)
    emf: EmfSettings = Field(default_factory=EmfSettings)


class DebugSettings(Section):
    """Hooks for tests of the watchdog itself. Leave off in production."""

    allow_wedge: bool = False


class Config(Section):
    """The whole file."""

    watchdog: WatchdogSettings = Field(default_factory=WatchdogSettings)
    detect: DetectSettings = Field(default_factory=DetectSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    targets: list[TargetSettings] = Field(default_factory=list)
    alerts: list[AlertSink] = Field(default_factory=list)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    debug: DebugSettings = Field(default_factory=DebugSettings)

    def target(self, name: str) -> TargetSettings:
        for target in self.targets:
            if target.name == name:
                return target
        raise KeyError(name)

    def detect_for(self, target: TargetSettings) -> DetectSettings:
        """The thresholds that apply to one target: globals with its overrides."""
        return target.detect.apply_to(self.detect)

    def intervals_for(self, target: TargetSettings) -> dict[str, float]:
        w = self.watchdog
        return {
            "poll": target.poll_interval or w.poll_interval,
            "process": target.process_interval or w.process_interval,
            "canary": target.canary.interval,
            "gpu": w.gpu_interval,
        }
