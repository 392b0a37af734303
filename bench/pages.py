"""python -m bench.pages --rows 100000: how long each page of the device list, of a batch's
task list, of the batch list and of the firmware list takes at that size, through the API and in
the console (Playwright, Debian's Chromium), first page, a deep page and every filter.

A fresh PostgreSQL database (OTA_BENCH_PG_ADMIN, the tests' server by default) is filled with
bulk COPY: `rows` devices in one product (versions 1.0.0 / 1.1.0 and a rare 0.9.0, 30% online)
and one batch with a task for each (updated, failed, to be pushed, some offline, in upgrade);
`--lists` more firmware and as many older batches (a fifth of them the big batch's firmware's,
a tenth in progress), then VACUUM ANALYZE, as autovacuum leaves a table that size. `ota api`
serves it as a subprocess. Each page is fetched `--repeat` times after two warm-ups; p50 and max
are printed and written to docs/bench/. Target: every page under 300 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from activities.targets import TASK_COLUMNS
from ota.db.engine import make_engine
from ota.devstack import answers, free_port

PG_ADMIN = os.environ.get("OTA_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
PK, BATCH, TOKEN = "pk_pages", "bpages01", "bench-pages-token"
LISTS = 1000  # firmware, and batches: an installation years old
TARGET_MS = 300
OUT = Path(__file__).resolve().parent.parent / "docs" / "bench"


# --- the data -----------------------------------------------------------------------------------


def version_of(i: int) -> str:
    return "0.9.0" if i % 100 == 0 else ("1.1.0" if i % 2 else "1.0.0")


def task_of(i: int) -> tuple[str, str | None]:
    """The task's state and reason: mostly updated, as in a batch well under way."""
    if i % 20 == 0:
        return "failed", "timeout"
    if i % 20 == 1:
        return "in_upgrade", None
    if i % 10 in (2, 3, 4):
        return "to_be_pushed", "offline" if i % 10 == 2 else None
    return "updated", None


def _copy(conn: psycopg.Connection, table: str, columns: list[str], rows: Iterator[tuple]) -> None:
    with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def fill_lists(conn: psycopg.Connection, firmware_id: int, n: int, now: datetime) -> None:
    """`n` firmware and `n` batches older than the big one, without tasks: the batch list's
    pages (and their counts) and the firmware list's at the size of a long-used installation."""
    _copy(
        conn,
        "firmware",
        ["product_key", "name", "module", "version", "type", "src_versions", "sign_method",
         "file_name", "size", "md5", "sha256", "storage_key", "state", "need_verify", "ext_data",
         "created_at"],  # fmt: skip
        ((PK, f"fw_{i:04d}", "default", f"3.{i}.0", "full", "[]", "MD5", "fw.bin", 1, "x", "x",
          "x", "verified", False, "{}", now - timedelta(days=1, seconds=n - i)) for i in range(n)),
    )  # fmt: skip
    ids = [r[0] for r in conn.execute("SELECT id FROM firmware WHERE id <> %s", (firmware_id,))]
    _copy(
        conn,
        "batches",
        ["id", "firmware_id", "kind", "target", "src_versions", "max_retries", "options",
         "product_key", "module", "target_version", "state", "skipped", "total", "created_at"],
        ((f"bl{i:06d}", firmware_id if i % 5 == 0 else ids[i % len(ids)], "static", "all",
          '["1.0.0"]', 1, "{}", PK, "default", "2.0.0",
          "in_progress" if i % 10 == 0 else "completed", 0, 0,
          now - timedelta(minutes=n - i)) for i in range(n)),
    )  # fmt: skip


