#!/usr/bin/env bash
# Install inference-watchdog as a systemd service (or remove it). Run as root.
# Safe to run again: an upgrade replaces the code and the unit, never your config.
set -euo pipefail

PROG=install.sh
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/inference-watchdog
VENV=$PREFIX/venv
CONFIG_DIR=/etc/inference-watchdog
CONFIG=$CONFIG_DIR/watchdog.toml
CREDENTIALS_DIR=$CONFIG_DIR/credentials
STATE_DIR=/var/lib/inference-watchdog
UNIT_NAME=inference-watchdog.service
UNIT_PATH=/etc/systemd/system/$UNIT_NAME
LINK=/usr/local/bin/watchdogctl

usage() {
    cat <<EOF
Usage: $PROG [--wheelhouse DIR] [--python PYTHON] [--now]
       $PROG --uninstall
       $PROG --help

Installs inference-watchdog as a systemd service:
  $VENV      a dedicated virtual environment with the package
  $CONFIG   the config (from config/watchdog.example.toml;
                                          an existing file is never overwritten)
  $CREDENTIALS_DIR/   files for LoadCredential= (mode 0700)
  $STATE_DIR             incidents and state
  $UNIT_PATH   the unit, enabled
  $LINK            the CLI

Options:
  --wheelhouse DIR   install from wheels in DIR only (no network), e.g. made with
                     'pip wheel $SRC -w DIR' on a machine with the same Python
  --python PYTHON    the interpreter for the venv (default: python3; 3.11 or newer)
  --now              also (re)start the service after installing
  --uninstall        stop and disable the service, remove the venv, the unit and the
                     symlink; keep $CONFIG_DIR and $STATE_DIR
  -h, --help         show this help

Without --now an installed service is enabled (started at the next boot) but not
started: check the config first ('watchdogctl config check'), then
'systemctl start inference-watchdog'.
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
usage_error() { printf '%s: %s\n' "$PROG" "$*" >&2; printf "Try '%s --help'.\n" "$PROG" >&2; exit 2; }

WHEELHOUSE=""
PYTHON=python3
START=no
ACTION=install
while [ $# -gt 0 ]; do
    case "$1" in
        --wheelhouse) [ $# -ge 2 ] || usage_error "--wheelhouse needs a directory"; WHEELHOUSE=$2; shift 2 ;;
        --wheelhouse=*) WHEELHOUSE=${1#*=}; shift ;;
        --python) [ $# -ge 2 ] || usage_error "--python needs an interpreter"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#*=}; shift ;;
        --now) START=yes; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage_error "unknown argument: $1" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "must run as root (it writes $PREFIX, $CONFIG_DIR and $UNIT_PATH): try 'sudo $0 $*'"

# systemd is PID 1 here (not a chroot or a container without it)?
have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

uninstall() {
    if have_systemd; then
        if systemctl is-active --quiet "$UNIT_NAME" || systemctl is-enabled --quiet "$UNIT_NAME" 2>/dev/null; then
            say "stopping and disabling $UNIT_NAME"
            systemctl disable --now "$UNIT_NAME" >/dev/null 2>&1 || warn "could not stop/disable $UNIT_NAME"
        fi
    fi
    if [ -e "$UNIT_PATH" ]; then
        rm -f "$UNIT_PATH"
        say "removed $UNIT_PATH"
    fi
    if have_systemd; then
        systemctl daemon-reload
        systemctl reset-failed "$UNIT_NAME" >/dev/null 2>&1 || true
    fi
    if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$VENV/bin/watchdogctl" ]; then
        rm -f "$LINK"
        say "removed $LINK"
    fi
    if [ -d "$PREFIX" ]; then
        rm -rf "$VENV"
        rmdir "$PREFIX" 2>/dev/null || warn "$PREFIX is not empty: left in place"
        say "removed $VENV"
    fi
    say "kept $CONFIG_DIR (config, credentials) and $STATE_DIR (incidents);"
    say "  remove them yourself if you no longer need them: rm -rf $CONFIG_DIR $STATE_DIR"
}

check_python() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (install python3, 3.11 or newer, or give --python)"
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
        || die "$PYTHON is $("$PYTHON" -V 2>&1); inference-watchdog needs Python 3.11 or newer (give --python)"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
        || die "$PYTHON cannot create virtual environments: install the venv module (Debian/Ubuntu: apt-get install python3-venv)"
}

