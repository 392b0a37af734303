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


def test_sqlite_never_reuses_firmware_or_task_ids(tmp_path):
    """Signed URLs and device workflows name firmware and tasks by id."""
    from sqlalchemy import text

    engine = make_engine(f"sqlite:///{tmp_path / 'ids.db'}")
    with engine.connect() as conn:
        rows = conn.execute(text("select name, sql from sqlite_master where type = 'table'"))
        ddl = {name: sql for name, sql in rows}
    assert "AUTOINCREMENT" in ddl["firmware"]
    assert "AUTOINCREMENT" in ddl["tasks"]
    engine.dispose()


def test_processes_starting_together_on_a_fresh_database_migrate_once(database_url):
    """Worker, bridge and API start at once on a new installation (a race seen with SQLite)."""
    import subprocess
    import sys

    code = "import sys; from ota.db.engine import make_engine; make_engine(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, database_url], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    engine = make_engine(database_url)
    assert "tasks" in inspect(engine).get_table_names()
    engine.dispose()
