"""schemathesis against the app in-process: the server does what its OpenAPI document says.

Requests are generated from the server's own schema (valid and invalid ones), sent
with an admin token over the ASGI interface, and every answer must be: not a 5xx, a
documented status, the documented content type, headers and body schema, and an
invalid request must not be accepted. Examples are bounded so that the whole
module takes a minute or two on two cores.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from server.bootstrap import init_data_dir
from shared import crypto, routes
from tests.api.conftest import TINY_MODEL, make_settings

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 40
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]


@dataclass
class Fuzzed:
    schema: Any
    admin: dict[str, str]


async def _populate(settings: Any, token: str) -> None:
    """A site, an enrolled site and a run, so list and get answers have bodies to check."""
    app = create_app(settings)
    admin = {"Authorization": f"Bearer {token}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fedseg.test") as client:
            await client.post(routes.SITES, json={"name": "pending"}, headers=admin)
            created = await client.post(routes.SITES, json={"name": "alpha"}, headers=admin)
            key = crypto.generate_signing_key()
            public = base64.b64encode(crypto.public_bytes(key.public_key())).decode()
            enrolled = await client.post(
                routes.ENROLL,
                json={"token": created.json()["enrollment_token"], "signing_public_key": public},
            )
            assert enrolled.status_code == 200, enrolled.text
            config = {"model_params": TINY_MODEL, "rounds": 1, "sites": ["alpha"]}
            run = await client.post(
                routes.RUNS, json={"name": "fuzzed", "config": config}, headers=admin
            )
            assert run.status_code == 201, run.text


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Fuzzed:
    root: Path = tmp_path_factory.mktemp("fuzz")
    settings = make_settings(
        root / "data",
        f"sqlite+aiosqlite:///{root / 'fuzz.db'}",
        auth_failure_limit=1_000_000,  # every request carries the admin token anyway
        max_wait_s=0.0,
    )
    token = init_data_dir(settings).admin_token
    asyncio.run(_populate(settings, token))
    config = SchemathesisConfig.from_dict(
        {
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "mode": "all",
                "deterministic": True,
                "database": "none",
                # Unknown query parameters are ignored, as HTTP servers do; the token is ours.
                "allow-extra-parameters": False,
                "with-security-parameters": False,
            },
            "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
            # A schema-valid request may name a run or site that does not exist (404), clash
            # with state (409) or lack a role (403); it must never be refused as invalid (422).
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "304", "401", "403", "404", "409", "416", "429"]
                }
            },
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings), config=config)
    return Fuzzed(schema=schema, admin={"Authorization": f"Bearer {token}"})


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def _fuzz(operation: Any, mode: GenerationMode, checks: list[Any], headers: dict[str, str]) -> Any:
    """A hypothesis test: ``MAX_EXAMPLES`` cases of ``operation`` in ``mode``, each checked."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=checks)

    return call


# Operations whose bodies carry rules a JSON schema cannot state (or the generator does not
# honour), so a schema-valid example may rightly get 422; every other check still applies.
_BEYOND_JSON_SCHEMA = {
    # model_params are checked against the model's typed parameters (a free object here)
    f"POST {routes.RUNS}",
    # a 32-byte key in base64 must also be a point of large order on the curve
    f"POST {routes.ENROLL}",
    # metric names are bounded by `propertyNames`, which the example generator ignores
    f"POST {routes.STATUS}",
}


def test_the_server_does_what_its_schema_says(fuzzed: Fuzzed) -> None:
    failures: list[str] = []
    for operation in _operations(fuzzed.schema):
        checks = CHECKS
        if operation.label in _BEYOND_JSON_SCHEMA:
            checks = [check for check in CHECKS if check is not positive_data_acceptance]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, checks, fuzzed.admin)()
            except Unsatisfiable:
                continue  # nothing to make invalid (no parameters, no body)
            except (Exception, BaseExceptionGroup) as exc:  # gather every operation's failures
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    assert not failures, "\n\n".join(failures)
