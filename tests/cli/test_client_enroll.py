"""`fedseg client enroll` against a real server: the pinned key can be checked out of band."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedseg.cli import app
from shared import crypto

pytestmark = pytest.mark.integration  # a real server process on loopback


def _token(admin, site: str) -> str:
    result = admin("sites", "create", site, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["enrollment_token"]


def _enroll(server, token: str, state, *extra: str):
    return CliRunner().invoke(
        app,
        [
            "client",
            "enroll",
            "--server",
            server.url,
            "--token",
            token,
            "--state-dir",
            str(state),
            *extra,
        ],
        catch_exceptions=False,
    )


def test_enroll_refuses_a_server_key_other_than_the_expected_one(admin, server, tmp_path):
    actual = crypto.fingerprint(crypto.load_signing_key(server.key_file).public_key())
    wrong = crypto.fingerprint(crypto.generate_signing_key().public_key())

    refused = _enroll(
        server, _token(admin, "mallory-check"), tmp_path / "a", "--server-fingerprint", wrong
    )
    assert refused.exit_code == 1
    assert "not pinning it" in refused.stderr and actual in refused.stderr
    assert not (tmp_path / "a" / "credentials.json").exists()
    assert not (tmp_path / "a" / "server.json").exists()

    # the fingerprint as a person types it: lower case, colons instead of spaces
    typed = actual.lower().replace(" ", ":")
    accepted = _enroll(
        server,
        _token(admin, "honest-check"),
        tmp_path / "b",
        "--server-fingerprint",
        typed,
        "--json",
    )
    assert accepted.exit_code == 0, accepted.stderr
    assert json.loads(accepted.stdout)["server_fingerprint"] == actual
    assert (tmp_path / "b" / "credentials.json").stat().st_mode & 0o777 == 0o600
