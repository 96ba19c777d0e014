"""Signing and verifying round tasks: the site trusts a task's round key only if signed."""

from __future__ import annotations

import base64
import binascii
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared import crypto
from shared.errors import IntegrityError
from shared.schemas import SignedTask, Task, canonical_json

TASK_DOMAIN: Final = b"fedseg/task/v1"


def sign_task(task: Task, signing_key: Ed25519PrivateKey) -> SignedTask:
    """Sign ``task`` with the server key."""
    digest = crypto.domain_digest(TASK_DOMAIN, canonical_json(task))
    return SignedTask(
        task=task,
        key_id=crypto.key_id(signing_key.public_key()),
        signature=base64.b64encode(crypto.sign(signing_key, digest)).decode(),
    )


def verify_task(signed: SignedTask, server_key: Ed25519PublicKey) -> Task:
    """Return the task if the pinned server key signed it; raise `IntegrityError` if not."""
    if signed.key_id != crypto.key_id(server_key):
        raise IntegrityError("task is signed by another key than the pinned server key")
    try:
        signature = base64.b64decode(signed.signature, validate=True)
    except binascii.Error:
        raise IntegrityError("task signature is not base64") from None
    crypto.verify(
        server_key, signature, crypto.domain_digest(TASK_DOMAIN, canonical_json(signed.task))
    )
    return signed.task
