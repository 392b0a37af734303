"""The baseline's own broker account: it publishes and subscribes on its own topic only."""

from __future__ import annotations

import asyncio

from bench.baseline import TOPIC
from ota.identity.accounts import SEND, SUBSCRIBE, Account, Acl, broker_endpoint
from ota.identity.sync import SyncReport, broker_users
from ota.mqtt import MqttEndpoint
from ota.settings import Settings

USER = "ota-bench"


def bench_account(settings: Settings) -> MqttEndpoint:
    """Where the baseline connects; on a broker without device identity, anonymously."""
    endpoint = broker_endpoint(settings)
    if settings.broker_auth == "none":
        return endpoint
    password = USER + settings.resolved_mqtt_service_secret.decode()[:16]
    asyncio.run(_create(settings, password))
    return endpoint.with_credentials(USER, password)


async def _create(settings: Settings, password: str) -> None:
    topic = f"{TOPIC}/#"
    account = Account(
        username=USER,
        password=password,
        role=USER,
        acls=[Acl(SEND, topic), Acl(SUBSCRIBE, topic)],
        textname="ota service",
    )
    async with broker_users(settings) as broker:
        existing = await broker.existing([USER])
        broker.check(await broker.run(broker.plan([account], existing, SyncReport())))
