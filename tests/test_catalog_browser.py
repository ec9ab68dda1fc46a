"""The catalog in a real browser: Debian's headless Chromium (tests/helpers/chromium.py; installed with apt-get when
root and missing, so it runs in CI), from file:// and from a real `python -m http.server` on 127.0.0.1, over a
site with real envs built from the local channel."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, make_site, run_cpkgs

sys.path.insert(0, str(REPO / "tests" / "helpers"))
import chromium  # noqa: E402

XSS = "<script>alert(1)</script>"
WAIT = 30  # seconds a condition may take to hold on a loaded machine; not a timing assertion


@pytest.fixture(scope="module")
def catalog_site(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> Path:
    """demo-1.0 (cpkgs-test-lib 1.1), demo-2.0 (lib 2.0), old-1.0 (lib 1.1) retired for demo-2.0 with a message
    holding a script, tools-1.0 (lib 1.1) removed."""
    root = make_site(tmp_path_factory.mktemp("catalog-browser") / "site", channel_url)
    for name, specs in (("demo-1.0", ("cpkgs-test-app", "cpkgs-test-lib 1.1.*")),
                        ("demo-2.0", ("cpkgs-test-app", "cpkgs-test-lib 2.0.*")),
                        ("old-1.0", ("cpkgs-test-app", "cpkgs-test-lib 1.1.*")),
                        ("tools-1.0", ("cpkgs-test-app", "cpkgs-test-lib 1.1.*"))):
        r = run_cpkgs("new-env", name, *specs, root=root)
        assert r.returncode == 0, r
    for cmd in (("retire", "old-1.0", "--successor", "demo-2.0", "--message", XSS), ("remove", "tools-1.0")):
        r = run_cpkgs(*cmd, root=root)
        assert r.returncode == 0, r
    return root


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    why = chromium.missing()
    if why:
        pytest.skip(why)
    with chromium.chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


@pytest.fixture(scope="module")
def http_base(catalog_site: Path) -> Iterator[str]:
    """A real static web server over the catalog directory, on 127.0.0.1."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "0", "--directory",
                             str(catalog_site / "share" / "cpkgs-catalog")], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ..."
        port = int(line.split(" port ")[1].split()[0])
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def wait_for(driver: Any, script: str, *args: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT).until(lambda d: d.execute_script(script, *args))


def visible_envs(driver: Any) -> list[str]:
    return list(driver.execute_script(
        "return Array.from(document.querySelectorAll('#envs tr.env'))"
        ".filter(function (r) { return !r.hidden && !r.parentElement.hidden; })"
        ".map(function (r) { return r.getAttribute('data-name'); });"))


def errors(driver: Any) -> list[str]:
    """The console's errors since the last call (a failed load, a CSP violation, an exception)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def search(driver: Any, query: str) -> None:
    box = driver.find_element("id", "q")
    box.clear()
    box.send_keys(query)


def check_catalog(driver: Any, base: str) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    driver.get(base + "index.html")
    assert visible_envs(driver) == ["demo-2.0", "demo-1.0", "old-1.0", "tools-1.0"]
    # The retired env: its successor, and the message holding a script shown as text, never run.
    row = driver.find_element("css selector", 'tr[data-name="old-1.0"]')
    assert row.find_element("css selector", ".successor").text == "demo-2.0"
    assert row.find_element("css selector", ".successor").get_attribute("href") == base + "envs/demo-2.0/index.html"
    assert row.find_element("css selector", ".message").get_attribute("textContent") == XSS
    assert "removed" in driver.find_element("css selector", 'tr[data-name="tools-1.0"]').text
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    # The search: a package at a version (search.js loaded by the first search), then an env name.
    search(driver, "cpkgs-test-lib=2")
    wait_for(driver, "return document.querySelector('table.searching') !== null")
    assert visible_envs(driver) == ["demo-2.0"]
    matches = driver.find_element("css selector", 'tr[data-name="demo-2.0"] td.matches').text
    assert matches.startswith("cpkgs-test-lib 2.0")
    search(driver, "cpkgs-test-lib=1.1")
    assert visible_envs(driver) == ["demo-1.0", "old-1.0", "tools-1.0"]
    search(driver, "old")
    assert visible_envs(driver) == ["old-1.0"]
    assert errors(driver) == []

    # The env page: the retire message as text, the package filter, the package link back to a prefilled search.
    driver.get(base + "envs/old-1.0/index.html")
    assert driver.find_element("css selector", "#status .message").get_attribute("textContent") == XSS
    driver.get(base + "envs/demo-1.0/index.html")
    driver.find_element("id", "pkg-filter").send_keys("lib")
    rows = driver.execute_script("return Array.from(document.querySelectorAll('#package-table tbody tr'))"
                                 ".filter(function (r) { return !r.hidden; }).map(function (r) {"
                                 " return r.getAttribute('data-name'); });")
    assert rows == ["cpkgs-test-lib"]
    driver.find_element("link text", "cpkgs-test-lib").click()
    wait_for(driver, "return document.querySelector('table.searching') !== null")
    assert driver.find_element("id", "q").get_attribute("value") == "cpkgs-test-lib"
    assert visible_envs(driver) == ["demo-2.0", "demo-1.0", "old-1.0", "tools-1.0"]
    search(driver, "no-such-package")
    assert visible_envs(driver) == []
    # The diff page: the changed version.
    driver.get(base + "envs/demo-2.0/diff.html")
    changed = driver.find_element("css selector", 'tr.changed[data-name="cpkgs-test-lib"]').text
    assert "1.1" in changed and "2.0" in changed, changed
    assert errors(driver) == []


def test_catalog_from_file_url(browser: Any, catalog_site: Path, tmp_path: Path) -> None:
    check_catalog(browser, (catalog_site / "share" / "cpkgs-catalog").as_uri() + "/")
    browser.get((catalog_site / "share" / "cpkgs-catalog" / "index.html").as_uri())
    shot = tmp_path / "catalog-index.png"
    assert browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")


def test_catalog_from_a_static_web_server(browser: Any, http_base: str, tmp_path: Path) -> None:
    check_catalog(browser, http_base)
    browser.get(http_base + "envs/demo-2.0/index.html")
    shot = tmp_path / "catalog-env.png"
    assert browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
