"""Keyset pagination for the lists that grow with the fleet: devices, a batch's tasks, batches
and firmware.

A page is `limit` rows in id order after the previous page's last id (`after_id`), or before the
next page's first id (`before_id`, going back), never an OFFSET: the database walks an index from
that id, so the 1,000th page costs what the first does and rows added meanwhile neither repeat nor
vanish between pages. A page asks for one row more than it shows, so `next_after_id` is None on
the last page rather than on an empty one after it.

Batches are listed newest first and named by random ids: their cursor is a batch id too, and the
page walks the (created_at, id) key of that batch (`keyset_newest`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import tuple_

from ota.domain import ID_MAX
from ota.errors import InvalidInput

PAGE_MAX = 1000  # rows a page holds at most: what one request may make the database read
PAGE_DEFAULT = 100

T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    items: list[T] = field(default_factory=list)
    # Give it as after_id for the next page (None: this is the last); an id, or a batch's id.
    next_after_id: Any = None
    prev_before_id: Any = None  # give it as before_id for the previous; None: the first


def check_limit(limit: int, field: str = "limit") -> int:
    if not 1 <= limit <= PAGE_MAX:
        raise InvalidInput(
            field, f"must be between 1 and {PAGE_MAX}: longer lists are read a page at a time"
        )
    return limit


def check_cursor(after_id: int, before_id: int | None) -> None:
    for name, value in (("after_id", after_id), ("before_id", before_id)):
        if value is not None and not 0 <= value <= ID_MAX:
            raise InvalidInput(name, f"must be between 0 and {ID_MAX}")
    one_way(after_id, before_id)


def one_way(after_id: Any, before_id: Any) -> None:
    if after_id and before_id is not None:
        raise InvalidInput("before_id", "give after_id or before_id, not both")


def keyset(query: Any, id_column: Any, limit: int, after_id: int, before_id: int | None) -> Any:
    """The query limited to one page (and the row that tells whether there is another)."""
    if before_id is not None:
        return query.where(id_column < before_id).order_by(id_column.desc()).limit(limit + 1)
    return query.where(id_column > after_id).order_by(id_column).limit(limit + 1)


def keyset_newest(
    query: Any,
    columns: Sequence[Any],
    limit: int,
    after: tuple[Any, ...] | None,
    before: tuple[Any, ...] | None,
) -> Any:
    """The query limited to one page, newest first by `columns` (a unique key: created_at, id):
    after the key of the previous page's last row, or before that of the next page's first. A
    row comparison, which an index on those columns answers as its bound."""
    key = tuple_(*columns)
    if before is not None:
        return query.where(key > tuple(before)).order_by(*columns).limit(limit + 1)
    if after is not None:
        query = query.where(key < tuple(after))
    return query.order_by(*(c.desc() for c in columns)).limit(limit + 1)


def page_of(
    rows: Sequence[T],
    limit: int,
    id_of: Callable[[T], Any],
    after_id: Any = 0,
    before_id: Any = None,
) -> Page[T]:
    """The page from the rows `keyset` fetched: the extra row only says there is another page
    that way. Going forward, the page before starts at this one's first row (none from the
    first page); going back, the next page after this one's last row."""
    shown = list(rows[:limit])
    more = len(rows) > limit
    if before_id is None:
        ahead = id_of(shown[-1]) if more else None
        back = id_of(shown[0]) if after_id and shown else None
        return Page(shown, ahead, back)
    shown.reverse()
    ahead = id_of(shown[-1]) if shown else None
    return Page(shown, ahead, id_of(shown[0]) if more else None)
