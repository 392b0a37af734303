"""Records the history of a verification canceled before verifications ended `canceled`: run by
hand, never by pytest, with the code of a commit before that change (85ecfd6 recorded
verify-canceled-completed.json here):

    mkdir /tmp/before && git archive 85ecfd6 | tar -x -C /tmp/before
    cd /tmp/before && PYTHONPATH=. python $REPO/tests/histories/record_verify_canceled.py OUT.json

tests/test_verify_canceled.py replays it with today's code: such a run ended `completed`, and a
worker upgraded while it ran must replay it so (the `verify-canceled-state` patch).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from ota.contracts import SEARCH_ATTRIBUTES, verify_workflow_id
from ota.services.batch_signals import cancel_batch
from ota.services.verify import start_verify, wait_verify
from tests.fixtures.temporal import DEV_SERVER_ARGS, temporal_binary
from tests.test_workflow_support import (
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    running_worker,
    states_of,
)

MQTT_URL = "mqtt://127.0.0.1:1883"


async def record(out: Path) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        dev_server_extra_args=DEV_SERVER_ARGS,
        search_attributes=list(SEARCH_ATTRIBUTES),
        ui=False,
    )
    try:
        with tempfile.TemporaryDirectory() as home:
            ctx = make_context(Path(home), MQTT_URL, env.client)
            pk, names = make_fleet(ctx.engine, 2, product_key="rec-vc", prefix="vc-")
            fw = make_firmware(ctx.engine, pk, version="3.0.0", state="unverified")
            async with running_worker(env.client, ctx):
                shown = await start_verify(ctx, fw, names, timeout=30)
                batch = shown["id"]
                await eventually(lambda: set(states_of(ctx.engine, batch).values()) == {"pushed"})
                await cancel_batch(ctx, batch)
                done = await wait_verify(ctx, batch)
                assert done["counts"] == {"canceled": 2}, done
                assert done["firmware_state"] == "verify_failed", done
            handle = env.client.get_workflow_handle(verify_workflow_id(batch))
            history = await handle.fetch_history()
            out.write_text(history.to_json())
            print(f"{out.name}: {len(history.events)} events, batch {done['state']}")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python record_verify_canceled.py OUT.json")
    asyncio.run(record(Path(sys.argv[1])))
