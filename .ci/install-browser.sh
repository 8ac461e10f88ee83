#!/usr/bin/env bash
# Install headless Chromium + chromedriver (Debian packages) for tests/test_viewer_browser.py,
# and selenium into the active Python environment. Idempotent, and never fails CI: on any
# failure it prints one line and exits 0, and the browser test then skips with its reason.
set -u

note() { echo "install-browser: $*"; }

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    note "chromium and chromedriver already installed ($(chromium --version 2>/dev/null | head -n1))"
else
    if ! command -v apt-get >/dev/null 2>&1; then
        note "apt-get not found; cannot install chromium (the browser test will skip)"
    else
        SUDO=""
        if [ "$(id -u)" != "0" ]; then
            if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
                SUDO="sudo -n"
            else
                note "not root and no passwordless sudo; cannot install chromium (the browser test will skip)"
                SUDO="none"
            fi
        fi
        if [ "$SUDO" != "none" ]; then
            if $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/tmp/install-browser.log 2>&1 \
                && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                    chromium chromium-driver >>/tmp/install-browser.log 2>&1; then
                note "installed $(chromium --version 2>/dev/null | head -n1)"
            else
                note "apt-get install chromium chromium-driver failed (see /tmp/install-browser.log); the browser test will skip"
            fi
        fi
    fi
fi

PY="${PYTHON:-python}"
if command -v "$PY" >/dev/null 2>&1; then
    if "$PY" -c "import selenium" >/dev/null 2>&1; then
        note "selenium already installed"
    elif "$PY" -m pip install -q "selenium>=4.20" >/tmp/install-browser-pip.log 2>&1; then
        note "installed selenium"
    else
        note "pip install selenium failed (see /tmp/install-browser-pip.log); the browser test will skip"
    fi
fi
exit 0
