"""A static batch end to end, with the bridge played by the test: the happy path."""

from __future__ import annotations

from ota.contracts import BatchInput, batch_workflow_id
from ota.services.batches import create_batch
from tests.test_workflow_support import (
    FakeBridge,
    eventually,
    history_counts,
    make_context,
    make_firmware,
    make_fleet,
    running_worker,
    states_of,
    tasks_of,
    upgrade_listener,
)


async def test_happy_path(temporal_env, mqtt_url, tmp_path):
    client = temporal_env.client
    ctx = make_context(tmp_path, mqtt_url, client, batch_poll_seconds=0.5)
    pk, names = make_fleet(ctx.engine, 3)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, client, pk)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(client, ctx):
        batch = await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"]))
        await eventually(lambda: len(pushes) == 3)
        assert sorted(n for n, _ in pushes) == names
        assert pushes[0][1]["data"]["version"] == "2.0.0"
        await eventually(lambda: set(states_of(ctx.engine, batch["id"]).values()) == {"pushed"})
        for name in names:
            await bridge.updated(name)
        handle = client.get_workflow_handle(batch_workflow_id(batch["id"]))
        result = await handle.result()
    assert result["counts"] == {"updated": 3}
    tasks = tasks_of(ctx.engine, batch["id"])
    assert all(t.attempts == 1 and t.started for t in tasks.values())
    # The lean path (docs/design.md): started, WT, push marker, timer, signal, WT, completed.
    # No TimerCanceled: the workflow ends with its timer pending. No search-attribute update.
    assert await history_counts(bridge.handle(names[0])) == (11, 2, 1)
    # The Web UI finds a batch's devices by their parent, and a happy device has no OtaState.
    by_parent = f'ParentWorkflowId = "{batch_workflow_id(batch["id"])}"'

    async def found() -> bool:  # visibility is written asynchronously
        return (await client.count_workflows(by_parent)).count == 3

    await eventually(found)
    assert "OtaState" not in (await bridge.handle(names[0]).describe()).search_attributes
