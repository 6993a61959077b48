#!/usr/bin/env bash
# The test command: a virtual environment with the [dev] extra, then the whole suite.
# Tests that need a real Docker engine or systemd install and start them themselves
# (apt-get on Debian); under CI=true they fail instead of skipping when they cannot.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e '.[dev]'
exec "$VENV/bin/python" -m pytest "$@"
