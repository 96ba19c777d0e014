"""The dashboard under /ui, in-process: sign-in, pages, CSRF, roles and escaping.

The browser tier (tests/browser) drives the same pages in headless Chromium against
a real federation; here every rule is checked quickly on both databases.
"""

from __future__ import annotations

import re

import httpx
import pytest

from server.ui.security import CONTENT_SECURITY_POLICY
from server.ui.sessions import SESSION_COOKIE
from shared import routes
from tests.api.conftest import Harness

pytestmark = pytest.mark.anyio
XSS = "<img src=x onerror=alert(1)>"


async def sign_in(harness: Harness, token: str) -> httpx.Response:
    answer = await harness.client.post(
        "/ui/login", content=f"token={token}", headers={"Content-Type": _FORM}
    )
    assert answer.status_code == 303, answer.text
    return answer


async def viewer_token(harness: Harness) -> str:
    minted = await harness.client.post(
        routes.TOKENS, json={"role": "viewer", "label": "watcher"}, headers=harness.admin
    )
    assert minted.status_code == 201, minted.text
    token: str = minted.json()["secret"]
    return token


async def csrf_of(harness: Harness, path: str) -> str:
    page = await harness.client.get(path)
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, "the page has no CSRF field"
    return found.group(1)


async def post_form(harness: Harness, path: str, body: str, **headers: str) -> httpx.Response:
    return await harness.client.post(path, content=body, headers={"Content-Type": _FORM, **headers})


_FORM = "application/x-www-form-urlencoded"


async def test_sign_in_sets_a_strict_http_only_cookie_and_pages_render(harness: Harness) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b", "site-c")]
    run_id = await harness.create_run(sites)
    answer = await sign_in(harness, harness.admin_token)
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert harness.admin_token not in cookie
    for path in ("/ui/", f"/ui/runs/{run_id}", f"/ui/runs/{run_id}/live", "/ui/sites", "/ui/audit"):
        page = await harness.client.get(path)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert page.headers["x-frame-options"] == "DENY"
    run_page = await harness.client.get(f"/ui/runs/{run_id}")
    assert "Stop run" in run_page.text and "site-b" in run_page.text
    assert "round <strong" in run_page.text


async def test_pages_send_a_browser_without_a_session_to_sign_in(harness: Harness) -> None:
    page = await harness.client.get("/ui/")
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/login"


async def test_a_wrong_token_or_a_site_credential_cannot_sign_in(harness: Harness) -> None:
    site = await harness.add_site("site-a")
    for token, status in (("fsa_not-a-token", 401), (site.credential, 403)):
        answer = await post_form(harness, "/ui/login", f"token={token}")
        assert answer.status_code == status
        assert "set-cookie" not in answer.headers


async def test_admin_starts_and_stops_a_run_from_the_page(harness: Harness) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b", "site-c")]
    run_id = await harness.create_run(sites, start=False)
    await sign_in(harness, harness.admin_token)
    csrf = await csrf_of(harness, f"/ui/runs/{run_id}")
    started = await post_form(harness, f"/ui/runs/{run_id}/start", f"csrf={csrf}")
    assert started.status_code == 303
    assert (await _run(harness, run_id))["status"] == "running"
    stopped = await post_form(harness, f"/ui/runs/{run_id}/stop", f"csrf={csrf}")
    assert stopped.status_code == 303
    assert (await _run(harness, run_id))["status"] == "cancelled"


async def test_forged_posts_are_refused_and_change_nothing(harness: Harness) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b", "site-c")]
    run_id = await harness.create_run(sites)
    await sign_in(harness, harness.admin_token)
    csrf = await csrf_of(harness, f"/ui/runs/{run_id}")
    no_token = await post_form(harness, f"/ui/runs/{run_id}/stop", "")
    wrong_token = await post_form(harness, f"/ui/runs/{run_id}/stop", "csrf=forged")
    other_origin = await post_form(
        harness, f"/ui/runs/{run_id}/stop", f"csrf={csrf}", Origin="https://evil.example"
    )
    for answer in (no_token, wrong_token, other_origin):
        assert answer.status_code == 403
        assert "csrf" in answer.text
    assert (await _run(harness, run_id))["status"] == "running"


async def test_a_viewer_sees_no_controls_and_cannot_act(harness: Harness) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b", "site-c")]
    run_id = await harness.create_run(sites)
    await sign_in(harness, await viewer_token(harness))
    run_page = await harness.client.get(f"/ui/runs/{run_id}")
    sites_page = await harness.client.get("/ui/sites")
    assert run_page.status_code == sites_page.status_code == 200
    for text in ("Stop run", "Start run", "Download model"):
        assert text not in run_page.text
    assert "Revoke" not in sites_page.text
    csrf = await csrf_of(harness, "/ui/")  # the sign-out form's token is the session's
    for path in (f"/ui/runs/{run_id}/stop", "/ui/sites/site-a/revoke"):
        answer = await post_form(harness, path, f"csrf={csrf}")
        assert answer.status_code == 403, path
    bundle = await harness.client.get(f"/ui/runs/{run_id}/models/0/bundle")
    assert bundle.status_code == 403
    assert (await _run(harness, run_id))["status"] == "running"
    listed = await harness.client.get(routes.SITES, headers=harness.admin)
    assert all(site["status"] == "active" for site in listed.json())


