"""Configuration: the schema (model), reading and validating it (load), durations and secrets.

Imports no other room of ours; every room may import it."""

from watchdog.config.load import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Problem,
    load_config,
    parse_config,
)
from watchdog.config.model import (
    FINDINGS,
    SERVER_KINDS,
    CanarySettings,
    Config,
    DetectSettings,
    TargetSettings,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "FINDINGS",
    "SERVER_KINDS",
    "CanarySettings",
    "Config",
    "ConfigError",
    "DetectSettings",
    "Problem",
    "TargetSettings",
    "load_config",
    "parse_config",
]
