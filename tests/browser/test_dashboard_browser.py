"""The dashboard in a real browser: pages, the live round, actions, roles, escaping."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedseg.simulate import Federation
from fedseg.simulate_procs import child_environment, fedseg_command

XSS = "<img src=x onerror=alert(1)>"


def sign_in(browser: Any, federation: Federation, token: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{federation.base_url}/ui/login")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_for(lambda: browser.current_url.endswith("/ui/"), what="the runs page after sign-in")


def wait_for(check: Any, *, what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def console_errors(browser: Any) -> list[dict[str, Any]]:
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def viewer_token(federation: Federation) -> str:
    out = subprocess.run(
        [
            *fedseg_command(),
            "server",
            "create-token",
            "--data-dir",
            str(federation.server_dir),
            "--role",
            "viewer",
            "--label",
            "browser-viewer",
            "--json",
        ],
        env=child_environment(),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    token: str = json.loads(out.strip().splitlines()[-1])["token"]
    return token


def admin_token(federation: Federation) -> str:
    return str(federation.init_info["admin_token"])


def test_every_page_loads_without_console_errors_and_the_live_round_moves(
    browser: Any, federation: Federation, screenshots: Path
) -> None:
    from selenium.webdriver.common.by import By

    run = federation.create_run("browser-live")
    since = datetime.now(UTC)
    federation.start_clients()
    federation.wait_sites_seen(since)
    sign_in(browser, federation, admin_token(federation))
    federation.start_run()
    browser.get(f"{federation.base_url}/ui/runs/{run.id}")
    browser.execute_script("window.fedsegNoReload = true;")
    panel = browser.find_element(By.ID, "live")
    first = panel.text
    wait_for(
        lambda: browser.find_element(By.ID, "live").text != first,
        what="the live panel to change while the round progresses",
        timeout_s=120,
    )
    assert browser.execute_script("return window.fedsegNoReload === true;"), "the page reloaded"
    federation.wait_for_run(interval_s=0.5, timeout_s=300)
    assert federation.wait_clients_exit(timeout_s=60)
    pages = {
        "runs": "/ui/",
        "run": f"/ui/runs/{run.id}",
        "sites": "/ui/sites",
        "audit": "/ui/audit",
    }
    for name, path in pages.items():
        browser.get(f"{federation.base_url}{path}")
        wait_for(
            lambda: browser.execute_script("return document.readyState") == "complete",
            what=f"the {name} page to load",
        )
        browser.save_screenshot(str(screenshots / f"{name}.png"))
        assert not console_errors(browser), (name, console_errors(browser))
    browser.get(f"{federation.base_url}/ui/runs/{run.id}")
    assert "completed" in browser.find_element(By.CSS_SELECTOR, "p.facts").text
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline"), "no Dice chart drawn"
    rows = browser.find_elements(By.CSS_SELECTOR, "#timeline tbody tr")
    assert len(rows) == 3


def test_start_and_stop_from_the_page(browser: Any, federation: Federation) -> None:
    from selenium.webdriver.common.by import By

    run = federation.create_run("browser-actions")
    sign_in(browser, federation, admin_token(federation))
    browser.get(f"{federation.base_url}/ui/runs/{run.id}")
    browser.find_element(By.ID, "start").click()
    wait_for(lambda: federation.admin.get_run(run.id).status == "running", what="running")
    browser.find_element(By.ID, "stop").click()
    wait_for(lambda: federation.admin.get_run(run.id).status == "cancelled", what="cancelled")
    assert not console_errors(browser)


def test_a_viewer_sees_no_controls_and_a_forged_post_is_refused(
    browser: Any, federation: Federation
) -> None:
    from selenium.webdriver.common.by import By

    run = federation.create_run("browser-viewer")
    federation.admin.start_run(run.id)
    try:
        sign_in(browser, federation, viewer_token(federation))
        browser.get(f"{federation.base_url}/ui/runs/{run.id}")
        assert not browser.find_elements(By.CSS_SELECTOR, ".actions button, .actions a")
        browser.get(f"{federation.base_url}/ui/sites")
        assert not browser.find_elements(By.XPATH, "//button[normalize-space()='Revoke']")
        csrf = browser.find_element(By.NAME, "csrf").get_attribute("value")
        statuses = browser.execute_async_script(
            """
            const [runId, csrf, done] = arguments;
            const post = (body) => fetch(`/ui/runs/${runId}/stop`, {
                method: "POST", body, redirect: "manual",
                headers: {"Content-Type": "application/x-www-form-urlencoded"},
            }).then((response) => response.status);
            Promise.all([post(`csrf=${csrf}`), post("csrf=forged")]).then(done);
            """,
            run.id,
            csrf,
        )
        assert statuses == [403, 403]
        assert federation.admin.get_run(run.id).status == "running"
    finally:
        federation.admin.stop_run(run.id)


def test_a_site_message_with_markup_renders_as_text(
    browser: Any, federation: Federation, screenshots: Path
) -> None:
    import httpx
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    run = federation.create_run("browser-xss")
    federation.admin.start_run(run.id)
    try:
        site = federation.sites[0]
        credential = json.loads((site.state_dir / "credentials.json").read_text())["credential"]
        reported = httpx.post(
            f"{federation.base_url}/api/v1/status",
            json={"run_id": run.id, "round": 1, "state": "error", "message": XSS},
            headers={"Authorization": f"Bearer {credential}"},
        )
        assert reported.status_code == 204, reported.text
        sign_in(browser, federation, admin_token(federation))
        browser.get(f"{federation.base_url}/ui/runs/{run.id}")
        cell = wait_for(
            lambda: [
                element
                for element in browser.find_elements(By.CSS_SELECTOR, "#live-sites td")
                if element.text == XSS
            ],
            what="the message shown as text",
        )
        assert cell
        assert not browser.find_elements(By.CSS_SELECTOR, "#live img")
        try:
            browser.switch_to.alert  # noqa: B018 (raises when no alert is open)
            raise AssertionError("the markup ran as a script")
        except NoAlertPresentException:
            pass
        browser.save_screenshot(str(screenshots / "run-escaped.png"))
    finally:
        federation.admin.stop_run(run.id)
