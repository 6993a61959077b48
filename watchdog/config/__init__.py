"""Configuration: the schema (model), reading and validating it (load), durations and secrets.

Imports no other room of ours; every room may import it."""

from typing import TYPE_CHECKING

from watchdog.config.paths import CONFIG_ENV, DEFAULT_CONFIG_PATH
from watchdog.lazy import lazy_exports

if TYPE_CHECKING:
    from watchdog.config.load import load_config, parse_config
    from watchdog.config.model import (
        FINDINGS,
        SERVER_KINDS,
        CanarySettings,
        Config,
        DetectSettings,
        TargetSettings,
    )
    from watchdog.config.read import ConfigError, Problem

__getattr__ = lazy_exports(__name__, {
    "ConfigError": "read", "Problem": "read", "load_config": "load", "parse_config": "load",
    "FINDINGS": "model", "SERVER_KINDS": "model", "CanarySettings": "model", "Config": "model",
    "DetectSettings": "model", "TargetSettings": "model",
})

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
