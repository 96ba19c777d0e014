"""A small typed client for the server's admin REST API (httpx, synchronous).

Used by ``fedseg admin`` and by ``fedseg simulate``. Every call returns a wire model
from `shared.schemas`; every failure raises a `FedsegError`: a problem+json answer
becomes the error class of its ``code`` (`shared.errors.error_from_answer`), a network
failure becomes `Unavailable`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared import routes
from shared.errors import FedsegError, InvalidInput, Unavailable, error_from_answer
from shared.schemas import (
    AuditEvent,
    AuditVerification,
    ModelVersion,
    RoundInfo,
    RunConfig,
    RunCreate,
    RunInfo,
    ServerKey,
    SignInLink,
    SiteCreate,
    SiteCreated,
    SiteInfo,
    SiteReissue,
    TokenCreate,
    TokenCreated,
    TokenInfo,
)

M = TypeVar("M", bound=BaseModel)

DEFAULT_TIMEOUT_S = 30.0
AUDIT_PAGE = 1000  # the server's largest page


def _segment(value: object) -> str:
    """One path segment, escaped so a name can never add a path level."""
    return quote(str(value), safe="")


def error_from_response(response: httpx.Response) -> FedsegError:
    """The `FedsegError` a non-2xx answer stands for (`shared.errors.error_from_answer`)."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    reason = response.reason_phrase or f"HTTP {response.status_code}"
    return error_from_answer(response.status_code, body, reason)