make_venv() {
    # A venv whose interpreter no longer runs (the system Python was upgraded) is rebuilt.
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' 2>/dev/null; then
        say "using the existing virtual environment $VENV"
        return
    fi
    if [ -e "$VENV" ]; then
        warn "$VENV is broken: recreating it"
        rm -rf "$VENV"
    fi
    mkdir -p "$PREFIX"
    say "creating the virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
}

install_package() {
    local pip=("$VENV/bin/pip" --disable-pip-version-check --no-input --no-cache-dir --quiet)
    if [ -n "$WHEELHOUSE" ]; then
        [ -d "$WHEELHOUSE" ] || die "--wheelhouse $WHEELHOUSE is not a directory"
        WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
        say "installing inference-watchdog from $WHEELHOUSE (no network)"
        "${pip[@]}" install --no-index --find-links "$WHEELHOUSE" --upgrade inference-watchdog \
            || die "pip could not install from $WHEELHOUSE: it needs the inference-watchdog wheel and its dependencies, built for this Python ($("$VENV/bin/python" -V 2>&1)); make them with 'pip wheel $SRC -w DIR'"
    else
        [ -f "$SRC/pyproject.toml" ] || die "$SRC is not an inference-watchdog source tree (no pyproject.toml); give --wheelhouse"
        say "installing inference-watchdog from $SRC"
        "${pip[@]}" install --upgrade "$SRC" \
            || die "pip could not install from $SRC (on a host without network, use --wheelhouse DIR)"
    fi
    "$VENV/bin/watchdogctl" --version >/dev/null || die "$VENV/bin/watchdogctl does not run after installing"
    say "installed $("$VENV/bin/watchdogctl" --version)"
}

install_config() {
    install -d -m 0755 "$CONFIG_DIR"
    install -d -m 0700 "$CREDENTIALS_DIR"
    install -d -m 0750 "$STATE_DIR"
    if [ -e "$CONFIG" ]; then
        say "kept the existing $CONFIG"
    else
        install -m 0640 "$SRC/config/watchdog.example.toml" "$CONFIG"
        say "wrote $CONFIG from the example: edit its [[targets]] (or generate one: watchdogctl discover)"
    fi
}

install_link() {
    if [ -L "$LINK" ] || [ ! -e "$LINK" ]; then
        ln -sfn "$VENV/bin/watchdogctl" "$LINK"
        say "linked $LINK -> $VENV/bin/watchdogctl"
    else
        warn "$LINK exists and is not a symlink: left alone (use $VENV/bin/watchdogctl)"
    fi
}

install_unit() {
    install -m 0644 "$SRC/systemd/$UNIT_NAME" "$UNIT_PATH"
    say "installed $UNIT_PATH"
    if ! have_systemd; then
        warn "systemd is not running here: the unit was not enabled (run 'systemctl enable $UNIT_NAME' on the host)"
        return
    fi
    systemctl daemon-reload
    systemctl enable --quiet "$UNIT_NAME"
    say "enabled $UNIT_NAME"
    if [ "$START" = yes ]; then
        if ! "$VENV/bin/watchdogctl" config check "$CONFIG" >/dev/null 2>&1; then
            "$VENV/bin/watchdogctl" config check "$CONFIG" >&2 || true
            die "not starting $UNIT_NAME: $CONFIG is not valid (see above)"
        fi
        systemctl restart "$UNIT_NAME" \
            || die "$UNIT_NAME did not start: see 'systemctl status $UNIT_NAME' and 'journalctl -u $UNIT_NAME -n 50'"
        say "started $UNIT_NAME (systemctl status $UNIT_NAME; journalctl -u $UNIT_NAME)"
    elif systemctl is-active --quiet "$UNIT_NAME"; then
        say "$UNIT_NAME is running the previous version: systemctl restart $UNIT_NAME"
    else
        say "start it with: systemctl start $UNIT_NAME"
    fi
}

case "$ACTION" in
    uninstall)
        uninstall
        ;;
    install)
        [ -f "$SRC/systemd/$UNIT_NAME" ] || die "missing $SRC/systemd/$UNIT_NAME: run this script from an inference-watchdog source tree"
        [ -f "$SRC/config/watchdog.example.toml" ] || die "missing $SRC/config/watchdog.example.toml"
        check_python
        make_venv
        install_package
        install_config
        install_link
        install_unit
        say "done"
        ;;
esac
