"""Where the config lives: constants only, so ``watchdogctl --version`` and ``status`` can name the
default config file without importing the pydantic models (issue 15: 230 ms of a cold start)."""

DEFAULT_CONFIG_PATH = "/etc/inference-watchdog/watchdog.toml"
CONFIG_ENV = "INFERENCE_WATCHDOG_CONFIG"
