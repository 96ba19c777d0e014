"""``--server-key``: every form a person may paste is read, a private key never is."""

from __future__ import annotations

import base64
import json

import pytest

from fedseg.server_key import load_server_key
from shared import crypto
from shared.errors import IntegrityError, InvalidInput
from shared.schemas import ServerKey

KEY = crypto.generate_signing_key()
PUBLIC = KEY.public_key()
RAW = base64.b64encode(crypto.public_bytes(PUBLIC)).decode()


def _published() -> ServerKey:
    return ServerKey(
        public_key_pem=crypto.public_key_pem(PUBLIC).decode(),
        public_key=RAW,
        key_id=crypto.key_id(PUBLIC),
        fingerprint=crypto.fingerprint(PUBLIC),
    )


def _same(key: object) -> bool:
    return crypto.public_bytes(key) == crypto.public_bytes(PUBLIC)  # type: ignore[arg-type]


def test_pem_base64_files_and_json_all_read(tmp_path):
    pem = crypto.public_key_pem(PUBLIC)
    (tmp_path / "k.pem").write_bytes(pem)
    (tmp_path / "k.json").write_text(_published().model_dump_json())
    state = tmp_path / "state"
    state.mkdir()
    (state / "server.json").write_text(json.dumps({"server_signing_key": RAW}))
    for spec in (pem.decode(), RAW, str(tmp_path / "k.pem"), str(tmp_path / "k.json"), str(state)):
        assert _same(load_server_key(spec)), spec


def test_a_fingerprint_is_checked_against_the_published_key():
    typed = crypto.fingerprint(PUBLIC).lower().replace(" ", ":")
    assert _same(load_server_key(typed, fetch=_published))
    other = crypto.fingerprint(crypto.generate_signing_key().public_key())
    with pytest.raises(IntegrityError, match="not the expected"):
        load_server_key(other, fetch=_published)
    with pytest.raises(InvalidInput, match="cannot verify anything offline"):
        load_server_key(typed)


def test_a_private_key_is_refused_with_a_message_saying_so(tmp_path):
    path = tmp_path / "server_ed25519.pem"
    crypto.save_signing_key(KEY, path)
    with pytest.raises(InvalidInput, match="PRIVATE key") as caught:
        load_server_key(str(path))
    assert "fedseg admin server-key" in caught.value.message


def test_garbage_is_refused_clearly():
    with pytest.raises(InvalidInput, match="neither a PEM"):
        load_server_key("not a key at all")
    with pytest.raises(InvalidInput, match="32-byte"):
        load_server_key(base64.b64encode(b"x" * 31).decode())
