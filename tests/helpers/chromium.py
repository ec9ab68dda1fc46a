"""Headless Chromium for the catalog's browser test and bench/bench_catalog.py: Debian's `chromium` driven through
Debian's `chromium-driver` by selenium.

Why selenium and not playwright: Debian ships chromedriver built from the same Chromium release as the browser, so
driver and browser always match and nothing is downloaded; playwright's Python package drives a Chromium build of its
own choosing (its CDP protocol pinned to that build) and would be pointed at a browser it was not made for.
Selenium is told the driver's path, so its Selenium Manager never looks for one on the network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
APT_PACKAGES = ("chromium", "chromium-driver")
# Without the background-networking flags Chromium's own connections (updates, sync, field trials) are refused on a
# closed network and it can stall; QUIC likewise.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1600")


def missing() -> str | None:
    """Why Chromium cannot run here, after installing it with apt-get when root and it is missing; None when it can.
    In CI (root) it is installed, so the browser test runs; only an unprivileged run without it is skipped."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return None
    if os.geteuid() != 0:
        return f"{CHROMIUM} or {CHROMEDRIVER} missing and not root: apt-get install {' '.join(APT_PACKAGES)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                                *APT_PACKAGES]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    return None


@contextmanager
def chromium(profile_parent: Path | None = None) -> Iterator[Any]:
    """A selenium WebDriver on a fresh headless Chromium with its own profile dir; the browser's console log is
    kept (driver.get_log("browser"))."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=profile_parent)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def navigation_timing(driver: Any) -> dict[str, float]:
    """The page's PerformanceNavigationTiming, in ms from the start of navigation."""
    entry: dict[str, float] = driver.execute_script(
        "var e = performance.getEntriesByType('navigation')[0];"
        "return {domInteractive: e.domInteractive, domContentLoaded: e.domContentLoadedEventEnd,"
        " load: e.loadEventEnd};")
    return entry