def fill(url: str, rows: int, lists: int = LISTS) -> dict[str, float]:
    """The schema (the migrations, as `ota` runs them), then every row by COPY."""
    took: dict[str, float] = {}
    start = time.monotonic()
    make_engine(url).dispose()
    now = datetime.now(UTC)
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO products (product_key, name, secure_update, created_at)"
                     " VALUES (%s, %s, false, %s)", (PK, "Pages bench", now))  # fmt: skip
        _copy(
            conn,
            "devices",
            ["product_key", "name", "online", "last_seen", "created_at", "enabled"],
            ((PK, f"dev-{i:06d}", i % 10 < 3, now, now, True) for i in range(rows)),
        )
        ids = [r[0] for r in conn.execute("SELECT id FROM devices ORDER BY id")]
        _copy(
            conn,
            "device_modules",
            ["device_id", "module", "version", "reported_at"],
            ((d, "default", version_of(i), now) for i, d in enumerate(ids)),
        )
        firmware_id = conn.execute(
            "INSERT INTO firmware (product_key, name, module, version, type, src_versions,"
            " sign_method, file_name, size, md5, sha256, storage_key, state, need_verify,"
            " ext_data, created_at) VALUES (%s, 'fw_pages', 'default', '2.0.0', 'full',"
            " '[\"1.0.0\", \"1.1.0\"]', 'MD5', 'fw.bin', 1, 'x', 'x', 'x', 'verified', false,"
            " '{}', %s) RETURNING id",
            (PK, now),
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO batches (id, firmware_id, kind, target, src_versions, max_retries,"
            " options, product_key, module, target_version, state, skipped, total, prepared_at,"
            " created_at) VALUES (%s, %s, 'static', 'all', '[\"1.0.0\", \"1.1.0\"]', 1, '{}',"
            " %s, 'default', '2.0.0', 'in_progress', 0, %s, %s, %s)",
            (BATCH, firmware_id, PK, rows, now, now),
        )
        fill_lists(conn, firmware_id, lists, now)
        _copy(
            conn,
            "tasks",
            list(TASK_COLUMNS),
            (
                (
                    BATCH,
                    d,
                    PK,
                    f"dev-{i:06d}",
                    "default",
                    version_of(i),
                    "2.0.0",
                    *task_of(i),
                    1,
                    True,
                    now,
                )  # fmt: skip
                for i, d in enumerate(ids)
            ),
        )
    took["fill_s"] = time.monotonic() - start
    start = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    took["vacuum_analyze_s"] = time.monotonic() - start
    return took


@contextmanager
def database() -> Iterator[str]:
    name = f"ota_pages_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def api_process(url: str) -> Iterator[str]:
    """`ota api` on the database, as an operator runs it."""
    home = Path(tempfile.mkdtemp(prefix="ota-pages-"))
    port = free_port()
    env = {
        **os.environ,
        "OTA_HOME": str(home),
        "OTA_DATABASE_URL": url,
        "OTA_HTTP_PORT": str(port),
        "OTA_API_TOKEN": TOKEN,
        "OTA_BROKER_AUTH": "none",
    }
    log = (home / "api.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "starter", "api"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not answers("127.0.0.1", port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((home / "api.log").read_text()[-3000:])
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


# --- the pages ----------------------------------------------------------------------------------


def api_pages(
    rows: int, task_base: int, lists: int = LISTS, firmware_id: int = 1
) -> dict[str, tuple[str, dict[str, Any]]]:
    deep = int(rows * 0.9)
    old = f"bl{int(lists * 0.1):06d}"  # a batch near the end of the newest-first list
    devices = f"/api/v1/products/{PK}/devices"
    tasks = f"/api/v1/batches/{BATCH}/tasks"
    return {
        "devices: first page": (devices, {}),
        "devices: deep page (after 90%)": (devices, {"after_id": deep}),
        "devices: previous page (before 90%)": (devices, {"before_id": deep}),
        "devices: 1000 a page": (devices, {"limit": 1000}),
        "devices: version 1.1.0 (half)": (devices, {"version": "1.1.0"}),
        "devices: version 1.1.0, deep": (devices, {"version": "1.1.0", "after_id": deep}),
        "devices: version 0.9.0 (1%)": (devices, {"version": "0.9.0"}),
        "devices: online (30%)": (devices, {"online": "true"}),
        "devices: offline, deep": (devices, {"online": "false", "after_id": deep}),
        "product versions": (f"/api/v1/products/{PK}/versions", {}),
        "product modules": (f"/api/v1/products/{PK}/modules", {}),
        "tasks: first page": (tasks, {}),
        "tasks: deep page (after 90%)": (tasks, {"after_id": task_base + deep}),
        "tasks: previous page (before 90%)": (tasks, {"before_id": task_base + deep}),
        "tasks: 1000 a page": (tasks, {"limit": 1000}),
        "tasks: state updated": (tasks, {"state": "updated"}),
        "tasks: state failed (5%), deep": (
            tasks,
            {"state": "failed", "after_id": task_base + deep},
        ),
        "tasks: reason offline (3%)": (tasks, {"reason": "offline"}),
        "tasks: reason timeout, deep": (tasks, {"reason": "timeout", "after_id": task_base + deep}),
        "tasks: to_be_pushed + offline": (tasks, {"state": "to_be_pushed", "reason": "offline"}),
        "batch (counts by state)": (f"/api/v1/batches/{BATCH}", {}),
        "batches: first page (the big batch counted)": ("/api/v1/batches", {}),
        "batches: deep page": ("/api/v1/batches", {"after_id": old}),
        "batches: previous page": ("/api/v1/batches", {"before_id": old}),
        "batches: 1000 a page": ("/api/v1/batches", {"limit": 1000}),
        "batches: in progress (10%)": ("/api/v1/batches", {"state": "in_progress"}),
        "batches: a firmware's (20%)": (f"/api/v1/firmware/{firmware_id}/batches", {}),
        "firmware: first page": ("/api/v1/firmware", {}),
        "firmware: deep page": ("/api/v1/firmware", {"after_id": firmware_id + int(lists * 0.9)}),
        "firmware: 1000 a page": ("/api/v1/firmware", {"limit": 1000}),
        "firmware: a product's": ("/api/v1/firmware", {"product_key": PK}),
    }


def console_pages(
    rows: int, task_base: int, lists: int = LISTS, firmware_id: int = 1
) -> dict[str, str]:
    deep = int(rows * 0.9)
    old = f"bl{int(lists * 0.1):06d}"
    devices = f"/products/{PK}/devices"
    batch = f"/batches/{BATCH}"
    return {
        "products (device counts)": "/products",
        "devices: first page": devices,
        "devices: deep page": f"{devices}?after_id={deep}",
        "devices: previous page": f"{devices}?before_id={deep}",
        "devices: version 1.1.0": f"{devices}?version=1.1.0",
        "devices: version 0.9.0": f"{devices}?version=0.9.0",
        "devices: online": f"{devices}?status=online",
        "batch: first page": batch,
        "batch: deep page": f"{batch}?after_id={task_base + deep}",
        "batch: state failed": f"{batch}?state=failed",
        "batch: reason offline": f"{batch}?reason=offline",
        "batch: live part (polled)": f"{batch}/live?state=&reason=&after_id=0",
        "firmware list": "/firmware",
        "firmware list: deep page": f"/firmware?after_id={firmware_id + int(lists * 0.9)}",
        "firmware page (its batches, counted)": f"/firmware/{firmware_id}",
        "firmware page: deep page of batches": f"/firmware/{firmware_id}?after_id={old}",
    }


def timed(fetch: Callable[[], None], repeat: int) -> dict[str, float]:
    for _ in range(2):
        fetch()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fetch()
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}


def measure_api(
    base: str, pages: dict[str, tuple[str, dict[str, Any]]], repeat: int
) -> dict[str, dict]:
    results: dict[str, dict] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        for name, (path, params) in pages.items():

            def fetch(path: str = path, params: dict[str, Any] = params) -> None:
                r = client.get(path, params=params)
                r.raise_for_status()

            body = client.get(path, params=params).json()
            shown = len(body["items"]) if isinstance(body, dict) and "items" in body else None
            results[name] = {**timed(fetch, repeat), "rows": shown}
            _say("api", name, results[name])
    return results


def measure_console(base: str, pages: dict[str, str], repeat: int) -> dict[str, dict]:
    """Time to the page's load event in Chromium: the request, the render, the scripts."""
    from playwright.sync_api import sync_playwright

    results: dict[str, dict] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(base_url=base)
        page.goto("/login")
        page.fill("#token", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url("**/firmware")
        for name, path in pages.items():

            def fetch(path: str = path) -> None:
                answer = page.goto(path, wait_until="load")
                assert answer is not None and answer.ok, (path, answer and answer.status)

            results[name] = {**timed(fetch, repeat), "table_rows": page.locator("tbody tr").count()}
            _say("console", name, results[name])
        browser.close()
    return results


def _say(where: str, name: str, result: dict[str, Any]) -> None:
    mark = "" if result["max_ms"] < TARGET_MS else "  OVER"
    print(
        f"{where:8} {name:40} p50 {result['p50_ms']:7.1f} ms  max {result['max_ms']:7.1f} ms{mark}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pages", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="devices, and tasks in the batch")
    parser.add_argument("--repeat", type=int, default=20, help="timed fetches of each page")
    parser.add_argument("--lists", type=int, default=LISTS, help="firmware, and older batches")
    parser.add_argument("--no-console", action="store_true", help="the API only")
    parser.add_argument("--out", type=Path, help="the JSON (default: docs/bench/DATE-pages-N.json)")
    args = parser.parse_args()
    with database() as url:
        print(f"filling {args.rows} devices and tasks ...", flush=True)
        report: dict[str, Any] = {
            "rows": args.rows,
            "lists": args.lists,
            "repeat": args.repeat,
            "target_ms": TARGET_MS,
            # The machine is shared: its load says how far the figures are this code's alone.
            "load_average_at_start": os.getloadavg(),
        }
        report["fill"] = fill(url, args.rows, args.lists)
        print(json.dumps(report["fill"]), flush=True)
        with psycopg.connect(url) as conn:
            task_base = conn.execute("SELECT min(id) - 1 FROM tasks").fetchone()[0]  # type: ignore[index]
            fw = conn.execute("SELECT id FROM firmware WHERE name = 'fw_pages'").fetchone()[0]  # type: ignore[index]
        with api_process(url) as base:
            where = (args.rows, task_base, args.lists, fw)
            report["api"] = measure_api(base, api_pages(*where), args.repeat)
            if not args.no_console:
                report["console"] = measure_console(base, console_pages(*where), args.repeat)
    report["load_average_at_end"] = os.getloadavg()
    pages = {
        f"{where} {name}": result
        for where in ("api", "console")
        for name, result in report.get(where, {}).items()
    }
    report["all_under_target"] = all(p["max_ms"] < TARGET_MS for p in pages.values())
    report["worst_p50_ms"] = max(p["p50_ms"] for p in pages.values())
    report["slowest_p50"] = max(pages, key=lambda name: pages[name]["p50_ms"])
    report["slowest_max"] = max(pages, key=lambda name: pages[name]["max_ms"])
    out = args.out or OUT / f"{datetime.now(UTC):%Y-%m-%d}-pages-{args.rows}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"worst p50 {report['worst_p50_ms']} ms ({report['slowest_p50']}); every max under "
          f"{TARGET_MS} ms: {report['all_under_target']}; {out}")  # fmt: skip


if __name__ == "__main__":
    main()
