"""The server's API over httpx, for a site: the only module of the client that dials out.

Retries with exponential backoff and full jitter on connection errors, timeouts, 5xx
and 429 (honouring ``Retry-After``); never on other 4xx, which are answers, not
accidents. A problem+json body becomes the `shared.errors` class its ``code`` names,
so the agent handles the same errors the server raised. Bundles download with resume
(``Range``) into a ``.part`` file next to their destination.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, RootModel, ValidationError

from shared import routes
from shared.errors import ConfigError, FedsegError, Unavailable, error_from_answer
from shared.privacy import DeclineReceipt, SignedDecline
from shared.schemas import (
    EnrollRequest,
    EnrollResponse,
    ServerKey,
    SignedKeyRotation,
    StatusReport,
    TaskPoll,
    UpdateReceipt,
)

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)


class _Rotations(RootModel[list[SignedKeyRotation]]):
    """The answer of the key-rotations route."""


CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry: delay ``min(cap, base * 2**n)``, full jitter."""

    attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return rng.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


class _Retryable(Exception):
    def __init__(self, error: FedsegError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def problem_error(response: httpx.Response) -> FedsegError:
    """The `FedsegError` a failed response describes (`shared.errors.error_from_answer`)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    reason = f"server answered {response.status_code} {response.reason_phrase}"
    return error_from_answer(response.status_code, body, reason)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def tls_context(
    *, ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext | bool:
    """How to verify the server: its CA (or its own pinned certificate) from ``ca_file``.

    Without ``ca_file`` the system's trust store is used (``True``). ``cert_file`` and
    ``key_file`` are the site's client certificate when the server asks for one.
    """
    if ca_file is None and cert_file is None:
        return True
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if cert_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files ({ca_file or cert_file}): {exc}") from None
    return context


class HttpTransport:
    """The site's side of the REST API (see `shared.routes`)."""

    def __init__(
        self,
        base_url: str,
        credential: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        timeout_s: float = 60.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        self.base_url = base_url.rstrip("/")
        self.client = client or httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            verify=verify,
        )
        if client is not None:
            self.client.headers.update(headers)
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    def __enter__(self) -> HttpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------

    def _with_retries(self, what: str, attempt_once: Callable[[], ModelT | Any]) -> Any:
        last: FedsegError | None = None
        for attempt in range(self.retry.attempts):
            try:
                return attempt_once()
            except _Retryable as exc:
                last = exc.error
                delay = self.retry.delay(attempt, self.rng)
                if exc.retry_after is not None:
                    delay = min(max(delay, exc.retry_after), self.retry.cap_s)
            except httpx.TransportError as exc:
                last = Unavailable(f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}")
                delay = self.retry.delay(attempt, self.rng)
            if attempt + 1 < self.retry.attempts:
                log.info("%s failed (%s); retrying in %.1f s", what, last, delay)
                self.sleep(delay)
        assert last is not None
        raise last

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(problem_error(response), _retry_after(response))
        if response.status_code >= 400:
            raise problem_error(response)
        return response

    def _call(
        self,
        what: str,
        method: str,
        path: str,
        model: type[ModelT] | None,
        **kwargs: Any,
    ) -> Any:
        def once() -> Any:
            response = self._check(self.client.request(method, path, **kwargs))
            if model is None:
                return None
            try:
                return model.model_validate_json(response.content)
            except ValidationError as exc:
                raise FedsegError(
                    f"{what}: the server's answer is not a valid {model.__name__}: "
                    f"{exc.errors()[0]['msg']}"
                ) from None

        return self._with_retries(what, once)

    # --- API ---------------------------------------------------------------------------

    def health(self) -> None:
        """Raise `Unavailable` unless the server answers its health check."""
        self._call("health check", "GET", routes.HEALTHZ, None)

    def server_key(self) -> ServerKey:
        """The server's public signing key (no credential needed), to check before enrolling."""
        result: ServerKey = self._call("server key", "GET", routes.SERVER_KEY, ServerKey)
        return result

    def enroll(self, request: EnrollRequest) -> EnrollResponse:
        """Exchange an enrollment token and the site's public key for a credential."""
        result: EnrollResponse = self._call(
            "enroll", "POST", routes.ENROLL, EnrollResponse, json=request.model_dump(mode="json")
        )
        return result

    def key_rotations(self) -> list[SignedKeyRotation]:
        """The server's signed key-rotation statements (public; verified by the caller)."""
        result: _Rotations = self._call("key rotations", "GET", routes.KEY_ROTATIONS, _Rotations)
        return result.root

    def poll(self, wait_s: float) -> TaskPoll:
        """Long-poll for the site's next task."""
        timeout = httpx.Timeout(60.0, read=wait_s + 30.0)
        result: TaskPoll = self._call(
            "poll", "GET", routes.TASKS_NEXT, TaskPoll, params={"wait": wait_s}, timeout=timeout
        )
        return result

    def report(self, status: StatusReport) -> None:
        """Tell the server where the site is; best effort, one try, never raises."""
        try:
            self._check(
                self.client.post(routes.STATUS, json=status.model_dump(mode="json"), timeout=10.0)
            )
        except (FedsegError, _Retryable, httpx.HTTPError) as exc:
            log.debug("status report not delivered: %s", exc)

    def upload(self, path: str, envelope: bytes) -> UpdateReceipt:
        """PUT a sealed update; retried with the same bytes (the server is idempotent)."""
        result: UpdateReceipt = self._call(
            "upload",
            "PUT",
            path,
            UpdateReceipt,
            content=envelope,
            headers={"Content-Type": routes.UPDATE_CONTENT_TYPE},
            timeout=httpx.Timeout(60.0, write=600.0, read=600.0),
        )
        return result

    def decline(self, path: str, signed: SignedDecline) -> DeclineReceipt:
        """POST the site's signed decline of a round; retried as is (the server records it once)."""
        result: DeclineReceipt = self._call(
            "decline", "POST", path, DeclineReceipt, json=signed.model_dump(mode="json")
        )
        return result

    def download(self, path: str, dest: Path) -> Path:
        """Download ``path`` to ``dest``, resuming a partial ``dest.part`` with ``Range``."""
        if dest.is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")

        def once() -> Path:
            offset = part.stat().st_size if part.is_file() else 0
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            with self.client.stream(
                "GET", path, headers=headers, timeout=httpx.Timeout(60.0, read=120.0)
            ) as response:
                if response.status_code == 416:  # our partial file is no prefix of theirs
                    part.unlink(missing_ok=True)
                    raise _Retryable(Unavailable("download range refused; starting over"), 0.0)
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                append = response.status_code == 206 and offset > 0
                if append and not response.headers.get("Content-Range", "").startswith(
                    f"bytes {offset}-"
                ):
                    append = False
                    part.unlink(missing_ok=True)
                    raise _Retryable(Unavailable("server resumed at another offset"), 0.0)
                expected = response.headers.get("Content-Length")
                received = 0
                with part.open("ab" if append else "wb") as handle:
                    for chunk in response.iter_bytes(CHUNK):
                        handle.write(chunk)
                        received += len(chunk)
                if expected is not None and received != int(expected):
                    raise _Retryable(Unavailable("download ended early"), 0.0)
            part.replace(dest)
            return dest

        result: Path = self._with_retries(f"download {path}", once)
        return result
