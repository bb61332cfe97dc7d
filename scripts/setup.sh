#!/usr/bin/env bash
# Create .venv (once) and install esreid with the pinned test/demo dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"

# Headless Chromium opens a generated report.html in tests/test_report_browser.py (skipped without a browser).
# Debian's package, installed only where we are root with apt-get; never a reason for the set-up to fail.
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || command -v google-chrome >/dev/null 2>&1; then
    :
elif [ "$(id -u)" != 0 ]; then
    echo "setup: chromium not installed and not root (apt-get install chromium); the report browser test will skip"
elif ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: chromium not installed and no apt-get to install it; the report browser test will skip"
elif ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; then
    echo "setup: 'apt-get install chromium' failed; the report browser test will skip"
fi
