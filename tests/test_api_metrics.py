"""The API's /metrics (issue 14): the fleet's gauges say what `ota batch show` says, downloads
and their bytes are counted, requests by route template, the signature cache's hits."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event, update
from sqlmodel import col

from ota.db.engine import make_engine, session_scope
from ota.db.models import Batch, Task
from ota.domain import TaskReason, TaskState
from ota.services.batches import list_batches, show_batch
from ota.services.security import Signer, set_secure_update
from ota.storage import FirmwareStore
from ota.urls import download_url
from tests.fixtures.prometheus import needs_prometheus, running_prometheus
from tests.linkkit.seed import seed_fleet
from tests.linkkit.servers import api_settings as served_settings
from tests.linkkit.servers import serve_api
from tests.test_api_support import api_client, api_settings, firmware, fleet

# More than one CHUNK (256 KiB): the whole file streams, a short range is one read.
CONTENT = os.urandom(600 * 1024 + 3)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    """/metrics as Prometheus reads it: no token."""
    r = await client.get("/metrics", headers={"Authorization": ""})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def series(samples: Samples, name: str, **match: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of `name` whose labels include `match`, by their other labels."""
    wanted = set(match.items())
    return {
        frozenset(kv for kv in labels if kv not in wanted): v
        for (n, labels), v in samples.items()
        if n == name and wanted <= labels
    }


