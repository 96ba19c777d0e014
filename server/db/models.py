"""Database rows: SQLAlchemy 2.0 typed mappings. Rows are not wire schemas.

Repositories convert rows to `shared.schemas` models explicitly. Times are stored
as UTC and always come back timezone-aware, whatever the database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and read back as aware UTC (SQLite drops zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalise to naive UTC before writing."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not allowed; use UTC-aware ones")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC on the way out."""
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}  # noqa: RUF012


class SiteRow(Base):
    """A hospital: registered by an admin, active once enrolled, revoked for good."""

    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    signing_public_key: Mapped[str | None] = mapped_column(String(64))
    fingerprint: Mapped[str | None] = mapped_column(String(100))
    credential_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    enrolled_at: Mapped[datetime | None]
    last_seen_at: Mapped[datetime | None]


class EnrollmentTokenRow(Base):
    """A one-time enrollment token, stored as its sha256."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class AdminTokenRow(Base):
    """An admin or viewer bearer token, stored as its sha256."""

    __tablename__ = "admin_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class RunRow(Base):
    """A federated training run; ``config`` is a validated `RunConfig` as JSON."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]]
    current_round: Mapped[int | None]
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class RunSiteRow(Base):
    """Membership: which sites take part in a run."""

    __tablename__ = "run_sites"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), primary_key=True)


class RoundRow(Base):
    """One round of a run; ``weights_sha256`` is the weights hash of the model it trains from."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    number: Mapped[int]
    status: Mapped[str] = mapped_column(String(16))
    opened_at: Mapped[datetime | None]
    deadline: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    public_key: Mapped[str | None] = mapped_column(String(64))
    server_state: Mapped[str | None] = mapped_column(String(64), default=None)
    """Blob key of the server optimiser's state after this round (fedavgm, fedadam, fedyogi)."""
    participants: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    """Names of the sites sampled into this round (``sites_per_round``); NULL: every member."""


class UpdateRow(Base):
    """An accepted update: at most one per site and round."""

    __tablename__ = "updates"
    __table_args__ = (UniqueConstraint("round_id", "site_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    num_samples: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, Any]]
    blob: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime]
    privacy: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    """The header's `EpsilonEntry` (DP runs), as JSON."""


class DeclineRow(Base):
    """A site's signed refusal to train one round: at most one per site and round.

    The run is the round's; ``signed`` is the whole `SignedDecline`, so the record
    can be verified again against the site's key.
    """

    __tablename__ = "declines"
    __table_args__ = (UniqueConstraint("round_id", "site_id", name="uq_declines_round_site"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    reason: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    cumulative_epsilon: Mapped[float | None] = mapped_column(Float)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
    signed: Mapped[dict[str, Any]]
    recorded_at: Mapped[datetime]


class SiteProgressRow(Base):
    """The last status a site reported for a round (dashboards only)."""

    __tablename__ = "site_progress"

    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]


class ModelVersionRow(Base):
    """A signed consensus model; ``bundle`` is the blob key (sha256) of its tar."""

    __tablename__ = "model_versions"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    bundle: Mapped[str] = mapped_column(String(64))
    bundle_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


class AuditEventRow(Base):
    """Append-only audit record: who did what, when, to what.

    ``seq``, ``prev_hash`` and ``hash`` place it in the hash chain; they stay empty
    until the row is sealed, just after its transaction commits.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]]
    seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


class AuditChainRow(Base):
    """The one row (id 1) naming the chain's last sealed event; sealing locks it."""

    __tablename__ = "audit_chain"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
