"""The device panel in the real browser: its MQTT parameters as the API gives them, Disable,
Enable, Rotate secret and Delete, against the real `ota api` process.

Only the API runs: these operations need neither Temporal nor a broker that enforces identity
(broker_auth="none" leaves the broker alone). Screenshots go to test-output/console-devices/.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.fixtures.net import free_port
from tests.fixtures.stack import OtaProcesses
from tests.test_api_support import assert_problem
from tests.test_console import CHROMIUM, browser  # noqa: F401 (fixture)
from tests.test_workflow_support import make_task

SHOTS = Path(__file__).resolve().parent.parent / "test-output" / "console-devices"
PK, TOKEN = "pk_devices", "test-token"
NAMES = ["thermo-01", "thermo-02", "thermo@lab:3"]  # '@' and ':' must survive the URLs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"),
]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[OtaProcesses]:
    """`ota api` alone, on a fresh installation."""
    home = tmp_path / "ota-home"
    home.mkdir()
    env = {
        "OTA_HOME": str(home),
        "OTA_BROKER_AUTH": "none",
        "OTA_HTTP_PORT": str(free_port()),
        "OTA_API_TOKEN": TOKEN,
    }
    procs = OtaProcesses(home, env)
    procs.start("api")
    yield procs
    procs.stop_all()
    print(procs.log("api")[-3000:])  # pytest shows it only when the test fails


@pytest.fixture
def api(stack: OtaProcesses) -> Iterator[httpx.Client]:
    """The token's client, with three registered devices: what the console is checked against."""
    base = f"http://127.0.0.1:{stack.env['OTA_HTTP_PORT']}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        r = client.post("/api/v1/products", json={"product_key": PK, "name": "Thermostat"})
        assert r.status_code == 201, r.text
        for name in NAMES:
            r = client.post(f"/api/v1/products/{PK}/devices", json={"name": name})
            assert r.status_code == 201, r.text
        yield client


def add_active_task(stack: OtaProcesses, name: str) -> str:
    """A batch with one task of the device, mid-update, as the batch workflow would write it."""
    engine = stack.context().engine
    batch_id = make_task(engine, PK, name, "in_upgrade", batch_id="b-console")
    engine.dispose()
    return batch_id


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def credentials(api: httpx.Client, name: str) -> dict[str, object]:
    r = api.get(f"/api/v1/products/{PK}/devices/{name}/credentials")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def login(page: Page, path: str) -> None:
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(re.escape(path) + "$"))


