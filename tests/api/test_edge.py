"""The HTTP edge (issue 10): bodies bounded and unread before auth, throttles, bounded
paths and ranges, 405 with Allow, no internals in any error body, owner-only files.
"""

from __future__ import annotations

import re
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from server.app import create_app
from shared import routes
from shared.errors import Unavailable
from tests.api.conftest import Harness, Initialised, problem_code

pytestmark = pytest.mark.anyio

CHUNK = 64 * 1024


class CountingBody:
    """A streamed request body that counts how much of it the server pulled."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.total:
            self.pulled += CHUNK
            yield b"{" + b" " * (CHUNK - 1) if self.pulled == CHUNK else b" " * CHUNK


@asynccontextmanager
async def edge_client(
    initialised: Initialised,
    *,
    address: str = "127.0.0.1",
    prepare: Callable[[FastAPI], None] | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with settings ``overrides``, seen from client ``address``."""
    settings = initialised.settings.model_copy(update=overrides)
    app = create_app(settings)
    if prepare is not None:
        prepare(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(address, 4242), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://fedseg.test") as client:
            yield app, client


def admin(initialised: Initialised) -> dict[str, str]:
    return {"Authorization": f"Bearer {initialised.admin_token}"}


# --- defect 1: bodies --------------------------------------------------------------------


async def test_unauthenticated_bad_body_gets_401_unread(initialised: Initialised) -> None:
    async with edge_client(initialised) as (_, client):
        answer = await client.post(routes.SITES, content=b"{not json")
        assert answer.status_code == 401 and problem_code(answer) == "unauthenticated"
        body = CountingBody(8 * 1024 * 1024)
        answer = await client.post(routes.SITES, content=body, headers={"Authorization": "x y"})
        assert answer.status_code == 401 and problem_code(answer) == "bad_token"
        assert body.pulled == 0
        body = CountingBody(8 * 1024 * 1024)
        upload = routes.UPDATES.format(run_id="run-00000000", round=1)
        answer = await client.put(upload, content=body)
        assert answer.status_code == 401 and body.pulled == 0


@pytest.mark.parametrize("path", [routes.ENROLL, routes.SITES, routes.RUNS, routes.STATUS])
async def test_streamed_body_is_cut_off_at_the_limit(initialised: Initialised, path: str) -> None:
    async with edge_client(initialised) as (_, client):
        body = CountingBody(32 * 1024 * 1024)  # chunked: no Content-Length to go by
        headers = {} if path == routes.ENROLL else admin(initialised)
        answer = await client.post(path, content=body, headers=headers)
        assert answer.status_code == 413 and problem_code(answer) == "payload_too_large"
        settings = initialised.settings
        limit = settings.max_enroll_bytes if path == routes.ENROLL else settings.max_body_bytes
        assert body.pulled <= limit + CHUNK


async def test_declared_content_length_is_refused_before_reading(initialised: Initialised) -> None:
    async with edge_client(initialised) as (_, client):
        body = CountingBody(16 * 1024)
        answer = await client.post(
            routes.ENROLL, content=body, headers={"Content-Length": str(10**12)}
        )
        assert answer.status_code == 413 and problem_code(answer) == "payload_too_large"
        assert body.pulled == 0


async def test_enroll_fits_its_small_limit_and_big_json_elsewhere_is_fine(
    harness: Harness,
) -> None:
    site = await harness.add_site("site-a")  # a real enrollment passes the enroll limit
    assert site.credential
    big_but_allowed = {"name": "r", "config": {"sites": ["site-a"] * 10_000}}
    answer = await harness.client.post(routes.RUNS, json=big_but_allowed, headers=harness.admin)
    assert answer.status_code in (201, 422)  # judged on content, not refused for size


# --- defect 8: throttles ------------------------------------------------------------------


async def test_failed_logins_are_throttled_per_address(initialised: Initialised) -> None:
    async with edge_client(initialised, auth_failure_limit=3) as (app, client):
        wrong = {"Authorization": "Bearer fsa_wrong"}
        for _ in range(3):
            assert (await client.get(routes.SITES, headers=wrong)).status_code == 401
        blocked = await client.get(routes.SITES, headers=admin(initialised))
        assert blocked.status_code == 429 and problem_code(blocked) == "rate_limited"
        assert 1 <= int(blocked.headers["Retry-After"]) <= 60
        # the upload route too, before its body is read
        body = CountingBody(1024 * 1024)
        upload = await client.put(
            routes.UPDATES.format(run_id="run-x", round=1), content=body, headers=wrong
        )
        assert upload.status_code == 429 and body.pulled == 0
        # another address is not affected
        other = httpx.ASGITransport(app=app, client=("10.9.8.7", 1))
        async with httpx.AsyncClient(transport=other, base_url="http://fedseg.test") as second:
            assert (await second.get(routes.SITES, headers=admin(initialised))).status_code == 200


async def test_failed_enrollments_are_throttled(initialised: Initialised) -> None:
    async with edge_client(initialised, auth_failure_limit=2) as (_, client):
        bad = {"token": "fse_" + "x" * 40, "signing_public_key": "A" * 43 + "="}
        for _ in range(2):
            answer = await client.post(routes.ENROLL, json=bad)
            assert answer.status_code in (401, 422), answer.text
        answer = await client.post(routes.ENROLL, json=bad)
        assert answer.status_code == 429 and "Retry-After" in answer.headers


# --- defect 7: paths, ranges, 405, no internals ---------------------------------------------


async def test_path_integers_are_bounded(harness: Harness) -> None:
    huge = 2**66
    for path in (
        routes.ROUND.format(run_id="run-00000000", round=huge),
        routes.MODEL_BUNDLE.format(run_id="run-00000000", version=huge),
        routes.ROUND.format(run_id="run-00000000", round=-1),
        routes.RUN.format(run_id="x" * 5000),
        routes.RUN.format(run_id="run%00x"),
    ):
        answer = await harness.client.get(path, headers=harness.admin)
        assert answer.status_code == 422, (path[:80], answer.text)
        assert problem_code(answer) == "invalid_input"


async def test_upload_content_length_with_thousands_of_digits(harness: Harness) -> None:
    site = await harness.add_site("site-a")
    answer = await harness.client.put(
        routes.UPDATES.format(run_id="run-00000000", round=1),
        content=b"x",
        headers={**site.headers, "Content-Length": "9" * 5000},
    )
    assert answer.status_code == 413 and problem_code(answer) == "payload_too_large"


async def test_range_headers_never_raise(harness: Harness) -> None:
    site = await harness.add_site("site-a")
    run_id = await harness.create_run([site], rounds=1)
    path = routes.MODEL_BUNDLE.format(run_id=run_id, version=0)
    full = await harness.client.get(path, headers=harness.admin)
    size = len(full.content)
    many = "9" * 5000
    expected = {
        f"bytes={many}-": 416,
        f"bytes=0-{many}": 206,
        f"bytes=-{many}": 206,
        f"bytes={many}-{many}": 416,
        "bytes=abc": 200,
        "items=0-5": 200,
        "bytes=0-1,5-6": 200,
        "bytes=5-2": 200,
        "bytes=-0": 416,
        "bytes=" + "0" * 5000 + "1-": 206,
    }
    for header, status in expected.items():
        answer = await harness.client.get(path, headers={**harness.admin, "Range": header})
        assert answer.status_code == status, header[:40]
        if status == 206 and header.startswith(("bytes=0-", "bytes=-")):
            assert answer.content == full.content
            assert answer.headers["content-range"] == f"bytes 0-{size - 1}/{size}"
        if status == 416:
            assert answer.headers["content-range"] == f"bytes */{size}"


async def test_405_says_what_is_allowed(harness: Harness) -> None:
    answer = await harness.client.delete(routes.SITES, headers=harness.admin)
    assert answer.status_code == 405
    assert {m.strip() for m in answer.headers["Allow"].split(",")} >= {"GET", "POST"}
    assert problem_code(answer)
    answer = await harness.client.get(routes.ENROLL)
    assert answer.status_code == 405 and answer.headers["Allow"] == "POST"


_INTERNALS = re.compile(
    r"Traceback|File \"|/work/|/tmp/|/usr/|site-packages|\.py\b|SELECT |INSERT |UPDATE |"
    r"sqlalchemy|psycopg|aiosqlite|sqlite3",
    re.IGNORECASE,
)


def _leaky_routes(app: FastAPI) -> None:
    async def unavailable() -> None:
        raise Unavailable('model worker failed: Traceback\n  File "/srv/fedseg/x.py", line 1')

    async def crash() -> None:
        raise RuntimeError("SELECT * FROM sites WHERE path='/var/lib/fedseg/fedseg.db'")

    app.add_api_route("/test/unavailable", unavailable)
    app.add_api_route("/test/crash", crash)


async def test_no_error_body_shows_internals(initialised: Initialised) -> None:
    async with edge_client(initialised, prepare=_leaky_routes) as (_, client):
        head = admin(initialised)
        attempts = [
            client.get("/test/unavailable"),
            client.get("/test/crash"),
            client.get(routes.SITES),
            client.get(routes.SITES, headers={"Authorization": "Bearer fsa_nope"}),
            client.post(routes.SITES, content=b"{", headers=head),
            client.post(routes.SITES, json={"name": "UPPER"}, headers=head),
            client.post(routes.SITES, json={"name": "a", "zzz": 1}, headers=head),
            client.post(routes.RUNS, json={"name": "r", "config": {"sites": ["x"]}}, headers=head),
            client.post(routes.ENROLL, json={"token": "short"}),
            client.post(routes.ENROLL, content=b"\xff\xfe\x00"),
            client.get(routes.RUN.format(run_id="run-00000000"), headers=head),
            client.get(routes.ROUND.format(run_id="run-0", round=2**70), headers=head),
            client.get(routes.AUDIT, params={"limit": 10**30}, headers=head),
            client.get(routes.TASKS_NEXT, params={"wait": "nan"}, headers=head),
            client.put(routes.UPDATES.format(run_id="run-0", round=1), content=b"x", headers=head),
            client.delete(routes.RUNS, headers=head),
            client.get("/api/v1/none"),
        ]
        for attempt in attempts:
            answer = await attempt
            assert answer.status_code >= 400
            assert answer.headers["content-type"].startswith(routes.PROBLEM_CONTENT_TYPE)
            assert not _INTERNALS.search(answer.text), answer.text
        answer = await client.get("/test/unavailable")
        assert answer.status_code == 503 and problem_code(answer) == "unavailable"


# --- defect 8: owner-only files -----------------------------------------------------------


async def test_everything_the_server_writes_is_owner_only(harness: Harness) -> None:
    site = await harness.add_site("site-a")
    run_id = await harness.create_run([site], rounds=1)
    task = await harness.task(site)
    assert task is not None
    base = await harness.model(run_id, 0)
    sealed = harness.seal(site, task, harness.delta_like(base, 1))
    assert (await harness.upload(site, run_id, 1, sealed)).status_code == 200
    data_dir = harness.settings.data_dir
    written = [data_dir, *data_dir.rglob("*")]
    assert len([p for p in written if p.is_file()]) >= 4  # key, database, bundles, update
    loose = [str(p) for p in written if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert loose == []


# --- defect 9: the OpenAPI document --------------------------------------------------------


async def test_openapi_documents_problems_per_route(harness: Harness) -> None:
    spec = (await harness.client.get("/openapi.json")).json()
    assert "Problem" in spec["components"]["schemas"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            for status, response in responses.items():
                if status[0] in "45" and status != "416":
                    assert list(response["content"]) == [routes.PROBLEM_CONTENT_TYPE], (
                        path,
                        status,
                    )
                    schema = response["content"][routes.PROBLEM_CONTENT_TYPE]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Problem"}
            if operation.get("security"):
                assert {"401", "403", "429"} <= set(responses), (method, path)
            if "requestBody" in operation:
                assert {"413", "422"} <= set(responses), (method, path)
    assert "404" in spec["paths"][routes.RUN]["get"]["responses"]
    assert "409" in spec["paths"][routes.SITES]["post"]["responses"]
    assert {"401", "429"} <= set(spec["paths"][routes.ENROLL]["post"]["responses"])


async def test_enrollment_key_is_32_bytes_in_the_schema(harness: Harness) -> None:
    import base64

    spec = (await harness.client.get("/openapi.json")).json()
    pattern = spec["components"]["schemas"]["EnrollRequest"]["properties"]["signing_public_key"]
    regex = re.compile(pattern["pattern"])
    for size in (16, 31, 32, 33, 64):
        encoded = base64.b64encode(bytes(range(size))).decode()
        assert bool(regex.fullmatch(encoded)) == (size == 32), size
    for last in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/":
        candidate = "A" * 42 + last + "="
        if regex.fullmatch(candidate):
            assert len(base64.b64decode(candidate, validate=True)) == 32
            assert base64.b64encode(base64.b64decode(candidate)).decode() == candidate
    short = base64.b64encode(bytes(31)).decode()
    answer = await harness.client.post(
        routes.ENROLL, json={"token": "fse_" + "x" * 40, "signing_public_key": short}
    )
    assert answer.status_code == 422 and "signing_public_key" in answer.json()["detail"]
