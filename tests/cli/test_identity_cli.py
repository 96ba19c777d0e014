"""``fedseg admin tokens …`` and ``fedseg admin audit verify`` against a real server."""

from __future__ import annotations

import json
import sqlite3

import pytest

from shared.schemas import AuditVerification, TokenCreated, TokenInfo

pytestmark = pytest.mark.integration  # a real server process on loopback


def _json(result):
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


def test_tokens_create_list_revoke(admin):
    created = TokenCreated.model_validate(
        _json(admin("tokens", "create", "ci-viewer", "--role", "viewer", "--json"))
    )
    assert created.token.status == "active" and created.secret.startswith("fsa_")
    assert admin("sites", "list", token=created.secret).exit_code == 0
    listed = [TokenInfo.model_validate(t) for t in _json(admin("tokens", "list", "--json"))]
    assert created.token.id in {t.id for t in listed}
    table = admin("tokens", "list")
    assert table.exit_code == 0 and "ci-viewer" in table.stdout
    assert created.secret not in table.stdout
    revoked = admin("tokens", "revoke", str(created.token.id))
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    refused = admin("sites", "list", token=created.secret)
    assert refused.exit_code == 1 and "[token_revoked]" in refused.stderr
    short = _json(admin("tokens", "create", "short", "--expires-in-days", "1", "--json"))
    assert short["token"]["expires_at"] is not None
    bad = admin("tokens", "create", "x", "--role", "site")
    assert bad.exit_code == 1 and "[invalid_input]" in bad.stderr


def test_audit_verify_catches_an_edited_row(admin, server):
    intact = admin("audit", "verify")
    assert intact.exit_code == 0 and "intact" in intact.stdout, intact.stdout
    assert AuditVerification.model_validate(_json(admin("audit", "verify", "--json"))).ok
    assert admin("audit", "--limit", "3").exit_code == 0  # reading still works
    database = server.data_dir / "fedseg.db"
    with sqlite3.connect(database) as connection:
        row_id, target = connection.execute(
            "SELECT id, target FROM audit_events ORDER BY id LIMIT 1"
        ).fetchone()
        connection.execute("UPDATE audit_events SET target = 'x' WHERE id = ?", (row_id,))
    try:
        broken = admin("audit", "verify")
        assert broken.exit_code == 1
        assert "broken" in broken.stdout and f"id {row_id}" in broken.stdout
        result = AuditVerification.model_validate_json(admin("audit", "verify", "--json").stdout)
        assert not result.ok and result.broken_id == row_id
    finally:
        with sqlite3.connect(database) as connection:
            connection.execute("UPDATE audit_events SET target = ? WHERE id = ?", (target, row_id))
    assert admin("audit", "verify").exit_code == 0
