"""Records the histories tests/test_replay.py replays: run by hand, never by pytest.

    PYTHONPATH=. .venv/bin/python -m tests.histories.record OUT_DIR

The `legacy-*.json` files here were recorded with it at commit ddbe7f5, the last release whose
batch and verify workflows started device workflows as `device-{pk}-{dn}`. A worker of today's
code must replay them without a non-determinism error: batches run for hours and device
workflows wait for days, so an upgrade finds them mid-flight. Recorded again today, the same
scenario gives `device/{pk}/{dn}` ids: keep the legacy files as they are (OUT_DIR is required,
so they are not overwritten by accident).

Scenario: product `rec-a`, devices `b-c00000`..`b-c00002` (names with `-`, like the colliding pair
the change fixed). A batch continues as new after 2 starts (two runs, the first one starting two
children and continuing as new) and updates all three; then a verification of another firmware
on two of them passes.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from ota.contracts import SEARCH_ATTRIBUTES, BatchInput, batch_workflow_id, verify_workflow_id
from ota.services.batches import create_batch
from ota.services.verify import start_verify, wait_verify
from tests.fixtures.temporal import DEV_SERVER_ARGS, temporal_binary
from tests.test_workflow_support import (
    FakeBridge,
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    running_worker,
    states_of,
)

HERE = Path(__file__).resolve().parent
MQTT_URL = "mqtt://127.0.0.1:1883"
PK = "rec-a"


async def save(handle: WorkflowHandle, path: Path) -> None:
    history = await handle.fetch_history()
    path.write_text(history.to_json())
    print(f"{path.name}: {len(history.events)} events")


async def record(client: Client, out: Path, home: Path) -> None:
    ctx = make_context(home, MQTT_URL, client, batch_poll_seconds=0.5, continue_as_new_every=2)
    pk, names = make_fleet(ctx.engine, 3, product_key=PK, prefix="b-c")
    bridge = FakeBridge(ctx.engine, client, pk)
    batch_fw = make_firmware(ctx.engine, pk, version="2.0.0")
    verify_fw = make_firmware(ctx.engine, pk, version="3.0.0", state="unverified")
    async with running_worker(client, ctx):
        batch = await create_batch(ctx, BatchInput("", batch_fw, src_versions=["1.0.0"]))
        await eventually(lambda: set(states_of(ctx.engine, batch["id"]).values()) == {"pushed"})
        for name in names:
            await bridge.updated(name)
        handle = client.get_workflow_handle(batch_workflow_id(batch["id"]))
        await handle.result()
        first = client.get_workflow_handle(
            handle.id,
            run_id=(await handle.describe()).raw_description.workflow_execution_info.first_run_id,
        )
        await save(first, out / "legacy-batch-run1.json")
        await save(handle, out / "legacy-batch-run2.json")
        await save(bridge.handle(names[0]), out / "legacy-device.json")

        shown = await start_verify(ctx, verify_fw, names[:2], timeout=30)
        await eventually(lambda: set(states_of(ctx.engine, shown["id"]).values()) == {"pushed"})
        for name in names[:2]:
            await bridge.updated(name)
        await wait_verify(ctx, shown["id"])
        await save(
            client.get_workflow_handle(verify_workflow_id(shown["id"])), out / "legacy-verify.json"
        )


async def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m tests.histories.record OUT_DIR (the legacy files: {HERE})")
    out = Path(sys.argv[1])
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        dev_server_extra_args=DEV_SERVER_ARGS,
        search_attributes=list(SEARCH_ATTRIBUTES),
        ui=False,
    )
    try:
        with tempfile.TemporaryDirectory() as home:
            await record(env.client, out, Path(home))
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
