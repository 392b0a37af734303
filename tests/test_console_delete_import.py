"""Firmware delete and device import in the real browser, against the real `ota api`: the CLI's
`ota firmware delete` and `ota device import`, on the API routes the CLI's services back.

Only the API runs (as in tests/test_console_devices.py). Screenshots go to
test-output/console-delete-import/.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from ota.db.engine import session_scope
from ota.db.models import Batch
from tests.fixtures.stack import OtaProcesses
from tests.test_api_support import assert_problem
from tests.test_console import CHROMIUM, browser  # noqa: F401 (fixture)
from tests.test_console_devices import NAMES, PK, api, credentials, login, stack  # noqa: F401
from tests.test_workflow_support import make_firmware

SHOTS = Path(__file__).resolve().parent.parent / "test-output" / "console-delete-import"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"),
]


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module", autouse=True)
def fresh_shots() -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)


@pytest.fixture
def page(browser, api: httpx.Client) -> Page:  # noqa: F811
    page = browser.new_page(viewport={"width": 1360, "height": 900}, base_url=str(api.base_url))
    page.set_default_timeout(20_000)
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: page.errors.append(str(e)))  # type: ignore[attr-defined]
    return page


def add_firmware(client: httpx.Client, name: str, version: str) -> int:
    r = client.post(
        "/api/v1/firmware",
        data={"product_key": PK, "name": name, "version": version, "need_verify": "false"},
        files={"file": (f"{name}.bin", b"\x7fELF " + name.encode())},
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]  # type: ignore[no-any-return]


def set_batch(processes: OtaProcesses, firmware_id: int, state: str) -> None:
    """A batch of the firmware in `state`, as the batch workflow would record it."""
    engine = processes.context().engine
    with session_scope(engine) as s:
        batch = s.get(Batch, "b-busy")
        if batch is None:
            s.add(Batch(id="b-busy", firmware_id=firmware_id, product_key=PK, module="default",
                        target_version="2.0.0", state=state))  # fmt: skip
        else:
            batch.state = state
    engine.dispose()


def test_firmware_is_deleted_from_the_list_and_its_page_refused_while_a_batch_runs(
    stack: OtaProcesses,  # noqa: F811
    api: httpx.Client,  # noqa: F811
    page: Page,
):
    busy = add_firmware(api, "thermo_busy", "2.0.0")
    other = add_firmware(api, "thermo_other", "3.0.0")
    set_batch(stack, busy, "in_progress")
    login(page, "/firmware")
    rows = page.locator("#firmware-table tbody tr")
    expect(rows).to_have_count(2)

    # Refused while its batch runs: the API's words in the dialog, nothing deleted.
    row = page.locator(f'#firmware-table tr[data-firmware-id="{busy}"]')
    row.locator(".js-delete-firmware").click()
    dialog = page.locator("#delete-firmware-dialog")
    expect(dialog.locator(".js-fw-title")).to_have_text(f"thermo_busy (ID {busy})")
    dialog.locator("button[type=submit]").click()
    expect(dialog.locator('[data-error-for="firmware_id"]')).to_have_text(
        f"firmware {busy} has active batches (b-busy); cancel them first"
    )
    expect(dialog).to_be_visible()
    expect(rows).to_have_count(2)
    assert api.get(f"/api/v1/firmware/{busy}").status_code == 200
    shot(page, "01-delete-refused")
    dialog.locator("[data-close]").click()
    expect(dialog).to_be_hidden()

    # Once the batch has finished: Back changes nothing, Delete removes row, record and batch.
    set_batch(stack, busy, "completed")
    row.locator(".js-delete-firmware").click()
    expect(dialog.locator('[data-error-for="firmware_id"]')).to_have_text("")  # not the old one
    dialog.locator("[data-close]").click()
    assert api.get(f"/api/v1/firmware/{busy}").status_code == 200
    row.locator(".js-delete-firmware").click()
    dialog.locator("button[type=submit]").click()
    expect(dialog).to_be_hidden()
    expect(rows).to_have_count(1)
    expect(page.locator("#toast")).to_have_text(f"Firmware {busy} deleted")
    assert_problem(api.get(f"/api/v1/firmware/{busy}"), 404)
    assert_problem(api.get("/api/v1/batches/b-busy"), 404)
    shot(page, "02-deleted-from-list")

    # From the firmware's own page: back to the list, which is empty now.
    page.goto(f"/firmware/{other}")
    page.locator(".page-head .js-delete-firmware").click()
    expect(dialog.locator(".js-fw-title")).to_have_text(f"thermo_other (ID {other})")
    shot(page, "03-delete-confirm")
    dialog.locator("button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"/firmware$"))
    expect(page.locator(".empty")).to_contain_text("No firmware yet")
    assert_problem(api.get(f"/api/v1/firmware/{other}"), 404)
    assert page.errors == [], page.errors  # type: ignore[attr-defined]


def test_devices_are_imported_from_a_csv_all_or_none(
    api: httpx.Client,  # noqa: F811
    page: Page,
    tmp_path: Path,
):
    def registered() -> list[str]:
        listed = api.get(f"/api/v1/products/{PK}/devices").json()["items"]
        return sorted(d["name"] for d in listed)

    def csv(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    login(page, f"/products/{PK}/devices")
    rows = page.locator("#device-table tbody tr")
    expect(rows).to_have_count(len(NAMES))
    page.click("#import-devices")
    form = page.locator("#import-form")
    error = form.locator('[data-error-for="file"]')

    form.locator("button[type=submit]").click()
    expect(error).to_have_text("choose a CSV file")

    # A bad line anywhere: nothing is registered, the line is named under the file.
    bad = "name,version\nsensor-01,1.0.0\nsensor-02,V2\n"
    form.locator("[name=file]").set_input_files(csv("bad.csv", bad))
    form.locator("button[type=submit]").click()
    expect(error).to_contain_text("line 3: version ")
    shot(page, "04-import-refused")
    form.locator("[name=file]").set_input_files(csv("taken.csv", "sensor-01\nthermo-01,1.0.0\n"))
    form.locator("button[type=submit]").click()
    expect(error).to_have_text("line 2: device thermo-01 already exists")
    assert registered() == sorted(NAMES)

    # A good file: the count, and the secrets as a file to keep.
    good = "# spare units\nname,version,module\nsensor-01,1.0.0\nsensor-02,1.1.0,wifi\n"
    form.locator("[name=file]").set_input_files(csv("good.csv", good))
    form.locator("button[type=submit]").click()
    expect(form.locator(".js-imported-text")).to_have_text("Imported 2 devices.")
    expect(error).to_have_text("")
    shot(page, "05-imported")
    assert registered() == sorted([*NAMES, "sensor-01", "sensor-02"])
    with page.expect_download() as download:
        form.locator(".js-secrets").click()
    assert download.value.suggested_filename == f"{PK}-devices.csv"
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines == [
        "name,secret",
        *(f"{n},{credentials(api, n)['device_secret']}" for n in ("sensor-01", "sensor-02")),
    ]

    # Closed: the list shows them, their versions in their modules' columns.
    form.locator("[data-close]").click()
    expect(rows).to_have_count(len(NAMES) + 2)
    sensor = page.locator('#device-table tr[data-device="sensor-02"]')
    expect(sensor).to_contain_text("1.1.0")
    expect(page.locator("#device-table thead")).to_contain_text("wifi")
    shot(page, "06-imported-list")

    # Opened again, the dialog starts afresh.
    page.click("#import-devices")
    expect(form.locator(".js-choose")).to_be_visible()
    expect(form.locator(".js-imported")).to_be_hidden()
    expect(form.locator("[name=file]")).to_have_value("")
    assert page.errors == [], page.errors  # type: ignore[attr-defined]


def test_the_firmware_list_and_a_firmware_s_batches_are_read_a_page_at_a_time(
    stack: OtaProcesses,  # noqa: F811
    api: httpx.Client,  # noqa: F811
    page: Page,
):
    """55 firmware and 55 batches of one of them: 50 rows a page (ota/api/console.py), Next,
    Previous and First following the rows shown, the two pages disjoint and together whole."""
    engine = stack.context().engine
    firmware_ids = [make_firmware(engine, PK, f"2.0.{i}") for i in range(55)]
    first = firmware_ids[0]
    start = datetime(2026, 12, 1, tzinfo=UTC)
    with session_scope(engine) as s:
        for i in range(55):
            s.add(Batch(id=f"b-page-{i:02d}", firmware_id=first, product_key=PK, module="default",
                        target_version="2.0.0", state="completed",
                        created_at=start + timedelta(minutes=i)))  # fmt: skip
    engine.dispose()
    newest = [f"b-page-{i:02d}" for i in reversed(range(55))]

    def shown(table: str, attribute: str) -> list[str]:
        rows = page.locator(f"#{table} tbody tr")
        return [rows.nth(i).get_attribute(attribute) or "" for i in range(rows.count())]

    for path, table, attribute, expected in (
        ("/firmware", "firmware-table", "data-firmware-id", [str(i) for i in firmware_ids]),
        (f"/firmware/{first}", "batch-table", "data-batch-id", newest),
    ):
        if path == "/firmware":
            login(page, path)
        else:
            page.goto(path)
        expect(page.locator(f"#{table} tbody tr")).to_have_count(50)
        one = shown(table, attribute)
        expect(page.locator("#prev-page")).to_have_count(0)
        page.locator("#next-page").click()
        expect(page.locator(f"#{table} tbody tr")).to_have_count(5)
        two = shown(table, attribute)
        assert one + two == expected, path  # disjoint, whole, in the list's order
        expect(page.locator("#next-page")).to_have_count(0)
        shot(page, f"page-2-{table}")
        page.locator("#prev-page").click()
        expect(page.locator(f"#{table} tbody tr")).to_have_count(50)
        assert shown(table, attribute) == one, path
        page.locator("#next-page").click()
        page.locator("#first-page").click()
        expect(page.locator(f"#{table} tbody tr")).to_have_count(50)
        assert shown(table, attribute) == one, path
    assert page.errors == [], page.errors  # type: ignore[attr-defined]
