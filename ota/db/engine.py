"""The database engine: SQLite under OTA_HOME by default, or PostgreSQL (OTA_DATABASE_URL)."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event, text
from sqlmodel import Session, create_engine

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK_KEY = 0x07A_0001  # any constant shared by every ota process
AFTER_COMMIT = "ota_after_commit"  # Session.info key: what after_commit() holds until then
_migrated: set[str] = set()
_migrate_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """Accept plain postgresql:// URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, migrate: bool = True) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    if migrate:
        upgrade(engine)
    return engine


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # Worker, bridge, API and CLI share one file: WAL lets readers and one writer overlap.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def upgrade(engine: Engine) -> None:
    """Apply Alembic migrations up to head, once per database per process.

    Worker, bridge and API start together on a fresh installation: a lock across processes
    (a file lock for SQLite, an advisory lock for PostgreSQL) lets one migrate while the
    others wait and then find the schema at head.
    """
    key = str(engine.url)
    with _migrate_lock:
        if key in _migrated:
            return
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with _across_processes(engine), engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        _migrated.add(key)


@contextmanager
def _across_processes(engine: Engine) -> Iterator[None]:
    """An exclusive file lock beside a SQLite database file; nothing for other databases."""
    path = engine.url.database
    if engine.dialect.name != "sqlite" or not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` when the session's transaction commits; dropped if it rolls back. For
    counting what a transaction did (ota/metrics.py), not what it tried: an activity retried
    after a rollback counts once."""
    pending: list[Callable[[], None]] | None = session.info.get(AFTER_COMMIT)
    if pending is None:
        pending = session.info[AFTER_COMMIT] = []
        event.listen(session, "after_commit", _run_after_commit)
        event.listen(session, "after_rollback", lambda s: s.info[AFTER_COMMIT].clear())
    pending.append(action)


def _run_after_commit(session: Session) -> None:
    pending = session.info[AFTER_COMMIT]
    while pending:
        pending.pop(0)()
