"""Issue 17: messages lost or delivered twice around a crash. A push lost with the broker's
sessions is sent again when the device reconnects on its old version; a failure report
redelivered after the next push does not fail the new attempt. Real dev server, worker and
Mosquitto; the bridge's record path (apply_reports) decides what to signal."""

from __future__ import annotations

from collections import Counter

from ota import protocol
from ota.bridge.records import apply_reports
from ota.bridge.signals import Signaller
from ota.contracts import SIGNAL_ONLINE, SIGNAL_REPORT, BatchInput, DeviceReport
from ota.services.batches import create_batch
from tests.test_workflow_support import (
    FakeBridge,
    attempts_of,
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    running_worker,
    states_of,
    upgrade_listener,
)


async def test_a_device_back_on_its_old_version_after_a_lost_push_is_pushed_again(
    temporal_env, mqtt_url, tmp_path
):
    ctx = make_context(tmp_path, mqtt_url, temporal_env.client, batch_poll_seconds=0.5)
    pk, (dn,) = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    bridge = FakeBridge(ctx.engine, client, pk)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(client, ctx):
        b = await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"], timeout_minutes=30))
        await eventually(lambda: len(pushes) == 1)
        assert states_of(ctx.engine, b["id"])[dn] == "pushed"

        # The device never got it: it reconnects and, as on every connect, says 1.0.0.
        flush = apply_reports(ctx.engine, [protocol.Inform(pk, dn, "1", "1.0.0")])
        assert [s.name for s in flush.signals] == [SIGNAL_ONLINE]
        await Signaller(client, Counter()).send(flush.signals)
        await eventually(lambda: len(pushes) == 2)
        first, again = (p["data"] for _, p in pushes)
        assert (again["version"], again["md5"]) == (first["version"], first["md5"])
        assert attempts_of(ctx.engine, b["id"], dn) == 1
        assert states_of(ctx.engine, b["id"])[dn] == "pushed"

        # Once the device has begun, its old version is the seed's failure, not a lost push.
        bridge.progress(dn)
        assert (
            apply_reports(ctx.engine, [protocol.Inform(pk, dn, "2", "1.0.0")])
            .signals[0]
            .arg.outcome
            == "failed"
        )  # type: ignore[union-attr]
        await bridge.updated(dn)
        assert (await bridge.handle(dn).result())["state"] == "updated"


async def test_a_failure_redelivered_after_the_retry_push_does_not_fail_the_new_attempt(
    temporal_env, mqtt_url, tmp_path
):
    ctx = make_context(tmp_path, mqtt_url, temporal_env.client, batch_poll_seconds=0.5)
    pk, (dn,) = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    bridge = FakeBridge(ctx.engine, client, pk)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(client, ctx):
        b = await create_batch(
            ctx,
            BatchInput("", fw, src_versions=["1.0.0"], retry_interval_minutes=0, max_retries=1),
        )
        await eventually(lambda: len(pushes) == 1)
        flush = apply_reports(ctx.engine, [protocol.Progress(pk, dn, "1", -2, "no route")])
        (failure,) = flush.signals
        assert failure.arg is not None and failure.arg.attempt == 1
        await Signaller(client, Counter()).send(flush.signals)
        await eventually(lambda: attempts_of(ctx.engine, b["id"], dn) == 2 and len(pushes) == 2)
        # The same failure again (the bridge lost its connection before acking it).
        await Signaller(client, Counter()).send(flush.signals)
        stale = DeviceReport("failed", reason="download_failed", attempt=1)
        await bridge.handle(dn).signal(SIGNAL_REPORT, stale)
        await bridge.updated(dn)
        result = await bridge.handle(dn).result()
    assert (result["state"], result["attempts"]) == ("updated", 2)