async def test_a_site_message_with_markup_renders_as_text(harness: Harness) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b", "site-c")]
    run_id = await harness.create_run(sites)
    reported = await harness.client.post(
        routes.STATUS,
        json={"run_id": run_id, "round": 1, "state": "error", "message": XSS},
        headers=sites[0].headers,
    )
    assert reported.status_code == 204, reported.text
    await sign_in(harness, harness.admin_token)
    for path in (f"/ui/runs/{run_id}", f"/ui/runs/{run_id}/live"):
        page = await harness.client.get(path)
        assert XSS not in page.text
        assert "&lt;img src=x onerror=alert(1)&gt;" in page.text


async def test_admin_downloads_the_signed_model(harness: Harness) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b", "site-c")]
    run_id = await harness.create_run(sites)
    await sign_in(harness, harness.admin_token)
    page = await harness.client.get(f"/ui/runs/{run_id}/models/0/bundle")
    assert page.status_code == 200
    api = await harness.client.get(
        routes.MODEL_BUNDLE.format(run_id=run_id, version=0), headers=harness.admin
    )
    assert page.content == api.content
    assert "attachment" in page.headers["content-disposition"]


async def test_a_sign_in_link_works_once(harness: Harness) -> None:
    minted = await harness.client.post("/api/v1/ui/sign-in-links", headers=harness.admin)
    assert minted.status_code == 201, minted.text
    path = minted.json()["path"]
    first = await harness.client.get(path)
    assert first.status_code == 303 and SESSION_COOKIE in first.headers["set-cookie"]
    harness.client.cookies.clear()
    again = await harness.client.get(path)
    assert again.status_code == 401
    viewer = await viewer_token(harness)
    refused = await harness.client.post(
        "/api/v1/ui/sign-in-links", headers={"Authorization": f"Bearer {viewer}"}
    )
    assert refused.status_code == 403


async def test_signing_out_ends_the_session(harness: Harness) -> None:
    await sign_in(harness, harness.admin_token)
    csrf = await csrf_of(harness, "/ui/")
    out = await post_form(harness, "/ui/logout", f"csrf={csrf}")
    assert out.status_code == 303
    assert (await harness.client.get("/ui/")).status_code == 303


async def _run(harness: Harness, run_id: str) -> dict[str, object]:
    answer = await harness.client.get(routes.RUN.format(run_id=run_id), headers=harness.admin)
    body: dict[str, object] = answer.json()
    return body


async def test_failed_sign_ins_are_throttled_like_failed_api_logins(harness: Harness) -> None:
    limit = harness.settings.auth_failure_limit
    answers = [await post_form(harness, "/ui/login", "token=fsa_wrong") for _ in range(limit + 1)]
    assert [answer.status_code for answer in answers[:limit]] == [401] * limit
    assert answers[-1].status_code == 429 and int(answers[-1].headers["retry-after"]) > 0
    right = await post_form(harness, "/ui/login", f"token={harness.admin_token}")
    assert right.status_code == 429, "the right token must wait too while the address is throttled"


async def test_the_audit_page_says_whether_the_chain_verifies(harness: Harness) -> None:
    await harness.add_site("site-a")
    await sign_in(harness, harness.admin_token)
    await harness.app.state.services.audit.flush(everything=True)
    page = await harness.client.get("/ui/audit")
    assert page.status_code == 200 and "Hash chain verified" in page.text
    assert "site.created" in page.text


async def test_the_audit_page_shows_a_tampered_chain(harness: Harness) -> None:
    from sqlalchemy import create_engine, text

    from server.db.engine import sync_url

    for name in ("site-a", "site-b"):
        await harness.add_site(name)
    await harness.app.state.services.audit.flush(everything=True)
    engine = create_engine(sync_url(harness.settings.database_url))
    try:
        with engine.begin() as connection:
            first = connection.execute(text("SELECT min(id) FROM audit_events")).scalar_one()
            connection.execute(
                text("UPDATE audit_events SET target = 'site:nobody' WHERE id = :id"),
                {"id": first},
            )
    finally:
        engine.dispose()
    await sign_in(harness, harness.admin_token)
    page = await harness.client.get("/ui/audit")
    assert page.status_code == 200 and "Hash chain BROKEN" in page.text
