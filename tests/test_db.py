"""Migrations build the schema on both SQLite and PostgreSQL."""

from sqlalchemy import inspect

from ota.db.engine import make_engine


def test_migrations_create_every_table(engine):
    tables = set(inspect(engine).get_table_names())
    assert {"products", "devices", "device_modules", "firmware", "batches", "tasks"} <= tables


def test_migrations_are_idempotent(database_url):
    make_engine(database_url).dispose()
    engine = make_engine(database_url)
    assert "tasks" in inspect(engine).get_table_names()
    engine.dispose()
