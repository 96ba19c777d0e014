"""The one error vocabulary of fedseg.

Services raise a `FedsegError` subclass with a stable string ``code``; the server
translates it once, at the edge, into ``application/problem+json`` with that code,
and the client maps a problem body back to the same class with `error_for_code`.
The ``http_status`` class attribute is the status the server answers with. An
answer without a code (a proxy's 502, a framework's 405) gets one from its status
through `code_for_status`: the one status table, used by the server's problem
handler, the site's transport and the admin client alike (`error_from_answer`).

Tree (the HTTP status in brackets)::

    FedsegError [500]
    ├── InvalidInput [422]          invalid_input, extra_field, bad_privacy_entry
    ├── AuthError [401]             unauthenticated, bad_token, token_revoked, token_expired
    │   └── Forbidden [403]         forbidden, wrong_site
    ├── NotFound [404]              not_found, unknown_run, unknown_site, unknown_round
    ├── Conflict [409]              conflict, round_not_open, round_closed, update_conflict,
    │                               stale_round, site_exists, run_state, round_state,
    │                               secagg_threshold, secagg_refused, decline_conflict,
    │                               not_a_participant
    ├── PayloadTooLarge [413]       payload_too_large
    ├── RateLimited [429]           rate_limited
    ├── IntegrityError [400]        bad_signature, decryption_failed, hash_mismatch,
    │                               malformed_envelope, truncated, weak_key
    ├── TensorError [422]           tensor_mismatch, non_finite, base_model_mismatch,
    │                               bad_num_samples, norm_exceeded
    ├── BundleError [400]           bundle_invalid, unknown_key
    ├── DataError [422]             data_invalid
    ├── ConfigError [500]           config_invalid
    └── Unavailable [503]           unavailable
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Final


class FedsegError(Exception):
    """Base of every error fedseg raises on purpose.

    ``code`` is stable and machine-readable; ``message`` is for people and may change.
    """

    default_code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    codes: ClassVar[tuple[str, ...]] = ("internal",)

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidInput(FedsegError):
    """A request or file does not have the expected shape."""

    default_code = "invalid_input"
    http_status = 422
    codes: ClassVar[tuple[str, ...]] = (
        "invalid_input",
        "extra_field",
        "bad_privacy_entry",  # an update's ε ledger entry is missing, extra or for another run
    )


class AuthError(FedsegError):
    """The caller is not authenticated."""

    default_code = "unauthenticated"
    http_status = 401
    codes: ClassVar[tuple[str, ...]] = (
        "unauthenticated",
        "bad_token",
        "token_revoked",
        "token_expired",
    )


class Forbidden(AuthError):
    """The caller is authenticated but may not do this."""

    default_code = "forbidden"
    http_status = 403
    codes: ClassVar[tuple[str, ...]] = ("forbidden", "wrong_site")


class NotFound(FedsegError):
    """The thing named does not exist."""

    default_code = "not_found"
    http_status = 404
    codes: ClassVar[tuple[str, ...]] = ("not_found", "unknown_run", "unknown_site", "unknown_round")


class Conflict(FedsegError):
    """The request disagrees with the current state."""

    default_code = "conflict"
    http_status = 409
    codes: ClassVar[tuple[str, ...]] = (
        "conflict",
        "round_not_open",
        "round_closed",
        "update_conflict",
        "stale_round",
        "site_exists",
        "run_state",
        "round_state",
        "secagg_threshold",  # too few survivors hold shares to unmask a round's sum
        "secagg_refused",  # a site refuses an unmask request that would reveal one input
        "decline_conflict",  # a decline disagrees with what the site already did this round
        "not_a_participant",  # the site was sampled out of this round (sites_per_round)
    )


class PayloadTooLarge(FedsegError):
    """A body is larger than the server accepts."""

    default_code = "payload_too_large"
    http_status = 413
    codes: ClassVar[tuple[str, ...]] = ("payload_too_large",)


class RateLimited(FedsegError):
    """Too many requests (or failed logins) from one address; retry after a while."""

    default_code = "rate_limited"
    http_status = 429
    codes: ClassVar[tuple[str, ...]] = ("rate_limited",)


class IntegrityError(FedsegError):
    """Bytes failed a signature, hash or authenticated-decryption check."""

    default_code = "bad_signature"
    http_status = 400
    codes: ClassVar[tuple[str, ...]] = (
        "bad_signature",
        "decryption_failed",
        "hash_mismatch",
        "malformed_envelope",
        "truncated",
        "weak_key",  # a small-order or non-canonical public key
    )


class TensorError(FedsegError):
    """Tensors disagree with the expected spec: names, shapes, dtypes, finiteness."""

    default_code = "tensor_mismatch"
    http_status = 422
    codes: ClassVar[tuple[str, ...]] = (
        "tensor_mismatch",
        "non_finite",
        "base_model_mismatch",
        "bad_num_samples",
        "norm_exceeded",  # the delta's L2 norm is above what the run's clip allows
    )


class BundleError(FedsegError):
    """A model bundle is malformed or not signed by a trusted key."""

    default_code = "bundle_invalid"
    http_status = 400
    codes: ClassVar[tuple[str, ...]] = ("bundle_invalid", "unknown_key")


class DataError(FedsegError):
    """A site's local data cannot be used."""

    default_code = "data_invalid"
    http_status = 422
    codes: ClassVar[tuple[str, ...]] = ("data_invalid",)


