"""Sending a signed decline: once, durably, and never in a loop the server would refuse.

The agent writes the signed decline to the round's ledger folder before it sends it,
so a restart re-sends the same one (`client.state`). The answers that matter: a
receipt (recorded in ``decline_receipt.json``); ``decline_conflict`` (the server
already holds another decline of this round: nothing more to do); a closed round
(the decline is moot, ``dropped.json``); any other 4xx, which a retry would only
repeat, stops the agent with `DeclineRefused`. 5xx and network errors propagate for
the agent's usual backoff, and the same decline goes out again next time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Final, Literal, Protocol

from client.state import LedgerEntry
from shared import routes
from shared.errors import AuthError, Conflict, FedsegError
from shared.files import write_atomic
from shared.privacy import DeclineReceipt, SignedDecline

log = logging.getLogger(__name__)

DECLINE_CONFLICT: Final = "decline_conflict"
DeclineOutcome = Literal["declined", "dropped"]


class DeclineTransport(Protocol):
    """The one call a decline needs (see `client.transport.HttpTransport.decline`)."""

    def decline(self, path: str, signed: SignedDecline) -> DeclineReceipt:
        """POST a signed decline; raises `Conflict` when the round no longer takes it."""
        ...


class DeclineRefused(FedsegError):
    """The server refused a decline with a 4xx that a retry would repeat: the agent stops."""


def store_decline(entry: LedgerEntry, signed: SignedDecline) -> None:
    """Keep the signed decline (fsync'd) before it is sent: from here on it is final."""
    write_atomic(entry.decline, signed.model_dump_json(indent=2).encode())


def stored_decline(entry: LedgerEntry) -> SignedDecline | None:
    """The decline a previous process signed for this round, if any."""
    if not entry.decline.is_file():
        return None
    return SignedDecline.model_validate_json(entry.decline.read_bytes())


def send_decline(
    transport: DeclineTransport,
    entry: LedgerEntry,
    signed: SignedDecline,
    *,
    drop_codes: Collection[str],
) -> DeclineOutcome:
    """Send ``signed`` and settle the answer (module docstring); log one line."""
    decline = signed.decline
    where = f"round {decline.run_id}/{decline.round}"
    path = routes.DECLINE.format(run_id=decline.run_id, round=decline.round)
    try:
        receipt = transport.decline(path, signed)
    except Conflict as exc:
        if exc.code == DECLINE_CONFLICT:
            log.warning(
                "%s declined (%s), but the server already holds another decline of it (%s); "
                "moving on",
                where,
                decline.reason,
                exc.message,
            )
            return "declined"
        if exc.code in drop_codes:
            log.warning("%s: the decline is moot, the round no longer runs (%s)", where, exc)
            record = {"code": exc.code, "message": exc.message, "at": datetime.now(UTC).isoformat()}
            write_atomic(entry.dropped, json.dumps(record, indent=2).encode())
            return "dropped"
        raise _refused(where, exc) from None
    except FedsegError as exc:
        if isinstance(exc, AuthError) or not 400 <= exc.http_status < 500:
            raise
        raise _refused(where, exc) from None
    write_atomic(entry.decline_receipt, receipt.model_dump_json(indent=2).encode())
    log.warning("%s declined (%s): %s", where, decline.reason, decline.message)
    return "declined"


def _refused(where: str, exc: FedsegError) -> DeclineRefused:
    return DeclineRefused(
        f"the server refuses the decline of {where}: {exc.message}; retrying cannot help "
        "(does the server take declines? see docs/privacy.md)",
        code=exc.code,
    )
