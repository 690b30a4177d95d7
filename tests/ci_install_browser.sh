#!/usr/bin/env bash
# Install Debian's Chromium for tests/test_app_browser.py when it is missing; do nothing otherwise.
# Idempotent: CI may call it on every run. Needs root (or passwordless sudo) the first time.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "ci_install_browser.sh: /usr/bin/chromium is missing and installing it needs root" >&2
        exit 1
    fi
}

as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