class ConfigError(FedsegError):
    """Settings are missing or unsafe; the process refuses to start."""

    default_code = "config_invalid"
    http_status = 500
    codes: ClassVar[tuple[str, ...]] = ("config_invalid",)


class Unavailable(FedsegError):
    """A dependency (database, blob store, server) cannot be reached."""

    default_code = "unavailable"
    http_status = 503
    codes: ClassVar[tuple[str, ...]] = ("unavailable",)


ERROR_CLASSES: tuple[type[FedsegError], ...] = (
    Forbidden,
    AuthError,
    InvalidInput,
    NotFound,
    Conflict,
    PayloadTooLarge,
    RateLimited,
    IntegrityError,
    TensorError,
    BundleError,
    DataError,
    ConfigError,
    Unavailable,
)

_BY_CODE: dict[str, type[FedsegError]] = {code: cls for cls in ERROR_CLASSES for code in cls.codes}


CODE_FOR_STATUS: Final[Mapping[int, str]] = {
    400: "invalid_input",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "invalid_input",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid_input",
    429: "rate_limited",
    500: "internal",
    502: "unavailable",
    503: "unavailable",
    504: "unavailable",
}
"""The code of an HTTP answer that carries none; 429 and gateway errors are transient."""


def code_for_status(status: int) -> str:
    """The stable code for an HTTP status (`CODE_FOR_STATUS`, else by its class)."""
    if status in CODE_FOR_STATUS:
        return CODE_FOR_STATUS[status]
    return "internal" if status >= 500 else "invalid_input"


def error_for_code(code: str, message: str, *, status: int | None = None) -> FedsegError:
    """Rebuild the error a problem body describes.

    An unknown code (from a newer server) keeps its code and takes the class of its
    HTTP ``status`` when one is given, else `FedsegError`.
    """
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = _BY_CODE.get(code_for_status(status), FedsegError) if status else FedsegError
    return cls(message, code=code)


def error_from_answer(status: int, body: object, reason: str) -> FedsegError:
    """The error a failed HTTP answer stands for: its problem ``code``, else its status.

    ``body`` is the answer's parsed JSON (anything, or None); ``reason`` is the
    message to use when the body has no ``detail``.
    """
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        detail = body.get("detail") or body.get("title") or reason
        return error_for_code(body["code"], str(detail), status=status)
    return error_for_code(code_for_status(status), reason, status=status)
