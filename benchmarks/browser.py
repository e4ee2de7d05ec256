"""Headless Debian Chromium driven by Selenium (chromedriver), for the page's test and its README screenshot."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator

__all__ = ["headless_chromium"]

# without the background-networking flags Chromium keeps trying Google's hosts, which this machine's closed
# network refuses; a fresh profile per driver
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


@contextlib.contextmanager
def headless_chromium(width: int = 1100, height: int = 640) -> Iterator:
    """A Selenium Chrome driver on /usr/bin/chromium (`apt-get install chromium chromium-driver`), quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_binary = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver_binary is None:
        raise RuntimeError("no chromium/chromedriver on PATH: apt-get install chromium chromium-driver")
    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_binary), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
