"""Pagination at small scale: the mechanism that keeps every page of the device list and of a
batch's task list cheap at 100,000 rows (bench/pages.py measures that size).

Pages are disjoint and complete, forward and back; a limit beyond the cap is refused naming the
field; a cursor past the end is an empty last page; the console links the next page; and on
PostgreSQL the queries the services really run walk an index narrowed to the product or batch,
in id order, with no sequential scan and no sort.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import Engine, event, insert, text
from sqlmodel import Session

from ota.api.app import create_app
from ota.db.models import Batch, Device, DeviceModule, Firmware, Product, Task
from ota.errors import InvalidInput
from ota.services import batches, devices, firmware
from ota.services.paging import PAGE_MAX
from ota.settings import Settings
from tests.fixtures.database import database_url, engine  # noqa: F401 (fixtures)
from tests.test_api_support import assert_problem

PK, OTHER, BATCH = "pk_pages", "pk_other", "bpages"
TOKEN = "pages-token"


def fill(db: Engine, rows: int, others: int = 0) -> None:
    """`rows` devices of PK, one task each in BATCH, every kind of row the filters pick; and
    `others` devices (and tasks) of another product and batch, so an index narrowed to PK or
    BATCH is what the planner must choose, as on a shared installation."""
    with Session(db) as session:
        for pk in (PK, OTHER):
            session.add(Product(product_key=pk, name=pk))
        session.flush()
        for pk, batch_id in ((PK, BATCH), (OTHER, "bother")):
            fw = Firmware(product_key=pk, name="fw_pages", version="2.0.0", file_name="f", size=1,
                          md5="x", sha256="x", storage_key="x", need_verify=False)  # fmt: skip
            session.add(fw)
            session.flush()
            assert fw.id is not None
            session.add(Batch(id=batch_id, firmware_id=fw.id, product_key=pk, module="default",
                              target_version="2.0.0"))  # fmt: skip
        session.flush()
        # The other product's rows between PK's, as on a shared installation: a page of PK
        # read along the primary key would step over thousands of them.
        each = others // rows if rows else 0
        theirs = iter([(OTHER, "bother", i) for i in range(others)])
        plan = [row for i in range(rows) for row in [(PK, BATCH, i), *islice(theirs, each)]]
        plan += list(theirs)
        ids = session.scalars(
            insert(Device).returning(Device.id, sort_by_parameter_order=True),  # type: ignore[arg-type]
            [
                {"product_key": pk, "name": f"dev-{i:06d}", "online": i % 3 == 0}
                for pk, _, i in plan
            ],
        ).all()
        session.execute(
            insert(DeviceModule),
            [
                {"device_id": d, "module": "default", "version": "1.1.0" if i % 2 else "1.0.0"}
                for d, (_, _, i) in zip(ids, plan, strict=True)
            ],  # fmt: skip
        )
        session.execute(
            insert(Task),
            [
                {
                    "batch_id": b,
                    "device_id": d,
                    "product_key": pk,
                    "device_name": f"dev-{i:06d}",
                    "module": "default",
                    "target_version": "2.0.0",
                    "state": "failed" if i % 5 == 0 else "updated",
                    "reason": "timeout" if i % 5 == 0 else None,
                }  # fmt: skip
                for d, (pk, b, i) in zip(ids, plan, strict=True)
            ],
        )
        session.commit()


def every_page(fetch: Callable[..., Any], limit: int) -> list[list[int]]:
    """Every page from the first, following next_after_id; the ids of each."""
    pages, after = [], 0
    while True:
        page = fetch(limit=limit, after_id=after)
        pages.append([_id(item) for item in page.items])
        if page.next_after_id is None:
            return pages
        after = page.next_after_id


def _id(item: Any) -> int:
    return item["id"] if isinstance(item, dict) else item.id


def test_pages_are_disjoint_complete_and_walk_back(engine: Engine):  # noqa: F811
    fill(engine, 250, others=30)
    with Session(engine) as session:
        all_devices = session.execute(
            text("SELECT id FROM devices WHERE product_key = :pk"), {"pk": PK}
        ).all()
        all_failed = session.execute(
            text("SELECT id FROM tasks WHERE batch_id = :b AND state = 'failed'"), {"b": BATCH}
        ).all()
    lists: dict[str, tuple[Callable[..., Any], list[int]]] = {
        "devices": (
            lambda **kw: devices.device_page(engine, PK, **kw),
            [r[0] for r in all_devices],
        ),
        "failed tasks": (
            lambda **kw: batches.task_page(engine, BATCH, state="failed", **kw),
            [r[0] for r in all_failed],
        ),
    }
    for name, (fetch, expected) in lists.items():
        pages = every_page(fetch, limit=40)
        ids = [i for page in pages for i in page]
        assert ids == sorted(expected), name  # complete, in order, none twice
        assert all(len(p) == 40 for p in pages[:-1]) and 0 < len(pages[-1]) <= 40, name
        # The last page says so itself: no empty page after it.
        last = fetch(limit=40, after_id=pages[-2][-1])
        assert last.next_after_id is None and [_id(x) for x in last.items] == pages[-1], name
        # Back from the last page: the same pages, in order.
        back, before = [], fetch(limit=40, after_id=pages[-2][-1]).prev_before_id
        while before is not None:
            page = fetch(limit=40, before_id=before)
            back.insert(0, [_id(x) for x in page.items])
            before = page.prev_before_id
        assert back == pages[:-1], name
        # A cursor past the end: an empty last page, not an error.
        beyond = fetch(limit=40, after_id=max(expected) + 1000)
        assert beyond.items == [] and beyond.next_after_id is None, name

    # Filters page the same way: devices on 1.1.0, devices online.
    def ids(**filters: Any) -> list[int]:
        fetch = lambda **kw: devices.device_page(engine, PK, **filters, **kw)  # noqa: E731
        return [i for page in every_page(fetch, 30) for i in page]

    on_11, online = ids(versions=["1.1.0"]), ids(online=True)
    assert len(on_11) == 125 and len(set(on_11)) == 125
    assert len(online) == 84
    assert devices.device_counts(engine, PK) == {"devices": 250, "online": 84}
    assert devices.fleet_counts(engine)[OTHER] == {"devices": 30, "online": 10}


def test_limit_and_cursors_are_checked_naming_the_field(engine: Engine):  # noqa: F811
    fill(engine, 3)
    for limit in (0, PAGE_MAX + 1):
        with pytest.raises(InvalidInput, match=f"between 1 and {PAGE_MAX}") as exc:
            devices.device_page(engine, PK, limit=limit)
        assert exc.value.field == "limit"
        with pytest.raises(InvalidInput) as exc:
            batches.task_page(engine, BATCH, limit=limit)
        assert exc.value.field == "limit"
    with pytest.raises(InvalidInput) as exc:
        devices.device_page(engine, PK, after_id=5, before_id=9)
    assert exc.value.field == "before_id"
    with pytest.raises(InvalidInput) as exc:
        batches.task_page(engine, BATCH, after_id=-1)
    assert exc.value.field == "after_id"


@contextmanager
def app_client(db: Engine, tmp_path) -> Iterator[AsyncClient]:  # type: ignore[no-untyped-def]
    settings = Settings(home=tmp_path, database_url=db.url.render_as_string(False),
                        api_token=TOKEN, broker_auth="none")  # fmt: skip
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    yield AsyncClient(transport=ASGITransport(app=app), base_url="http://t", headers=headers)


async def test_the_api_pages_and_caps_and_the_console_links_the_next_page(
    engine: Engine,  # noqa: F811
    tmp_path,
):
    fill(engine, 120)
    with app_client(engine, tmp_path) as client:
        url = f"/api/v1/products/{PK}/devices"
        first = (await client.get(url, params={"limit": 50})).json()
        second = (
            await client.get(url, params={"limit": 50, "after_id": first["next_after_id"]})
        ).json()
        third = (
            await client.get(url, params={"limit": 50, "after_id": second["next_after_id"]})
        ).json()
        names = [d["name"] for p in (first, second, third) for d in p["items"]]
        assert names == [f"dev-{i:06d}" for i in range(120)]
        assert third["next_after_id"] is None and first["prev_before_id"] is None
        back = (
            await client.get(url, params={"limit": 50, "before_id": third["prev_before_id"]})
        ).json()
        assert back["items"] == second["items"]
        problem = assert_problem(
            await client.get(url, params={"limit": PAGE_MAX + 1}), 422, "limit"
        )
        assert str(PAGE_MAX) in problem["detail"]
        tasks = f"/api/v1/batches/{BATCH}/tasks"
        assert_problem(await client.get(tasks, params={"limit": PAGE_MAX + 1}), 422, "limit")
        end = (await client.get(tasks, params={"after_id": 2**31 - 1})).json()
        assert end == {"items": [], "next_after_id": None, "prev_before_id": None}

        # The console: a page of 50 rows and a link to the next, from the last row shown.
        await client.post("/login", data={"token": TOKEN, "next": "/firmware"})
        page = (await client.get(f"/products/{PK}/devices")).text
        assert page.count("<tr data-device=") == 50
        assert f"after_id={first['items'][49]['id']}" in page and 'id="next-page"' in page
        assert 'id="prev-page"' not in page and "120 devices, 40 online" in page
        page = (await client.get(f"/products/{PK}/devices", params={"after_id": 100})).text
        assert page.count("<tr data-device=") == 20 and 'id="next-page"' not in page
        assert 'id="prev-page"' in page
        page = (await client.get(f"/batches/{BATCH}", params={"state": "updated"})).text
        assert page.count("<tr data-device=") == 50 and 'id="next-page"' in page


# --- PostgreSQL: the plans -----------------------------------------------------------------------


def _queries(db: Engine, call: Callable[[], Any]) -> list[tuple[str, Any]]:
    """The SELECTs a service call really runs, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(db, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(db, "before_cursor_execute", record)
    return seen


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _plan(db: Engine, statement: str, parameters: Any) -> list[dict[str, Any]]:
    with db.connect() as conn:
        # At a few thousand rows the planner rightly reads a few pages and sorts them; with
        # bitmap and sequential scans priced out it shows the path it takes at 100,000 rows
        # (bench/pages.py), and a Sort still shows when no index gives the page's order.
        conn.exec_driver_sql("SET enable_seqscan = off")
        conn.exec_driver_sql("SET enable_bitmapscan = off")
        conn.exec_driver_sql("SET enable_hashjoin = off")  # a page joins its rows one by one
        found = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar()
    return list(_nodes((found if isinstance(found, list) else json.loads(found))[0]["Plan"]))


def _page_query(queries: list[tuple[str, Any]], table: str) -> tuple[str, Any]:
    [found] = [q for q in queries if "LIMIT" in q[0] and f"FROM {table}" in q[0]]
    return found


PAGES: dict[str, tuple[Callable[[Engine, list[int]], Any], str, str]] = {
    # (the service call, given the engine and the ids of PK's rows in the table; the table; the
    # column an index must be narrowed by)
    "devices": (lambda e, ids: devices.device_page(e, PK), "devices", "product_key"),
    "devices deep": (
        lambda e, ids: devices.device_page(e, PK, after_id=ids[100]),
        "devices",
        "product_key",
    ),
    "devices back": (
        lambda e, ids: devices.device_page(e, PK, before_id=ids[200]),
        "devices",
        "product_key",
    ),
    "devices online": (lambda e, ids: devices.device_page(e, PK, online=True), "devices", "online"),
    "devices on a version": (
        lambda e, ids: devices.device_page(
            e, PK, versions=["1.1.0"], module="default", after_id=ids[0]
        ),
        "devices",
        "version",
    ),
    "tasks": (lambda e, ids: batches.task_page(e, BATCH), "tasks", "batch_id"),
    "tasks deep": (
        lambda e, ids: batches.task_page(e, BATCH, after_id=ids[100]),
        "tasks",
        "batch_id",
    ),
    "tasks failed": (lambda e, ids: batches.task_page(e, BATCH, state="failed"), "tasks", "state"),
    "tasks timeout": (
        lambda e, ids: batches.task_page(e, BATCH, reason="timeout"),
        "tasks",
        "reason",
    ),
}


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_each_page_walks_an_index_narrowed_to_its_filter(engine: Engine):  # noqa: F811
    """No Seq Scan and no Sort: the page is read from an index in id order from its cursor. And
    that index is narrowed by the filter (its column in an Index Cond), not the primary key
    walked with the filter applied row by row, which reads the whole table for a rare value."""
    fill(engine, 300, others=20_000)
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    for name, (call, table, column) in PAGES.items():
        with engine.connect() as conn:
            query = f"SELECT id FROM {table} WHERE product_key = %(pk)s ORDER BY id"
            ids = list(conn.exec_driver_sql(query, {"pk": PK}).scalars())
        nodes = _plan(
            engine, *_page_query(_queries(engine, lambda c=call, i=ids: c(engine, i)), table)
        )
        kinds = [n["Node Type"] for n in nodes]
        assert "Seq Scan" not in kinds and "Sort" not in kinds, (name, kinds)
        narrowed = [n for n in nodes if column in n.get("Index Cond", "")]
        scans = [(n.get("Index Name"), n.get("Index Cond"), n.get("Filter")) for n in nodes]
        assert narrowed, (name, scans)


# --- the batch list and the firmware list ---------------------------------------------------------

BASE = datetime(2026, 12, 1, tzinfo=UTC)


def fill_lists(db: Engine, n: int, ours: int = 3) -> tuple[list[int], list[tuple[datetime, str]]]:
    """`n` firmware, one in `ours` of them PK's, and `n` batches: half of them of the first
    firmware, a quarter in progress, created three at a time (ties broken by their random ids,
    as two batches created in the same microsecond are). Returns the firmware ids and the batches'
    (created_at, id) keys."""
    with Session(db) as session:
        for pk in (PK, OTHER):
            session.add(Product(product_key=pk, name=pk))
        session.flush()
        firmware_ids = session.scalars(
            insert(Firmware).returning(Firmware.id, sort_by_parameter_order=True),  # type: ignore[arg-type]
            [
                {
                    "product_key": PK if i % ours == 0 else OTHER,
                    "name": f"fw{i}",
                    "module": "default",
                    "version": f"2.0.{i}",
                    "type": "full",
                    "src_versions": [],
                    "sign_method": "MD5",
                    "file_name": "f.bin",
                    "size": 1,
                    "md5": "x",
                    "sha256": "x",
                    "storage_key": "x",
                    "state": "verified",
                    "need_verify": False,
                    "ext_data": {},
                }  # fmt: skip
                for i in range(n)
            ],
        ).all()
        keys = [(BASE + timedelta(seconds=i // 3), uuid.uuid4().hex[:12]) for i in range(n)]
        session.execute(
            insert(Batch),
            [
                {
                    "id": batch_id,
                    "firmware_id": firmware_ids[0] if i % 2 else firmware_ids[1 + i % (n - 1)],
                    "product_key": PK,
                    "module": "default",
                    "target_version": "2.0.0",
                    "src_versions": [],
                    "options": {},
                    "state": "in_progress" if i % 4 == 0 else "completed",
                    "created_at": at,
                }  # fmt: skip
                for i, (at, batch_id) in enumerate(keys)
            ],
        )
        session.commit()
    return list(firmware_ids), keys


def _newest_first(keys: list[tuple[datetime, str]]) -> list[str]:
    return [batch_id for _, batch_id in sorted(keys, reverse=True)]


def test_batch_and_firmware_pages_are_disjoint_complete_and_walk_back(engine: Engine):  # noqa: F811
    firmware_ids, keys = fill_lists(engine, 130)
    first_fw = firmware_ids[0]
    with Session(engine) as session:
        fw_of = dict(session.execute(text("SELECT id, firmware_id FROM batches")).all())
        running = {
            r[0]
            for r in session.execute(text("SELECT id FROM batches WHERE state = 'in_progress'"))
        }
    newest = _newest_first(keys)
    lists: dict[str, tuple[Callable[..., Any], list[Any]]] = {
        "batches": (lambda **kw: batches.batch_page(engine, **kw), newest),
        "a firmware's batches": (
            lambda **kw: batches.batch_page(engine, first_fw, **kw),
            [b for b in newest if fw_of[b] == first_fw],
        ),
        "batches in progress": (
            lambda **kw: batches.batch_page(engine, state="in_progress", **kw),
            [b for b in newest if b in running],
        ),
        "firmware": (lambda **kw: firmware.firmware_page(engine, **kw), firmware_ids),
        "a product's firmware": (
            lambda **kw: firmware.firmware_page(engine, PK, **kw),
            firmware_ids[::3],
        ),
    }
    for name, (fetch, expected) in lists.items():
        pages, after = [], None
        while True:
            page = fetch(limit=20, **({"after_id": after} if after else {}))
            pages.append([_id(item) for item in page.items])
            if page.next_after_id is None:
                break
            after = page.next_after_id
        assert [i for p in pages for i in p] == expected, name  # complete, in order, none twice
        assert all(len(p) == 20 for p in pages[:-1]) and 0 < len(pages[-1]) <= 20, name
        assert len(pages) > 1, name
        back, before = [], fetch(limit=20, after_id=pages[-2][-1]).prev_before_id
        while before is not None:
            page = fetch(limit=20, before_id=before)
            back.insert(0, [_id(x) for x in page.items])
            before = page.prev_before_id
        assert back == pages[:-1], name
    # A page of batches counts each one's tasks by state (one query for the page).
    page = batches.batch_page(engine, limit=PAGE_MAX)
    assert len(page.items) == 130 and all(b["counts"] == {} for b in page.items)


def test_batch_counts_come_with_each_batch_of_a_page(engine: Engine):  # noqa: F811
    fill(engine, 50, others=10)
    listed = {b["id"]: b["counts"] for b in batches.batch_page(engine).items}
    assert listed == {BATCH: {"failed": 10, "updated": 40}, "bother": {"failed": 2, "updated": 8}}
    assert batches.show_batch(engine, BATCH)["counts"] == listed[BATCH]


def test_batch_and_firmware_limits_and_cursors_name_the_field(engine: Engine):  # noqa: F811
    fill_lists(engine, 5)
    for limit in (0, PAGE_MAX + 1):
        for call in (
            lambda n=limit: batches.batch_page(engine, limit=n),
            lambda n=limit: firmware.firmware_page(engine, limit=n),
        ):
            with pytest.raises(InvalidInput, match=f"between 1 and {PAGE_MAX}") as exc:
                call()
            assert exc.value.field == "limit"
    with pytest.raises(InvalidInput, match="no batch gone") as exc:
        batches.batch_page(engine, after_id="gone")
    assert exc.value.field == "after_id"
    with pytest.raises(InvalidInput) as exc:
        batches.batch_page(engine, after_id="a", before_id="b")
    assert exc.value.field == "before_id"
    with pytest.raises(InvalidInput) as exc:
        firmware.firmware_page(engine, after_id=-1)
    assert exc.value.field == "after_id"


async def test_the_batch_and_firmware_lists_page_in_the_api_and_the_console(
    engine: Engine,  # noqa: F811
    tmp_path,
):
    firmware_ids, keys = fill_lists(engine, 70)
    newest = _newest_first(keys)
    with app_client(engine, tmp_path) as client:
        seen: list[str] = []
        params: dict[str, Any] = {"limit": 30}
        while True:
            body = (await client.get("/api/v1/batches", params=params)).json()
            assert set(body) == {"items", "next_after_id", "prev_before_id"}
            seen += [b["id"] for b in body["items"]]
            if body["next_after_id"] is None:
                break
            params["after_id"] = body["next_after_id"]
        assert seen == newest
        fw_url = f"/api/v1/firmware/{firmware_ids[0]}/batches"
        theirs = (await client.get(fw_url, params={"limit": 1000})).json()
        assert len(theirs["items"]) == 35 and theirs["next_after_id"] is None
        listed = (await client.get("/api/v1/firmware", params={"limit": 50})).json()
        assert [f["id"] for f in listed["items"]] == firmware_ids[:50]
        rest = await client.get("/api/v1/firmware", params={"after_id": listed["next_after_id"]})
        assert [f["id"] for f in rest.json()["items"]] == firmware_ids[50:]
        for url in ("/api/v1/batches", fw_url, "/api/v1/firmware"):
            problem = assert_problem(
                await client.get(url, params={"limit": PAGE_MAX + 1}), 422, "limit"
            )
            assert str(PAGE_MAX) in problem["detail"], url
        assert_problem(
            await client.get("/api/v1/batches", params={"after_id": "a b"}), 422, "after_id"
        )
        assert_problem(
            await client.get("/api/v1/batches", params={"after_id": "gone"}), 422, "after_id"
        )

        # The console: 50 a page and the links between pages, from the rows shown.
        await client.post("/login", data={"token": TOKEN, "next": "/firmware"})
        page = (await client.get("/firmware")).text
        assert page.count("<tr data-firmware-id=") == 50
        assert f"?after_id={firmware_ids[49]}" in page and 'id="prev-page"' not in page
        page = (await client.get("/firmware", params={"after_id": firmware_ids[49]})).text
        assert page.count("<tr data-firmware-id=") == 20 and 'id="next-page"' not in page
        assert f"?before_id={firmware_ids[50]}" in page
        ours = [b for b in newest if b in {i["id"] for i in theirs["items"]}]
        page = (await client.get(f"/firmware/{firmware_ids[0]}", params={"after_id": ours[9]})).text
        assert page.count("<tr data-batch-id=") == 25 and 'id="next-page"' not in page
        assert f"?before_id={ours[10]}" in page
        # A cursor batch deleted since: the first page, not an error page.
        page = (await client.get(f"/firmware/{firmware_ids[0]}", params={"after_id": "gone"})).text
        assert page.count("<tr data-batch-id=") == 35


# (the service call, given the engine, PK's first firmware and a batch id; the table whose page it
# is; the column an Index Cond must hold: the filter's, or the cursor's)
LISTS: dict[str, tuple[Callable[[Engine, int, str], Any], str, str]] = {
    "batches": (lambda e, fw, b: batches.batch_page(e), "batches", ""),
    "batches deep": (lambda e, fw, b: batches.batch_page(e, after_id=b), "batches", "created_at"),
    "batches back": (lambda e, fw, b: batches.batch_page(e, before_id=b), "batches", "created_at"),
    "a firmware's batches": (  # a firmware with few: its index, not the newest walked
        lambda e, fw, b: batches.batch_page(e, fw + 1, after_id=b),
        "batches",
        "firmware_id",
    ),
    "batches in progress": (
        lambda e, fw, b: batches.batch_page(e, state="in_progress"),
        "batches",
        "state",
    ),
    "firmware": (lambda e, fw, b: firmware.firmware_page(e), "firmware", ""),
    "firmware deep": (
        lambda e, fw, b: firmware.firmware_page(e, after_id=fw + 300),
        "firmware",
        "id",
    ),
    "a product's firmware": (
        lambda e, fw, b: firmware.firmware_page(e, PK, after_id=fw),
        "firmware",
        "product_key",
    ),
}


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_batch_and_firmware_pages_and_task_counts_walk_an_index(engine: Engine):  # noqa: F811
    """The batch list and the firmware list as the device list: no Seq Scan, no Sort, the
    filter (or the cursor) in an Index Cond. And a batch's tasks are counted from the (batch_id,
    state, reason) index alone: an Index Only Scan, for one batch or a page of them."""
    firmware_ids, keys = fill_lists(engine, 3000, ours=100)  # PK's firmware: a few
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    middle = _newest_first(keys)[1500]
    for name, (call, table, column) in LISTS.items():
        queries = _queries(engine, lambda c=call: c(engine, firmware_ids[0], middle))
        nodes = _plan(engine, *_page_query(queries, table))
        kinds = [n["Node Type"] for n in nodes]
        assert "Seq Scan" not in kinds and "Sort" not in kinds, (name, kinds)
        scans = [(n.get("Index Name"), n.get("Index Cond"), n.get("Filter")) for n in nodes]
        assert any(column in (n.get("Index Cond") or "") for n in nodes), (name, scans)
    for name, call in {
        "a batch's counts": lambda: batches.show_batch(engine, middle),
        "a page's counts": lambda: batches.batch_page(engine),
    }.items():
        [counting] = [q for q in _queries(engine, call) if "count(*)" in q[0]]
        nodes = _plan(engine, *counting)
        scans = [(n["Node Type"], n.get("Index Name")) for n in nodes if "Scan" in n["Node Type"]]
        assert scans == [("Index Only Scan", "ix_tasks_batch_state_reason")], (name, scans)
