"""PostgreSQL unreachable under a running batch (a proxy in front of the machine's server cuts
every connection and refuses new ones): the bridge keeps its messages unacked until the database
is back and records each once; the worker's local activities retry through the outage."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from ota import protocol
from ota.bridge import Bridge
from ota.db.engine import make_engine
from ota.db.models import Batch, Task
from tests.fixtures.database import PG_ADMIN_URL
from tests.fixtures.outage import TcpProxy
from tests.linkkit.seed import seed_fleet, tasks
from tests.test_bridge import Recorder, bridge_settings, publisher, running, until
from tests.test_e2e import (
    reported,
    start_fleet_batch,
    task_states,
    wait_for,
)

OUTAGE_SECONDS = 20

# Each test takes a service away and gives it back: 20 to 100 s.
pytestmark = pytest.mark.slow


@pytest.fixture
def pg_database(pg_proxy: TcpProxy) -> Iterator[tuple[str, str]]:
    """A fresh database: its URL direct, and its URL through the proxy."""
    name = f"ota_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    proxied = f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/{name}"
    try:
        yield f"{base}/{name}", proxied
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_the_bridge_holds_its_messages_while_postgres_is_away_and_records_each_once(
    pg_proxy: TcpProxy, pg_database, mqtt_url, tmp_path
):
    direct_url, proxied_url = pg_database
    direct = make_engine(direct_url)
    fleet = seed_fleet(direct, 3)
    pk, (done, busy, broken) = fleet.product_key, fleet.names
    proxied = make_engine(proxied_url, migrate=False)
    recorder = Recorder()
    settings = bridge_settings(tmp_path, mqtt_url)
    bridge = Bridge(settings, proxied, recorder, session_expiry=60, products=[pk])
    async with running(bridge), publisher(mqtt_url) as device:
        pg_proxy.cut()
        inform, progress = protocol.inform_topic, protocol.progress_topic
        await device.publish(inform(pk, done), protocol.encode_inform("1", "2.0.0"), 1)
        await device.publish(progress(pk, busy), protocol.encode_progress("2", 40), 1)
        await device.publish(progress(pk, broken), protocol.encode_progress("3", -3), 1)
        await until(lambda: bridge.stats["reconnects"] >= 2, 30, "the bridge trying again")
        await asyncio.sleep(OUTAGE_SECONDS / 2)
        # Backing off, not reconnecting to the broker every 0.5 s for the whole outage.
        assert bridge.stats["reconnects"] <= 6, bridge.stats
        assert {t.state for t in tasks(direct, fleet.batch_id).values()} == {"pushed"}
        assert recorder.reports == []
        pg_proxy.restore()
        await until(lambda: len(recorder.reports) == 2, 60, "the signals after the outage")
        await until(lambda: bridge.stats["flushes"] >= 1, what="a flush acked")
        await asyncio.sleep(1)  # a second copy of a signal would show up by now
    states = {dn: (t.state, t.progress) for dn, t in tasks(direct, fleet.batch_id).items()}
    assert states == {done: ("updated", None), busy: ("in_upgrade", 40), broken: ("pushed", None)}
    names = sorted((wid.rsplit("/", 1)[-1], arg.outcome) for wid, _, arg in recorder.reports)
    assert names == sorted([(broken, "failed"), (done, "updated")])
    # Acked: the broker has nothing left for this session.
    again = Bridge(settings, direct, Recorder(), session_expiry=60, products=[pk])
    async with running(again):
        await asyncio.sleep(2)
    assert again.stats["received"] == 0
    direct.dispose()
    proxied.dispose()


async def test_a_batch_rides_out_postgres_away_for_20_seconds(
    pg_proxy: TcpProxy, pg_database, ota_processes, mqtt_url
):
    """Worker and bridge reach PostgreSQL through the proxy (the api, which serves downloads,
    does not: this is about their records). Cut mid-batch for 20 s: pushes and records wait and
    retry (LOCAL_RETRY), and the batch ends with every device updated, pushed once, attempt 1."""
    direct_url, proxied_url = pg_database
    stack = ota_processes
    pk, devices = f"pgo{uuid.uuid4().hex[:8]}", 30
    stack.env["OTA_DATABASE_URL"] = proxied_url
    stack.start("worker")
    stack.start("bridge")
    stack.env["OTA_DATABASE_URL"] = direct_url  # the api's, the simulator's and this test's
    stack.start("api")
    run = await start_fleet_batch(
        stack, mqtt_url, pk, devices, ["--install-seconds", "2"], rate_per_minute=60,
        timeout_minutes=30,
    )  # fmt: skip
    ctx, batch_id, counter = run.ctx, run.batch_id, run.counter
    await wait_for(lambda: sum(counter.pushes.values()) >= 8, 60, "8 devices pushed")
    pg_proxy.cut()
    pushed_at_cut = sum(counter.pushes.values())
    await asyncio.sleep(OUTAGE_SECONDS)
    # No push without its record: the push records before it publishes.
    assert sum(counter.pushes.values()) <= pushed_at_cut + 1
    pg_proxy.restore()
    await wait_for(
        lambda: Session(ctx.engine).get(Batch, batch_id).state == "completed",
        240,
        "batch completed",
        interval=2,
    )
    assert task_states(ctx.engine, batch_id) == Counter({"updated": devices})
    assert reported(ctx.engine, pk, "2.0.0") == devices
    assert len(counter.pushes) == devices and set(counter.pushes.values()) == {1}
    with Session(ctx.engine) as s:
        attempts = s.exec(select(func.max(Task.attempts)).where(Task.batch_id == batch_id)).one()
    assert attempts == 1, "an attempt counted twice"
    assert stack.alive("worker") and stack.alive("bridge")
    run.listening.cancel()


async def test_the_api_answers_503_while_postgres_is_away_and_recovers_by_itself(
    pg_proxy: TcpProxy, pg_database, tmp_path
):
    from tests.test_api_support import api_client, api_settings, assert_problem

    _, proxied_url = pg_database
    settings = api_settings(tmp_path, proxied_url)
    async with api_client(settings, raise_app_exceptions=False) as client:
        assert (await client.get("/api/v1/products")).status_code == 200
        pg_proxy.cut()
        try:
            r = await client.get("/api/v1/products")
            body = assert_problem(r, 503)
            assert "database" in body["detail"] and r.headers["Retry-After"]
            assert "postgres@" not in r.text
        finally:
            pg_proxy.restore()
        await wait_for_status(client, "/api/v1/products", 200)  # the pool reconnects


async def wait_for_status(client, path: str, status: int, timeout: float = 20):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await client.get(path)
        if r.status_code == status or asyncio.get_running_loop().time() > deadline:
            assert r.status_code == status, r.text
            return r
        await asyncio.sleep(0.5)


async def test_a_worker_started_while_postgres_is_away_waits_for_it(
    pg_proxy: TcpProxy, pg_database, ota_processes
):
    """Found by the fault harness (seed 342169): the worker, restarted while PostgreSQL refused
    connections, exited on its first migration, and the batch never completed."""
    stack = ota_processes
    _, proxied_url = pg_database
    stack.env["OTA_DATABASE_URL"] = proxied_url
    pg_proxy.cut()
    try:
        stack.start("worker")
        await wait_for(lambda: "cannot open the database" in stack.log("worker"), 60, "a retry")
        assert stack.alive("worker")
        assert "postgres@" not in stack.log("worker")
    finally:
        pg_proxy.restore()
    await wait_for(lambda: "worker polling" in stack.log("worker"), 90, "the worker polling")
    assert stack.alive("worker")


async def test_a_bridge_started_while_postgres_is_away_waits_for_it(
    pg_proxy: TcpProxy, pg_database, ota_processes
):
    stack = ota_processes
    _, proxied_url = pg_database
    stack.env["OTA_DATABASE_URL"] = proxied_url
    pg_proxy.cut()
    try:
        stack.start("bridge")
        await wait_for(lambda: "cannot open the database" in stack.log("bridge"), 60, "a retry")
        assert stack.alive("bridge")
    finally:
        pg_proxy.restore()
    await wait_for(lambda: "bridge connected" in stack.log("bridge"), 90, "the bridge serving")
    assert stack.alive("bridge")