def test_the_device_panel_shows_parameters_and_disables_enables_rotates_deletes(
    stack: OtaProcesses,
    api: httpx.Client,
    browser,  # noqa: F811 (the fixture imported above)
):
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    page = browser.new_page(viewport={"width": 1360, "height": 900}, base_url=str(api.base_url))
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, f"/products/{PK}/devices")

    rows = page.locator("#device-table tbody tr")
    expect(rows).to_have_count(len(NAMES))
    expect(page.locator("#device-table .js-disabled:visible")).to_have_count(0)
    for name in NAMES:  # the list page itself holds no secret
        assert str(credentials(api, name)["device_secret"]) not in page.content()

    # The panel: the parameters the API gives, the secret only on Show.
    name = "thermo@lab:3"
    expected = credentials(api, name)
    row = page.locator(f'#device-table tr[data-device="{name}"]')
    row.locator("a", has_text=name).click()
    panel = page.locator("#device-dialog")
    expect(panel).to_be_visible()
    expect(page).to_have_url(re.compile(r"#device=thermo%40lab%3A3$"))
    params = panel.locator("#mqtt-params")
    expect(params.locator('code[data-cred="client_id"]')).to_have_text(str(expected["client_id"]))
    expect(params.locator('code[data-cred="username"]')).to_have_text(str(expected["username"]))
    expect(params.locator('code[data-cred="password"]')).to_have_text(str(expected["password"]))
    expect(params.locator('code[data-cred="host"]')).to_have_text(str(expected["host"]))
    expect(params.locator('code[data-cred="port"]')).to_have_text(str(expected["port"]))
    secret = panel.locator(".js-secret")
    expect(secret).not_to_have_text(str(expected["device_secret"]))
    shot(page, "01-device-panel")
    panel.locator(".js-show-secret").click()
    expect(secret).to_have_text(str(expected["device_secret"]))
    panel.locator(".js-show-secret").click()
    expect(secret).not_to_have_text(str(expected["device_secret"]))
    copy = params.locator("tr", has_text="Client ID").locator(".js-copy")
    copy.click()
    expect(copy).to_have_text("Copied")

    # Disable: the badge appears in the panel and on the row; the API agrees.
    panel.locator(".js-toggle-enabled").click()
    expect(panel.locator("h2 .js-disabled")).to_be_visible()
    expect(row.locator(".js-disabled")).to_be_visible()
    expect(panel.locator(".js-toggle-enabled")).to_have_text("Enable")
    assert credentials(api, name)["enabled"] is False
    shot(page, "02-disabled")
    panel.locator("[data-close]").click()
    expect(panel).to_be_hidden()
    expect(page).not_to_have_url(re.compile("#device="))
    page.reload()  # the server-rendered list says the same
    expect(row.locator(".js-disabled")).to_be_visible()
    expect(page.locator("#device-table .js-disabled:visible")).to_have_count(1)
    shot(page, "03-list-disabled")

    # Enable again, from the row's View button.
    row.locator(".js-device", has_text="View").click()
    expect(panel.locator(".js-toggle-enabled")).to_have_text("Enable")
    panel.locator(".js-toggle-enabled").click()
    expect(panel.locator(".js-toggle-enabled")).to_have_text("Disable")
    expect(row.locator(".js-disabled")).to_be_hidden()
    expect(panel.locator("h2 .js-disabled")).to_be_hidden()
    assert credentials(api, name)["enabled"] is True

    # Rotate: confirmed first; Back changes nothing; then the new parameters are shown.
    password = params.locator('code[data-cred="password"]')
    panel.locator(".js-rotate").click()
    expect(panel.locator(".js-confirm")).to_contain_text("stop working at once")
    shot(page, "04-rotate-confirm")
    panel.locator(".js-confirm-back").click()
    expect(panel.locator(".js-confirm")).to_be_hidden()
    assert credentials(api, name)["password"] == expected["password"]
    panel.locator(".js-rotate").click()
    panel.locator(".js-confirm-ok").click()
    expect(panel.locator(".js-confirm")).to_be_hidden()
    expect(password).not_to_have_text(str(expected["password"]))
    rotated = credentials(api, name)
    assert rotated["device_secret"] != expected["device_secret"]
    expect(password).to_have_text(str(rotated["password"]))
    panel.locator(".js-show-secret").click()
    expect(secret).to_have_text(str(rotated["device_secret"]))
    shot(page, "05-rotated")
    panel.locator("[data-close]").click()
    expect(panel).to_be_hidden()
    expect(page).not_to_have_url(re.compile("#device="))  # the close event has run

    # Closed and sent to another panel in one go: the close event runs between the two and
    # clears the address, and the panel still opens where the link went.
    row.locator("a", has_text=name).click()
    expect(params.locator('code[data-cred="client_id"]')).to_have_text(str(rotated["client_id"]))
    page.evaluate(
        """() => {
        document.querySelector("#device-dialog [data-close]").click();
        location.hash = "#device=thermo-02";
    }"""
    )
    expect(panel).to_be_visible()
    expect(params.locator('code[data-cred="client_id"]')).to_have_text(
        str(credentials(api, "thermo-02")["client_id"])
    )
    expect(page).to_have_url(re.compile(r"#device=thermo-02$"))
    panel.locator("[data-close]").click()
    expect(page).not_to_have_url(re.compile("#device="))

    # A bookmarked panel opens with the page.
    page.goto(f"/products/{PK}/devices#device=thermo-01")
    expect(panel).to_be_visible()
    expect(params.locator('code[data-cred="client_id"]')).to_have_text(
        str(credentials(api, "thermo-01")["client_id"])
    )

    # Delete is refused while the device has an active task: the API's own words are shown.
    batch_id = add_active_task(stack, "thermo-01")
    panel.locator(".js-delete").click()
    expect(panel.locator(".js-confirm")).to_contain_text("Delete thermo-01?")
    panel.locator(".js-confirm-ok").click()
    refusal = panel.locator('.js-confirm [data-error-for="device_name"]')
    expect(refusal).to_have_text(
        f"device {PK}/thermo-01 has an active task in batch {batch_id}: cancel it first"
    )
    expect(panel).to_be_visible()
    expect(rows).to_have_count(len(NAMES))
    shot(page, "06-delete-refused")
    panel.locator(".js-confirm-back").click()
    panel.locator("[data-close]").click()

    # Delete: confirmed, then the row is gone and the API no longer knows the device.
    page.locator('#device-table tr[data-device="thermo-02"] .js-device', has_text="View").click()
    panel.locator(".js-delete").click()
    expect(panel.locator(".js-confirm")).to_contain_text("Delete thermo-02?")
    panel.locator(".js-confirm-ok").click()
    expect(panel).to_be_hidden()
    expect(rows).to_have_count(len(NAMES) - 1)
    expect(page.locator("#device-counts")).to_have_text(f"{len(NAMES) - 1} devices, 0 online")
    r = api.get(f"/api/v1/products/{PK}/devices/thermo-02/credentials")
    assert_problem(r, 404)
    shot(page, "07-deleted")
    assert errors == [], errors
