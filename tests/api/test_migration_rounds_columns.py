"""Migrations that add a column to ``rounds`` (0005 ``server_state``, 0006 ``participants``):
each comes and goes cleanly, keeps the rounds it finds, and after it the database is
exactly what the models describe."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from server.db.engine import MIGRATIONS_DIR, sync_url
from server.db.models import Base
from tests.api.conftest import Initialised


def _columns(engine: object) -> set[str]:
    with engine.connect() as connection:  # type: ignore[attr-defined]
        return {column["name"] for column in inspect(connection).get_columns("rounds")}


@pytest.mark.parametrize(
    ("column", "before"),
    [("server_state", "0004_privacy"), ("participants", "0005_server_state")],
)
def test_the_migration_adding_a_rounds_column_downgrades_and_upgrades(
    initialised: Initialised, column: str, before: str
) -> None:
    url = sync_url(initialised.settings.database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    engine = create_engine(url)
    try:
        assert column in _columns(engine)
        command.downgrade(config, before)
        engine.dispose()  # pooled SQLite connections keep the schema they first read
        assert column not in _columns(engine)
        with engine.begin() as connection:  # a run and a round from before the migration
            connection.execute(
                text(
                    "INSERT INTO runs (id, name, status, config, created_at) "
                    "VALUES ('r1', 'old', 'running', '{}', '2026-01-01 00:00:00')"
                )
            )
            connection.execute(
                text("INSERT INTO rounds (run_id, number, status) VALUES ('r1', 1, 'closed')")
            )
        command.upgrade(config, "head")
        engine.dispose()
        with engine.connect() as connection:
            rows = connection.execute(text(f"SELECT number, {column} FROM rounds")).all()
            assert [tuple(row) for row in rows] == [(1, None)]
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            assert diff == []
    finally:
        engine.dispose()