class AdminClient:
    """The admin API over one HTTP connection pool; use as a context manager."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            follow_redirects=False,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # --- plumbing -------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise Unavailable(f"{self.base_url} did not answer in time ({exc})") from None
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the server at {self.base_url}: {exc}") from None
        if response.is_success:
            return response
        raise error_from_response(response)

    def _one(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        response = self._request(method, path, **kwargs)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise InvalidInput(
                f"the server's answer to {method} {path} is not a {model.__name__}: "
                f"{_first_error(exc)}"
            ) from None

    def _many(self, model: type[M], path: str, **kwargs: Any) -> list[M]:
        response = self._request("GET", path, **kwargs)
        try:
            return TypeAdapter(list[model]).validate_json(response.content)  # type: ignore[valid-type]
        except ValidationError as exc:
            raise InvalidInput(
                f"the server's answer to GET {path} is not a list of {model.__name__}: "
                f"{_first_error(exc)}"
            ) from None

    # --- operations -----------------------------------------------------------------------

    def healthz(self) -> bool:
        """Whether the process answers."""
        try:
            self._request("GET", routes.HEALTHZ)
        except FedsegError:
            return False
        return True

    def readyz(self) -> bool:
        """Whether the database and blob store are reachable."""
        try:
            self._request("GET", routes.READYZ)
        except FedsegError:
            return False
        return True

    def sign_in_link(self) -> str:
        """A one-time dashboard sign-in URL for this admin (works once, for 10 minutes)."""
        link = self._one(SignInLink, "POST", routes.UI_SIGN_IN_LINKS)
        return f"{self.base_url}{link.path}"

    def server_key(self) -> ServerKey:
        """The server's public signing key (no token needed)."""
        return self._one(ServerKey, "GET", routes.SERVER_KEY)

    # --- sites ----------------------------------------------------------------------------

    def create_site(self, name: str, *, token_ttl_s: float | None = None) -> SiteCreated:
        """Register a site; the answer holds its one-time enrollment token."""
        body = (
            SiteCreate(name=name)
            if token_ttl_s is None
            else SiteCreate(name=name, token_ttl_s=token_ttl_s)
        )
        return self._one(SiteCreated, "POST", routes.SITES, json=body.model_dump(mode="json"))

    def list_sites(self) -> list[SiteInfo]:
        """Every registered site."""
        return self._many(SiteInfo, routes.SITES)

    def revoke_site(self, name: str) -> SiteInfo:
        """Revoke a site's credential (and any unused enrollment token)."""
        return self._one(SiteInfo, "POST", routes.SITE_REVOKE.format(name=_segment(name)))

    def reissue_token(self, name: str, *, token_ttl_s: float | None = None) -> SiteCreated:
        """A fresh enrollment token; the old token and the site's enrolled key stop working."""
        body = SiteReissue() if token_ttl_s is None else SiteReissue(token_ttl_s=token_ttl_s)
        path = routes.SITE_REISSUE.format(name=_segment(name))
        return self._one(SiteCreated, "POST", path, json=body.model_dump(mode="json"))

    # --- runs -----------------------------------------------------------------------------

    def create_run(self, name: str, config: RunConfig) -> RunInfo:
        """Create a run (status ``created``)."""
        body = RunCreate(name=name, config=config)
        return self._one(RunInfo, "POST", routes.RUNS, json=body.model_dump(mode="json"))

    def start_run(self, run_id: str) -> RunInfo:
        """Start a created run: round 1 opens."""
        return self._one(RunInfo, "POST", routes.RUN_START.format(run_id=_segment(run_id)))

    def stop_run(self, run_id: str) -> RunInfo:
        """Stop a run (it becomes ``cancelled``)."""
        return self._one(RunInfo, "POST", routes.RUN_STOP.format(run_id=_segment(run_id)))

    def list_runs(self) -> list[RunInfo]:
        """Every run."""
        return self._many(RunInfo, routes.RUNS)

    def get_run(self, run_id: str) -> RunInfo:
        """One run by id."""
        return self._one(RunInfo, "GET", routes.RUN.format(run_id=_segment(run_id)))

    def find_run(self, ref: str) -> RunInfo:
        """A run by id or, failing that, by its (unique) name."""
        try:
            return self.get_run(ref)
        except FedsegError as exc:
            if exc.code not in ("not_found", "unknown_run", "invalid_input"):
                raise
            first = exc
        matches = [run for run in self.list_runs() if run.name == ref]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidInput(
                f"{len(matches)} runs are named {ref!r}; name one by id: "
                + ", ".join(run.id for run in matches)
            )
        raise first

    def list_rounds(self, run_id: str) -> list[RoundInfo]:
        """Every round of a run so far, with per-site progress."""
        return self._many(RoundInfo, routes.ROUNDS.format(run_id=_segment(run_id)))

    def get_round(self, run_id: str, round_number: int) -> RoundInfo:
        """One round of a run."""
        path = routes.ROUND.format(run_id=_segment(run_id), round=int(round_number))
        return self._one(RoundInfo, "GET", path)

    # --- models ---------------------------------------------------------------------------

    def list_models(self, run_id: str) -> list[ModelVersion]:
        """The consensus models a run has signed so far (version 0 is the initial one)."""
        return self._many(ModelVersion, routes.MODELS.format(run_id=_segment(run_id)))

    def download_bundle(self, run_id: str, version: int) -> bytes:
        """A model version's signed bundle as tar bytes (not verified here)."""
        path = routes.MODEL_BUNDLE.format(run_id=_segment(run_id), version=int(version))
        return self._request("GET", path).content

    def stream_bundle(self, run_id: str, version: int) -> Iterator[bytes]:
        """Like `download_bundle`, in chunks, for large models."""
        path = routes.MODEL_BUNDLE.format(run_id=_segment(run_id), version=int(version))
        try:
            with self._http.stream("GET", path) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response)
                yield from response.iter_bytes()
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot download from {self.base_url}: {exc}") from None

    # --- audit ----------------------------------------------------------------------------

    def audit(self, *, limit: int | None = None, after: int | None = None) -> list[AuditEvent]:
        """Audit events with an id above ``after``, oldest first (one page)."""
        params: dict[str, int] = {}
        if limit is not None:
            params["limit"] = limit
        if after is not None:
            params["after"] = after
        return self._many(AuditEvent, routes.AUDIT, params=params)

    def audit_latest(self, limit: int) -> list[AuditEvent]:
        """The newest ``limit`` audit events (at most a page), oldest of them first."""
        params = {"limit": min(limit, AUDIT_PAGE), "newest": "true"}
        return self._many(AuditEvent, routes.AUDIT, params=params)[::-1]

    def verify_audit(self) -> AuditVerification:
        """Have the server recompute the audit hash chain."""
        return self._one(AuditVerification, "GET", routes.AUDIT_VERIFY)

    # --- tokens ---------------------------------------------------------------------------

    def create_token(self, request: TokenCreate) -> TokenCreated:
        """Mint an admin or viewer token (its secret is in the answer only)."""
        return self._one(TokenCreated, "POST", routes.TOKENS, json=request.model_dump(mode="json"))

    def list_tokens(self) -> list[TokenInfo]:
        """Every admin and viewer token, without secrets."""
        return self._many(TokenInfo, routes.TOKENS)

    def revoke_token(self, token_id: int) -> TokenInfo:
        """Revoke a token for good."""
        return self._one(TokenInfo, "POST", routes.TOKEN_REVOKE.format(token_id=_segment(token_id)))


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ()))
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def read_token_file(path: Path) -> str:
    """An admin token from a file: its first non-empty line, or the JSON ``admin_token``.

    Accepts the bare token or the JSON that ``fedseg server init --json`` prints.
    """
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InvalidInput(f"cannot read token file {path}: {exc.strerror}") from None
    if text.startswith("{"):
        try:
            value = json.loads(text).get("admin_token")
        except (ValueError, AttributeError):
            value = None
        if isinstance(value, str) and value:
            return value
        raise InvalidInput(f"token file {path} is JSON without an admin_token")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise InvalidInput(f"token file {path} is empty")
    return lines[0]
