"""Helpers shared by the tests: waiting for a condition, and the headless Chromium the browser tests drive."""

import shutil
import time

import pytest

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
)


def require_chromium() -> None:
    """Skip the calling test module when headless Chromium and its driver are not installed."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "headless Chromium not installed (apt-get install -y chromium chromium-driver, or "
            ".ci/install-browser.sh)",
            allow_module_level=True,
        )


def chromium_options(webdriver, profile) -> object:
    """Options for a headless Chromium with its own profile folder ``profile``."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    return opts


def wait_for(cond, timeout: float, what: str, period: float = 0.1):
    """Poll ``cond`` every ``period`` seconds until it returns something true (returned), else fail."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = cond()
        if value:
            return value
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def ctrl_c_exit_code(proc, lines: list[str], timeout: float = 30) -> int:
    """Send SIGINT to ``proc`` and return its exit code; on a hang, fail with its output and every thread's stack.

    The child must run with PYTHONFAULTHANDLER=1 (``faulthandler_env``) for the stacks: SIGABRT then prints them.
    """
    import signal
    import subprocess

    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            rest, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
        pytest.fail(f"no exit {timeout:.0f} s after SIGINT; its output:\n{''.join(lines)}{rest}")


def faulthandler_env(**extra: str) -> dict[str, str]:
    """The test process's environment plus PYTHONFAULTHANDLER=1 (a child prints its stacks on SIGABRT)."""
    import os

    return {**os.environ, "PYTHONFAULTHANDLER": "1", **extra}
