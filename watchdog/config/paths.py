"""Where the config and the daemon's files live: constants only, so ``watchdogctl --version`` and
``status`` can name them without importing the pydantic models (issue 15: 230 ms of a cold start).
The models' defaults are these constants."""

DEFAULT_CONFIG_PATH = "/etc/inference-watchdog/watchdog.toml"
CONFIG_ENV = "INFERENCE_WATCHDOG_CONFIG"
DEFAULT_CONTROL_SOCKET = "/run/inference-watchdog/control.sock"
DEFAULT_STATE_DIR = "/var/lib/inference-watchdog"
