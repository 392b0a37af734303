"""The console end to end: a browser drives the real stack and simulated devices update.

Chromium is Debian's (/usr/bin/chromium, scripts/test installs it); screenshots of every page go
to test-output/console/ for a person to look at.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from ota.services.devices import list_devices
from tests.fixtures.stack import OtaProcesses, ota_processes, wait_until  # noqa: F401 (fixture)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parent.parent / "test-output" / "console"
PK, DEVICES = "pk_console", 5
# Long enough to wrap in the firmware page's facts column: it must wrap between words.
DESCRIPTION = "Heating curve fix: steadier temperatures overnight, quieter relay, faster recovery"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"),
]


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def stack(ota_processes: OtaProcesses) -> OtaProcesses:  # noqa: F811
    # Migrate once before the processes start: each migrates on start, and on a fresh SQLite
    # file two of them at once can both create the tables and one crashes (reported).
    engine = ota_processes.context().engine
    for name in ("worker", "bridge", "api"):
        ota_processes.start(name)
    ota_processes.start(
        "sim", "simulate", "--register", "--product", PK, "--devices", str(DEVICES),
        "--version", "1.0.0", "--install-seconds", "0.3", "--prefix", "sim-",
    )  # fmt: skip

    def all_online() -> bool:
        try:
            return sum(d.online for d in list_devices(engine, PK)) == DEVICES
        except Exception:  # the product is not registered yet
            return False

    wait_until(all_online, 60, what="simulated devices online")
    engine.dispose()
    return ota_processes


def _uplink(bytes_per_second: int) -> dict[str, object]:
    return {
        "offline": False,
        "latency": 0,
        "downloadThroughput": -1,
        "uploadThroughput": bytes_per_second,
    }


# In the page: how many lines an element's text takes, and the words split across two lines.
LINES_OF = """el => {
    const range = document.createRange();
    range.selectNodeContents(el);
    return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
}"""
BROKEN_WORDS = """el => {
    const text = el.firstChild, broken = [], word = /\\S+/g;
    for (let m; (m = word.exec(text.data)); ) {
        const range = document.createRange();
        range.setStart(text, m.index);
        range.setEnd(text, m.index + m[0].length);
        const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
        if (tops.size > 1) broken.push(m[0]);
    }
    return broken;
}"""


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_upload_validate_phased_batch_and_cancel_a_scheduled_one(
    stack: OtaProcesses, browser, tmp_path
):
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    base = f"http://127.0.0.1:{stack.env['OTA_HTTP_PORT']}"
    page = browser.new_page(viewport={"width": 1360, "height": 860}, base_url=base)
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # Log in: the console redirects there first.
    page.goto("/firmware")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    expect(page.locator(".login p.muted")).to_contain_text(
        "ota dev prints it when it starts, and keeps it in the file api-token under OTA_HOME"
    )
    page.fill("#token", "wrong")
    page.click("button[type=submit]")
    expect(page.locator(".field-error")).to_contain_text("not the API token")
    page.fill("#token", stack.env["OTA_API_TOKEN"])
    shot(page, "01-login")
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/firmware$"))

    # Add Firmware: a mistake first, shown under its field; then the real upload.
    image = tmp_path / "thermo-2.0.0.bin"
    image.write_bytes(os.urandom(3 * 1024 * 1024))
    page.click("#add-firmware")
    form = page.locator("#add-form")
    form.locator("[name=name]").fill("_thermo")
    form.locator("[name=product_key]").select_option(PK)
    form.locator("[name=version]").fill("2.0.0")
    form.locator("[name=file]").set_input_files(image)
    form.locator("[name=description]").fill(DESCRIPTION)
    form.locator("button[type=submit]").click()
    expect(form.locator('[data-error-for="name"]')).to_contain_text(
        "must not start with an underscore"
    )
    shot(page, "02-add-firmware-error")
    form.locator("[name=name]").fill("thermo_fw")
    form.locator("[name=ext_data]").fill("notes: spring")
    form.locator("button[type=submit]").click()
    expect(form.locator('[data-error-for="ext_data"]')).to_contain_text("must be a JSON object")
    form.locator("[name=ext_data]").fill('{"notes": "spring"}')
    form.locator("[name=sign_method]").select_option("SHA256")
    # A slow uplink (1 MB/s) for a moment, so the progress bar can be seen moving.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", _uplink(1024 * 1024))
    form.locator("button[type=submit]").click()
    expect(form.locator("#upload-percent")).to_have_text(re.compile(r"^[1-9]\d?%$"))
    shot(page, "03-upload-progress")
    cdp.send("Network.emulateNetworkConditions", _uplink(-1))
    row = page.locator("#firmware-table tbody tr").first
    expect(row).to_contain_text("thermo_fw")
    expect(row).to_contain_text("Unverified")
    expect(row).to_contain_text("3 MB")
    shot(page, "04-firmware-list")
    token = {"Authorization": f"Bearer {stack.env['OTA_API_TOKEN']}"}
    added = page.request.get("/api/v1/firmware", headers=token).json()["items"]
    assert [fw.get("ext_data") for fw in added] == [{"notes": "spring"}]  # no _sign_with: current

    # Validate Firmware on one simulated device.
    row.locator(".js-validate").click()
    dialog = page.locator("#validate-form")
    dialog.locator('input[name="versions"][value="1.0.0"]').check()
    dialog.locator('input[name="device_names"][value="sim-00000"]').check()
    dialog.locator("[name=timeout_minutes]").fill("1441")
    dialog.locator("button[type=submit]").click()
    expect(dialog.locator('[data-error-for="timeout_minutes"]')).to_contain_text(
        "between 1 and 1440"
    )
    dialog.locator("[name=timeout_minutes]").fill("10")
    shot(page, "05-validate-firmware")
    dialog.locator("button[type=submit]").click()
    expect(page.locator("#firmware-table tbody tr").first).to_contain_text(
        "Verified", timeout=60_000
    )

    # Batch Update: phased, half of the devices still on 1.0.0 (4 of them: 2 devices).
    page.locator("#firmware-table .js-batch").first.click()
    batch = page.locator("#batch-form")
    batch.locator('input[name="src_versions"][value="1.0.0"]').check()
    batch.locator('input[name="target"][value="phased"]').check()
    batch.locator("[name=percent]").fill("101")
    batch.locator("[name=rate_per_minute]").fill("5")
    batch.locator("button[type=submit]").click()
    # The options are checked in the form's order (ota.batch_options): targeting first.
    expect(batch.locator('[data-error-for="percent"]')).to_contain_text("between 1 and 100")
    batch.locator("[name=percent]").fill("50")
    batch.locator("button[type=submit]").click()
    expect(batch.locator('[data-error-for="rate_per_minute"]')).to_contain_text(
        "between 10 and 1000"
    )
    batch.locator("[name=rate_per_minute]").fill("100")
    batch.locator("[name=retry_interval]").select_option("10")
    batch.locator("[name=max_retries]").select_option("2")
    batch.locator("[name=timeout_minutes]").fill("30")
    # Preview: the API's dry run, nothing created; the numbers go when the form changes.
    batch.locator(".js-preview-batch").click()
    preview = batch.locator(".js-preview")
    expect(preview).to_contain_text("Would update 2 devices (50% of 4 matching); from 1.0.0: 2")
    expect(preview).to_contain_text("In another batch (would fail busy): 0")
    expect(preview).to_contain_text("at 100 devices per minute: last push ~")
    shot(page, "06-batch-update-phased")
    batch.locator("button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"/batches/\w+$"))
    shot(page, "07-batch-details-just-started")
    expect(page.locator("#workflow-link")).to_have_attribute(
        "href", re.compile(r"http://127\.0\.0\.1:8233/namespaces/default/workflows/batch-\w+$")
    )
    expect(page.locator(".count.state-updated .n")).to_have_text("2", timeout=60_000)
    expect(page.locator("#batch-state")).to_have_text("Completed", timeout=30_000)
    expect(page.locator("#batch-retry")).to_have_text("Retry in 10 minutes, at most 2 times")
    expect(page.locator("#task-table tbody tr")).to_have_count(2)
    expect(page.locator("#task-table tbody")).to_contain_text("Updated")
    shot(page, "08-batch-details-updated")
    page.select_option("#task-filters [name=state]", "failed")
    expect(page.locator("#task-table tbody")).to_contain_text("No devices match this filter")
    page.select_option("#task-filters [name=state]", "")

    # A second batch, scheduled an hour ahead, canceled (scheduled tasks only).
    page.locator(".crumbs a").nth(1).click()
    page.locator(".page-head .js-batch").click()
    batch.locator('input[name="src_versions"][value="1.0.0"]').check()
    batch.locator('input[name="when"][value="scheduled"]').check()
    expect(batch.locator("[name=scheduled_at]")).not_to_have_value("")
    shot(page, "09-batch-update-scheduled")
    batch.locator("button[type=submit]").click()
    expect(page.locator("#batch-state")).to_have_text("Scheduled")
    expect(page.locator("#batch-retry")).to_have_text("Do not retry")
    expect(page.locator("#task-table tbody")).to_contain_text("To Be Pushed (Timing: ")
    shot(page, "10-batch-scheduled")
    page.locator(".page-head .js-cancel").click()
    cancel = page.locator("#cancel-form")
    expect(cancel.locator('input[value="scheduled"]')).to_be_checked()
    shot(page, "11-cancel-dialog")
    cancel.locator("button[type=submit]").click()
    expect(page.locator("#batch-state")).to_have_text("Canceled", timeout=30_000)
    shot(page, "12-batch-canceled")

    # Batch Management lists all three, each linked to its workflow.
    page.locator(".crumbs a").nth(1).click()
    rows = page.locator("#batch-table tbody tr")
    expect(rows).to_have_count(3)
    expect(page.locator("#batch-table")).to_contain_text("Canceled")
    expect(page.locator("#batch-table")).to_contain_text("Completed")
    # The description wraps between words; the checksum, one long token, is broken to fit.
    facts = page.locator(".facts dd")
    description = facts.filter(has_text="Heating curve fix")
    assert description.evaluate(LINES_OF) > 1
    assert description.evaluate(BROKEN_WORDS) == []
    checksum = facts.filter(has=page.locator("code"))
    assert checksum.evaluate("dd => dd.scrollWidth <= dd.clientWidth")
    expect(rows.first.locator("a", has_text="Workflow")).to_have_attribute(
        "href", re.compile(r"/namespaces/default/workflows/batch-")
    )
    shot(page, "13-batch-management")

    # Products and devices.
    page.click("text=Products & Devices")
    expect(page.locator("#product-table")).to_contain_text(PK)
    shot(page, "14-products")
    page.locator("#product-table a", has_text="Devices").click()
    expect(page.locator("#device-table tbody tr")).to_have_count(DEVICES)
    expect(page.locator("#device-table")).to_contain_text("2.0.0")
    expect(page.locator("#device-table")).to_contain_text("Online")
    shot(page, "15-devices")
    page.goto("/firmware")
    page.click("text=Secure Update")
    with page.expect_navigation():  # switching reloads the page with the new key
        page.locator("#secure-dialog .switch").first.click()
    page.click("text=Secure Update")
    expect(page.locator("#secure-dialog .switch-label").first).to_have_text("Activated")
    expect(page.locator("#secure-dialog .js-copy").first).to_be_visible()
    shot(page, "16-secure-update")

    page.locator("#secure-dialog [data-close]").click()

    # A differential package: its source versions come from what the devices report.
    page.click("#add-firmware")
    form.locator('input[name="type"][value="diff"]').check()
    expect(form.locator("[name=version]")).to_be_hidden()
    form.locator("[name=name]").fill("thermo_diff")
    form.locator("[name=product_key]").select_option(PK)
    form.locator('input[name="src_versions"][value="2.0.0"]').check()
    form.locator("[name=dest_version]").fill("2.0.1")
    form.locator("[name=file]").set_input_files(image)
    shot(page, "17-add-differential")
    form.locator("button[type=submit]").click()
    row = page.locator("#firmware-table tbody tr", has_text="thermo_diff")
    expect(row).to_contain_text("2.0.0 → 2.0.1")
    expect(row).to_contain_text("Differential")
    shot(page, "18-firmware-list")
    assert errors == [], errors
