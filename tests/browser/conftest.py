"""The browser tier: the dashboard in Debian's headless Chromium against a real federation.

One server (``fedseg server serve`` on loopback) and three real client processes, as
in the integration tier, with the smallest model; Selenium drives Debian's chromium
through Debian's chromium-driver (``make test-browser``; `.ci/run` installs both).
Screenshots of each page land in ``build/browser`` (or ``$FEDSEG_BROWSER_OUT``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedseg.simulate import Federation
from tests.integration.conftest import enrolled_federation, small_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def screenshots() -> Path:
    out = Path(os.environ.get("FEDSEG_BROWSER_OUT", "build/browser"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """Server up, three sites enrolled; runs are made by the tests."""
    config = small_config(tmp_path_factory.mktemp("browser"), rounds=3, local_steps=4)
    with enrolled_federation(config) as fed:
        yield fed


def _options(profile: Path) -> object:
    from selenium.webdriver import ChromeOptions

    options = ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--window-size=1280,1100",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """A fresh headless Chromium (own profile, so no cookie is shared between tests)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(
            f"the browser tier needs Debian's chromium and chromium-driver ({', '.join(missing)} "
            "missing): apt-get install chromium chromium-driver"
        )
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(
        service=Service(executable_path=str(CHROMEDRIVER)),
        options=_options(tmp_path / "profile"),  # type: ignore[arg-type]
    )
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
