"""The baseline's own broker account: it publishes and subscribes on its own topic only."""

from __future__ import annotations

import asyncio

from bench.baseline import TOPIC
from ota.identity import dynsec
from ota.identity.accounts import ServiceRole, broker_endpoint, service_endpoint
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
    acls = [
        {"acltype": kind, "topic": topic, "allow": True}
        for kind in ("publishClientSend", "subscribePattern")
    ]
    async with dynsec.Dynsec(service_endpoint(settings, ServiceRole.ADMIN)) as broker:
        responses = await broker.run(
            [
                {"command": "createRole", "rolename": USER, "acls": acls},
                {
                    "command": "createClient",
                    "username": USER,
                    "password": password,
                    "roles": [{"rolename": USER}],
                },
            ]  # fmt: skip
        )
    dynsec.check(responses, tolerated=("Role already exists", "Client already exists"))
