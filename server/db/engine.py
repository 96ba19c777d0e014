"""Engines, sessions and migrations: the database, built once per process.

SQLite (the default) runs in WAL mode with a busy timeout, foreign keys on, and
every transaction begun IMMEDIATE, so concurrent writers queue instead of failing
with "database is locked" on a lock upgrade. Inside the process they queue on an
asyncio lock, in arrival order, before they BEGIN: SQLite's busy handler polls with
sleeps of up to 100 ms, so a transaction left to it can wait several of them while
others overtake it (the busy timeout still covers other processes, such as the
CLI). Reads that write nothing (authentication, the prechecks of an upload) use
`Database.read`: a deferred transaction on a second pool that takes neither the
lock nor SQLite's write lock, so they never queue behind commits (WAL readers see
the last committed state). PostgreSQL is used as is.

A transaction that appended audit events seals them into the hash chain: on SQLite
before it commits (it is the only writer anyway), on PostgreSQL right after, in a
short background transaction of its own, so the chain's lock is never held while
a transaction takes other row locks (no deadlocks) and no response waits for it;
see `Repository.seal_audit`. A `read` never commits, so nothing is audited in one.
Migrations run with a synchronous driver of the same database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)

from server.db.repositories import SEAL_BATCH, Repository

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 30_000
_IN_TRANSACTION: ContextVar[bool] = ContextVar("fedseg_in_transaction", default=False)


def sync_url(url: str) -> str:
    """The synchronous form of an async database URL (for Alembic)."""
    parsed = make_url(url)
    if parsed.drivername == "sqlite+aiosqlite":
        parsed = parsed.set(drivername="sqlite")
    return parsed.render_as_string(hide_password=False)


def migrate(url: str) -> None:
    """Bring the database schema to the newest revision (idempotent)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    command.upgrade(config, "head")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_begin_read(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN DEFERRED")


def make_engine(url: str, *, read_only: bool = False) -> AsyncEngine:
    """An async engine with the per-dialect settings above (``read_only``: deferred BEGIN)."""
    engine = create_async_engine(url, pool_pre_ping=url.startswith("postgresql"))
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        begin = _sqlite_begin_read if read_only else _sqlite_begin
        event.listen(engine.sync_engine, "begin", begin)
    return engine


class Database:
    """The engine and a session factory; hands out repositories inside transactions."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._writer = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        self._sealer: asyncio.Task[None] | None = None
        self._seal_again = False
        self._reader: AsyncEngine | None = None
        self._read_sessions = self._sessions
        if self._writer is not None:
            self._reader = make_engine(
                engine.url.render_as_string(hide_password=False), read_only=True
            )
            self._read_sessions = async_sessionmaker(self._reader, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Repository]:
        """One transaction: committed on success, rolled back on any exception.

        On SQLite transactions of this process run one at a time, first come first
        served; opening one inside another would wait for itself, so it raises.
        """
        async with AsyncExitStack() as stack:
            if self._writer is not None:
                if _IN_TRANSACTION.get():
                    raise RuntimeError("a transaction cannot be opened inside another one")
                await stack.enter_async_context(self._writer)
                marker = _IN_TRANSACTION.set(True)
                stack.callback(_IN_TRANSACTION.reset, marker)
            session = await stack.enter_async_context(self._sessions())
            await stack.enter_async_context(session.begin())
            repo = Repository(session)
            yield repo
            if repo.audited and self._writer is not None:
                # SQLite: this transaction is the only writer already; seal before commit
                await repo.seal_audit()
                repo.audited = False
        if repo.audited:  # PostgreSQL: seal after the commit, without holding its locks
            self._schedule_seal()

    def _schedule_seal(self) -> None:
        """Seal in the background, coalescing requests: a response never waits for it."""
        if self._sealer is not None and not self._sealer.done():
            self._seal_again = True
            return
        self._sealer = asyncio.create_task(self._seal_until_settled())

    async def _seal_until_settled(self) -> None:
        while True:
            self._seal_again = False
            await self.seal_audit_quietly()
            if not self._seal_again:
                return

    async def seal_audit(self) -> int:
        """Chain every audit event committed so far; returns how many were sealed."""
        total = 0
        while True:
            async with self.transaction() as repo:
                sealed = await repo.seal_audit()
            total += sealed
            if sealed < SEAL_BATCH:
                return total

    async def seal_audit_quietly(self) -> None:
        """`seal_audit` after a commit: a failure leaves the events for the next seal."""
        try:
            await self.seal_audit()
        except Exception:
            log.exception("sealing the audit chain failed; it is retried on the next append")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Repository]:
        """A transaction that only reads: it does not wait for writers, nor they for it.

        Anything written in it is rolled back, never committed. It may run inside a
        `transaction` (it is another connection), but sees only committed rows. Rows
        loaded in it stay readable afterwards (detached, not expired).
        """
        async with self._read_sessions() as session:
            # closing (not rolling back) keeps what was loaded readable; the pool rolls
            # the connection back when it takes it back
            yield Repository(session)

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        """Finish sealing the audit chain, then release every pooled connection."""
        if self._sealer is not None:
            await self._sealer
        await self.engine.dispose()
        if self._reader is not None:
            await self._reader.dispose()


__all__ = ["Database", "make_engine", "migrate", "sync_url"]
