"""Migration 0004_privacy: the declines table and ``updates.privacy`` come and go cleanly,
and after it the database is exactly what the models describe."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from server.db.engine import MIGRATIONS_DIR, sync_url
from server.db.models import Base
from tests.api.conftest import Initialised


def test_0004_downgrades_and_upgrades_and_matches_the_models(initialised: Initialised) -> None:
    url = sync_url(initialised.settings.database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            assert "declines" in inspect(connection).get_table_names()
        command.downgrade(config, "0003_identity")
        engine.dispose()  # pooled SQLite connections keep the schema they first read
        with engine.connect() as connection:
            assert "declines" not in inspect(connection).get_table_names()
            columns = {column["name"] for column in inspect(connection).get_columns("updates")}
            assert "privacy" not in columns
        command.upgrade(config, "head")
        engine.dispose()
        with engine.connect() as connection:
            unique = inspect(connection).get_unique_constraints("declines")
            assert [sorted(item["column_names"]) for item in unique] == [["round_id", "site_id"]]
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            assert diff == []
    finally:
        engine.dispose()
