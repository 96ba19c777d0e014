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


def _site_status(admin, name: str) -> str:
    result = admin("sites", "list", "--json")
    assert result.exit_code == 0, result.stderr
    return next(s["status"] for s in json.loads(result.stdout) if s["name"] == name)


def test_a_mistyped_fingerprint_leaves_the_token_unspent(admin, server, tmp_path):
    actual = crypto.fingerprint(crypto.load_signing_key(server.key_file).public_key())
    # one digit wrong, as a person would mistype it
    typo = actual[:-1] + ("0" if actual[-1] != "0" else "1")
    token = _token(admin, "typo-site")

    refused = _enroll(server, token, tmp_path / "a", "--server-fingerprint", typo)
    assert refused.exit_code == 1
    assert "token was not sent" in refused.stderr
    assert _site_status(admin, "typo-site") == "pending"  # the server saw no enrollment
    events = json.loads(admin("audit", "--json", "--limit", "1000").stdout)
    assert not [e for e in events if e["target"] == "site:typo-site" and "enroll" in e["action"]]

    # the same token still works once the fingerprint is right
    accepted = _enroll(server, token, tmp_path / "a", "--server-fingerprint", actual)
    assert accepted.exit_code == 0, accepted.stderr
    assert _site_status(admin, "typo-site") == "active"


def test_a_malformed_fingerprint_is_refused_before_any_network_call(tmp_path):
    # port 9 (discard) on loopback: nothing listens, so a network call would fail differently
    result = CliRunner().invoke(
        app,
        [
            "client",
            "enroll",
            "--server",
            "http://127.0.0.1:9",
            "--token",
            "fse_" + "a" * 40,
            "--state-dir",
            str(tmp_path / "state"),
            "--server-fingerprint",
            "5A66 82D4 C816",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 2
    assert "not a fingerprint" in result.stderr and "nothing was sent" in result.stderr
    assert not (tmp_path / "state").exists()


def test_reissue_token_from_the_cli_lets_a_site_enroll_again(admin, server, tmp_path):
    first = _enroll(server, _token(admin, "lost-state"), tmp_path / "old")
    assert first.exit_code == 0, first.stderr
    revoked = admin("sites", "revoke", "lost-state")
    assert revoked.exit_code == 0

    again = admin("sites", "reissue-token", "lost-state")
    assert again.exit_code == 0, again.stderr
    actual = crypto.fingerprint(crypto.load_signing_key(server.key_file).public_key())
    assert actual in again.stdout
    command = next(line for line in again.stdout.splitlines() if "fedseg client enroll" in line)
    assert f"--server-fingerprint '{actual}'" in command
    token = command.split("--token ")[1].split()[0]

    second = _enroll(server, token, tmp_path / "new", "--server-fingerprint", actual)
    assert second.exit_code == 0, second.stderr
    assert _site_status(admin, "lost-state") == "active"
    actions = [e["action"] for e in json.loads(admin("audit", "--json").stdout)]
    assert "site.token_reissued" in actions
