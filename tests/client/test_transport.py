"""HttpTransport over httpx.MockTransport: retries, problem mapping, resumable download."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from client.transport import HttpTransport, RetryPolicy
from shared import routes
from shared.errors import AuthError, Conflict, Unavailable
from shared.schemas import StatusReport, UpdateReceipt

RECEIPT = UpdateReceipt(
    run_id="r", round=1, site="s", update_sha256="a" * 64, received_at=datetime.now(UTC)
)


def transport(handler, attempts: int = 4) -> tuple[HttpTransport, list[float]]:
    sleeps: list[float] = []
    client = httpx.Client(base_url="http://server", transport=httpx.MockTransport(handler))
    return (
        HttpTransport(
            "http://server",
            "secret-credential",
            retry=RetryPolicy(attempts=attempts, base_s=0.5, cap_s=4.0),
            client=client,
            sleep=sleeps.append,
            rng=random.Random(0),
        ),
        sleeps,
    )


def problem(status: int, code: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={"title": "x", "status": status, "detail": f"{code} detail", "code": code},
        headers={"content-type": routes.PROBLEM_CONTENT_TYPE},
    )


def test_upload_retries_5xx_and_connection_errors_with_the_same_bytes() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer secret-credential"
        bodies.append(request.content)
        if len(bodies) == 1:
            raise httpx.ConnectError("refused")
        if len(bodies) == 2:
            return problem(503, "unavailable")
        if len(bodies) == 3:
            return httpx.Response(429, headers={"Retry-After": "3"})
        return httpx.Response(200, content=RECEIPT.model_dump_json())

    client, sleeps = transport(handler)
    assert client.upload("/api/v1/runs/r/rounds/1/updates", b"envelope") == RECEIPT
    assert bodies == [b"envelope"] * 4
    assert len(sleeps) == 3 and sleeps[2] >= 3.0  # Retry-After honoured
    assert all(0 <= s <= 4.0 for s in sleeps)


def test_4xx_is_not_retried_and_maps_to_the_error_class() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return problem(409, "round_closed")

    client, sleeps = transport(handler)
    with pytest.raises(Conflict) as info:
        client.upload("/u", b"x")
    assert info.value.code == "round_closed" and len(calls) == 1 and sleeps == []

    client, _ = transport(lambda request: httpx.Response(401, text="no"))
    with pytest.raises(AuthError):
        client.poll(0)


def test_gives_up_with_unavailable_after_the_attempts() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client, sleeps = transport(handler, attempts=3)
    with pytest.raises(Unavailable):
        client.health()
    assert len(sleeps) == 2


def test_report_is_best_effort() -> None:
    client, sleeps = transport(lambda request: httpx.Response(500))
    client.report(StatusReport(run_id="r", round=1, state="training"))
    assert sleeps == []


def test_download_resumes_with_range(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000
    ranges: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ranges.append(request.headers.get("range"))
        if len(ranges) == 1:  # the first try breaks off half-way
            return httpx.Response(
                200, content=payload[:100_000], headers={"content-length": str(len(payload))}
            )
        start = int(request.headers["range"].removeprefix("bytes=").rstrip("-"))
        return httpx.Response(
            206,
            content=payload[start:],
            headers={"content-range": f"bytes {start}-{len(payload) - 1}/{len(payload)}"},
        )

    client, _ = transport(handler)
    dest = tmp_path / "bundles" / "0000.tar"
    assert client.download("/b", dest) == dest
    assert dest.read_bytes() == payload
    assert ranges == [None, "bytes=100000-"]
    assert not dest.with_name("0000.tar.part").exists()


def test_decline_posts_the_signed_decline_and_maps_decline_conflict() -> None:
    from shared import crypto
    from shared.privacy import Decline, DeclineReceipt, SignedDecline, sign_decline

    signed = sign_decline(
        Decline(
            run_id="r",
            round=2,
            site="s",
            reason="budget_exhausted",
            message="over",
            created_at=datetime.now(UTC),
        ),
        crypto.generate_signing_key(),
    )
    path = routes.DECLINE.format(run_id="r", round=2)
    answers = [
        problem(503, "unavailable"),
        httpx.Response(
            200,
            content=DeclineReceipt(
                run_id="r",
                round=2,
                site="s",
                reason="budget_exhausted",
                recorded_at=datetime.now(UTC),
            ).model_dump_json(),
        ),
        problem(409, "decline_conflict"),
    ]
    bodies: list[SignedDecline] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == path
        bodies.append(SignedDecline.model_validate_json(request.content))
        return answers.pop(0)

    client, _ = transport(handler)
    assert client.decline(path, signed).reason == "budget_exhausted"  # retried after the 503
    with pytest.raises(Conflict) as raised:
        client.decline(path, signed)
    assert raised.value.code == "decline_conflict"
    assert bodies == [signed] * 3
