"""Rows by the hundred thousand: PostgreSQL's COPY where the database has it, else executemany
in chunks. A registration or a batch of 100,000 devices writes that many rows; executemany with
RETURNING took 8 s for 30,000 devices on PostgreSQL, where COPY takes a fraction of a second.

Rows stream from an iterable, so a caller that makes them lazily never holds them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from sqlalchemy import Table, insert, text
from sqlmodel import Session

CHUNK = 2000  # rows per executemany where there is no COPY (SQLite)


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def reserve_ids(session: Session, table: Table, n: int) -> list[int]:
    """`n` fresh ids from the table's id sequence, in one query: rows copied with them can be
    referred to (a device's modules, the ids a caller returns) without reading them back.
    PostgreSQL only."""
    if n <= 0:
        return []
    query = text("SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :n)")
    return [row[0] for row in session.execute(query, {"table": table.name, "n": n})]


def insert_with_ids(
    session: Session, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> list[int]:
    """Insert `rows` and return their new ids, in the rows' order."""
    if is_postgres(session):
        ids = reserve_ids(session, table, len(rows))
        _copy(
            session, table, ["id", *columns], ((i, *row) for i, row in zip(ids, rows, strict=True))
        )
        return ids
    returning = insert(table).returning(table.c.id, sort_by_parameter_order=True)
    params = [dict(zip(columns, row, strict=True)) for row in rows]
    return list(session.scalars(returning, params).all()) if params else []


def write_rows(
    session: Session, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """Insert `rows` (tuples in `columns`' order) in the session's transaction; how many."""
    if is_postgres(session):
        return _copy(session, table, columns, rows)
    written = 0
    for chunk in _chunks(rows):
        session.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in chunk])
        written += len(chunk)
    return written


def _copy(
    session: Session, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    # The session's own connection: the rows commit or roll back with the rest of its work.
    driver = session.connection().connection.driver_connection
    assert driver is not None
    names = ", ".join(f'"{c}"' for c in columns)
    written = 0
    with (
        driver.cursor() as cursor,
        cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy,
    ):
        for row in rows:
            copy.write_row(row)
            written += 1
    return written


def _chunks(rows: Iterable[Sequence[Any]]) -> Iterator[list[Sequence[Any]]]:
    it = iter(rows)
    while chunk := list(islice(it, CHUNK)):
        yield chunk