def by(samples: Samples, name: str, label: str, **match: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in series(samples, name, **match).items()}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@contextmanager
def counting_queries(engine: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def set_tasks(engine: Engine, batch_id: str, names: list[str], state: str, reason: str | None):
    with session_scope(engine) as s:
        s.execute(
            update(Task)
            .where(col(Task.batch_id) == batch_id, col(Task.device_name).in_(names))
            .values(state=state, reason=reason)
        )


async def test_the_fleet_gauges_tell_what_batch_show_tells(tmp_path, database_url, temporal_env):
    address = temporal_env.client.service_client.config.target_host
    settings = api_settings(tmp_path, database_url, address)
    async with api_client(settings) as client:
        engine = client.app.state.ctx.engine  # type: ignore[attr-defined]
        # A batch made through the API: no worker here, so its workflow waits and it has no
        # task yet; it is open all the same.
        pk = await fleet(client, "pkapi", versions=["1.0.0", "1.0.0"])
        fw = await firmware(client, pk)
        r = await client.post(f"/api/v1/firmware/{fw['id']}/batches", json={"SrcVersion": "1.0.0"})
        assert r.status_code == 201, r.text
        waiting = r.json()["id"]
        # One running with tasks in every state a batch passes through, and one completed.
        running = seed_fleet(engine, 7)
        names = running.names
        set_tasks(engine, running.batch_id, names[:2], TaskState.UPDATED, None)
        set_tasks(engine, running.batch_id, names[2:3], TaskState.FAILED, TaskReason.TIMEOUT)
        set_tasks(engine, running.batch_id, names[3:5], TaskState.TO_BE_PUSHED, TaskReason.OFFLINE)
        done = seed_fleet(engine, 3, task_state=TaskState.UPDATED)
        with session_scope(engine) as s:
            s.execute(update(Batch).where(col(Batch.id) == done.batch_id).values(state="completed"))

        with counting_queries(engine) as queries:
            samples = await scrape(client)
        assert len(queries) == 3, queries  # batches, open batches, their tasks: never per batch

        for batch_id in (waiting, running.batch_id):
            shown = show_batch(engine, batch_id)["counts"]
            gauge = by(samples, "ota_batch_tasks", "state", batch_id=batch_id)
            assert gauge == {s.value: shown.get(s.value, 0) for s in TaskState}, batch_id
        assert by(samples, "ota_batch_tasks", "state", batch_id=running.batch_id) == {
            "to_be_pushed": 2,
            "pushed": 2,
            "in_upgrade": 0,
            "updated": 2,
            "failed": 1,
            "canceled": 0,
        }
        assert set(by(samples, "ota_batch_tasks", "product", state="pushed")) == {
            pk,
            running.product_key,
        }
        assert by(samples, "ota_batch_tasks", "batch_id", batch_id=done.batch_id) == {}
        assert series(samples, "ota_batch_tasks_reason", batch_id=running.batch_id) == {
            frozenset({("state", "failed"), ("reason", "timeout")}): 1,
            frozenset({("state", "to_be_pushed"), ("reason", "offline")}): 2,
        }
        listed = Counter((b["state"], b["kind"]) for b in list_batches(engine))
        gauge = series(samples, "ota_batches")
        assert {(dict(k)["state"], dict(k)["kind"]): v for k, v in gauge.items() if v} == listed
        assert len(gauge) == 18  # every state and kind (6 x 3), zeros included
        assert value(samples, "ota_active_batches") == 2

        # Scrapes within the TTL are answered from the last read: no query.
        set_tasks(engine, running.batch_id, names[5:], TaskState.UPDATED, None)
        with counting_queries(engine) as queries:
            again = await scrape(client)
        assert queries == []
        assert by(again, "ota_batch_tasks", "state", batch_id=running.batch_id)["updated"] == 2
        client.app.state.fleet_metrics.ttl = 0  # type: ignore[attr-defined]
        fresh = await scrape(client)
        assert by(fresh, "ota_batch_tasks", "state", batch_id=running.batch_id)["updated"] == 4
        assert by(fresh, "ota_batch_tasks", "state", batch_id=running.batch_id) == {
            s.value: n for s, n in _zeros(show_batch(engine, running.batch_id)["counts"]).items()
        }
        # The process's own metrics come in the same answer.
        assert ("ota_download_requests_total", frozenset({("outcome", "full")})) in fresh

        schema = (await client.get("/openapi.json")).json()
        assert "/metrics" not in schema["paths"]


def _zeros(counts: dict[str, int]) -> dict[TaskState, int]:
    return {s: counts.get(s.value, 0) for s in TaskState}


async def test_downloads_count_by_outcome_and_the_bytes_sent(tmp_path, database_url):
    settings = api_settings(tmp_path, database_url)
    async with api_client(settings, auth=False) as client:
        ctx = client.app.state.ctx  # type: ignore[attr-defined]
        seeded = seed_fleet(ctx.engine, 1, content=CONTENT, store=ctx.store, task_state=None)
        assert seeded.firmware.id is not None
        url = download_url(settings, seeded.firmware.id, seeded.product_key, seeded.names[0])
        path = url.replace(settings.resolved_public_url, "")
        before = await scrape(client)

        assert (await client.get(path)).content == CONTENT
        r = await client.get(path, headers={"Range": "bytes=1000-"})
        assert r.status_code == 206 and r.content == CONTENT[1000:]
        r = await client.get(path, headers={"Range": "bytes=0-99"})  # one read, no streaming
        assert r.status_code == 206 and len(r.content) == 100
        assert (await client.head(path)).status_code == 200  # a request, no body
        assert (await client.get(path.replace("sig=", "sig=0"))).status_code == 403
        r = await client.get(path, headers={"Range": f"bytes={len(CONTENT)}-"})
        assert r.status_code == 416
        ctx.store.delete(seeded.firmware.storage_key)
        assert (await client.get(path)).status_code == 404  # the store lost the file: an error
        assert (await client.get("/nowhere/at/all")).status_code == 404
        assert (await client.get("/static/ota.css")).status_code == 200

        after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    downloads = "ota_download_requests_total"
    assert {o: moved(downloads, outcome=o) for o in ("full", "range", "refused", "error")} == {
        "full": 2,
        "range": 2,
        "refused": 2,
        "error": 1,
    }
    sent = len(CONTENT) + len(CONTENT) - 1000 + 100
    assert moved("ota_download_bytes_total") == sent
    requests = "ota_http_requests_total"
    route = "/download/{firmware_id}"
    by_status = {s: moved(requests, method="GET", route=route, status=s) for s in ("200", "206")}
    assert by_status == {"200": 1, "206": 2}
    assert moved(requests, method="HEAD", route=route, status="200") == 1
    assert moved(requests, method="GET", route=route, status="404") == 1
    assert moved(requests, method="GET", route="unmatched", status="404") == 1
    assert moved(requests, method="GET", route="/static", status="200") == 1  # a mount's prefix
    # Route templates only: no id, query string or signature ever becomes a label.
    routes = {dict(k)["route"] for k in series(after, requests)}
    assert route in routes and f"/download/{seeded.firmware.id}" not in routes
    assert not [r for r in routes if "?" in r or "=" in r or r.startswith("/nowhere")], routes
    hist = "ota_http_request_seconds_count"
    assert value(after, hist, route=route) - value(before, hist, route=route) == 7


def test_the_signature_cache_counts_hits_and_misses(tmp_path, database_url):
    settings = api_settings(tmp_path, database_url, key_encryption_secret="metrics-test")
    engine = make_engine(database_url)
    try:
        seeded = seed_fleet(engine, 1, task_state=None)
        set_secure_update(engine, settings, seeded.product_key, True)

        def count(result: str) -> float:
            return REGISTRY.get_sample_value("ota_signature_cache_total", {"result": result}) or 0

        hits, misses = count("hit"), count("miss")
        signer = Signer(engine, settings)
        first = signer.digestsign(seeded.product_key, seeded.firmware)
        assert first and signer.digestsign(seeded.product_key, seeded.firmware) == first
        assert signer.digestsign(seeded.product_key, seeded.firmware) == first
        assert (count("hit") - hits, count("miss") - misses) == (2, 1)
        assert signer.signed == 1
        # A product without secure update asks for no signature: nothing to count.
        plain = seed_fleet(engine, 1, task_state=None)
        assert signer.digestsign(plain.product_key, plain.firmware) is None
        assert (count("hit") - hits, count("miss") - misses) == (2, 1)
    finally:
        engine.dispose()


@needs_prometheus
def test_a_real_prometheus_reads_the_api_as_batch_show_does(tmp_path):
    """The API under uvicorn, scraped by Debian's Prometheus: PromQL gives show_batch's counts."""
    settings = served_settings(
        api_settings(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}"), url_secret="s"
    )
    engine = make_engine(settings.resolved_database_url)
    try:
        running = seed_fleet(engine, 4, content=CONTENT, store=FirmwareStore(settings))
        set_tasks(engine, running.batch_id, running.names[:1], TaskState.FAILED, "timeout")
        shown = show_batch(engine, running.batch_id)["counts"]
        jobs = {"ota-api": [f"127.0.0.1:{settings.http_port}"]}
        with serve_api(settings) as base, running_prometheus(tmp_path / "prom", jobs) as prom:
            assert running.firmware.id is not None
            url = download_url(settings, running.firmware.id, running.product_key, "dev-00000")
            sent = REGISTRY.get_sample_value("ota_download_bytes_total") or 0
            assert httpx.get(url.replace(settings.resolved_public_url, base)).content == CONTENT
            prom.wait_scraped(jobs=1)
            query = f'ota_batch_tasks{{batch_id="{running.batch_id}"}}'
            assert prom.values(query, "state") == {s.value: n for s, n in _zeros(shown).items()}
            assert prom.values('ota_batches{state="in_progress",kind="static"}', "") == {"": 1}
            assert prom.values("ota_download_bytes_total", "") == {"": sent + len(CONTENT)}
    finally:
        engine.dispose()
