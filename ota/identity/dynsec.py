"""Mosquitto's dynamic-security plugin: the fallback where ota_auth cannot be built.

Each device is a plugin user bound to its client id with a role of its own (2.0's ACLs have no
%u/%c patterns); services have a role each. The plugin saves its whole configuration after
every command, so registration costs O(N^2) (docs/security.md has the figures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ota.identity.accounts import DEVICE_TAG, Account, device_role
from ota.identity.control import BrokerUsers, Command, ControlClient, ControlError
from ota.mqtt import MqttEndpoint

if TYPE_CHECKING:
    from ota.identity.sync import SyncReport

REQUEST_TOPIC = "$CONTROL/dynamic-security/v1"
HINT = "is Mosquitto's dynamic-security plugin enabled, and OTA_MQTT_SERVICE_SECRET the one " \
    "`ota broker config` used?"  # fmt: skip

# The broker's defaults: a user may do only what its role allows.
DEFAULT_ACCESS = [
    {"acltype": "publishClientSend", "allow": False},
    {"acltype": "publishClientReceive", "allow": True},
    {"acltype": "subscribe", "allow": False},
    {"acltype": "unsubscribe", "allow": True},
]
# Errors that only say the thing is already there (roles and ACLs are the same every time).
ALREADY_THERE = ("createRole", "addRoleACL")


def Dynsec(endpoint: MqttEndpoint, timeout: float = 30.0) -> ControlClient:  # noqa: N802
    """An admin connection to the plugin's control topic."""
    return ControlClient(endpoint, REQUEST_TOPIC, timeout, HINT)


def _create_role(a: Account) -> Command:
    return {"command": "createRole", "rolename": a.role, "acls": [x.to_dynsec() for x in a.acls]}


def _client_command(name: str, a: Account, **extra: object) -> Command:
    """createClient or modifyClient: the user's password, tag, role and bound client id."""
    command: Command = {
        "command": name,
        "username": a.username,
        "password": a.password,
        **extra,
        "textdescription": a.tag,
        "roles": [{"rolename": a.role}],
    }
    if a.client_id:
        command["clientid"] = a.client_id
    return command


class DynsecUsers(BrokerUsers):
    def __init__(self, endpoint: MqttEndpoint, timeout: float = 30.0) -> None:
        super().__init__(Dynsec(endpoint, timeout))

    def setup(self) -> list[Command]:
        return [{"command": "setDefaultACLAccess", "acls": DEFAULT_ACCESS}]

    async def existing(self, usernames: list[str] | None) -> dict[str, dict[str, Any]]:
        if usernames is None:
            [response] = await self.run([{"command": "listClients", "verbose": True, "count": -1}])
            self.check([response])
            clients = response.get("data", {}).get("clients", [])
            return {c["username"]: c for c in clients if "username" in c}
        responses = await self.run([{"command": "getClient", "username": u} for u in usernames])
        found = {}
        for response in responses:
            client = response.get("data", {}).get("client")
            if client and "username" in client:
                found[client["username"]] = client
        return found

    def plan(
        self, accounts: list[Account], existing: dict[str, dict[str, Any]], report: SyncReport
    ) -> list[Command]:
        commands: list[Command] = []
        for a in accounts:
            user = existing.get(a.username)
            if user is None:
                commands.append(_create_role(a))
                commands.append(_client_command("createClient", a, textname=a.textname))
                report.created += 1
                if not a.enabled:
                    commands.append({"command": "disableClient", "username": a.username})
                    report.disabled += 1
                continue
            roles = [r.get("rolename") for r in user.get("roles", [])]
            if (
                user.get("textdescription") != a.tag
                or (a.client_id and user.get("clientid") != a.client_id)
                or roles != [a.role]
            ):
                # The role itself may be missing too (a half-done earlier sync): make sure of it.
                commands.append(_create_role(a))
                commands.append(_client_command("modifyClient", a))
                report.updated += 1
            elif not a.client_id:  # services: their ACLs may have grown with a release
                commands += [
                    {"command": "addRoleACL", "rolename": a.role, **x.to_dynsec()} for x in a.acls
                ]
            disabled = bool(user.get("disabled"))
            if disabled and a.enabled:
                commands.append({"command": "enableClient", "username": a.username})
                report.enabled += 1
            elif not disabled and not a.enabled:
                commands.append({"command": "disableClient", "username": a.username})
                report.disabled += 1
        return commands

    def is_device(self, user: dict[str, Any]) -> bool:
        return user.get("textname") == DEVICE_TAG

    def delete(self, username: str, product_key: str, device_name: str) -> list[Command]:
        return [
            {"command": "deleteClient", "username": username},
            {"command": "deleteRole", "rolename": device_role(product_key, device_name)},
        ]

    def check(self, responses: list[dict[str, Any]]) -> None:
        for r in responses:
            error = r.get("error")
            if not error or r.get("command") in ALREADY_THERE:
                continue
            if r.get("command") in ("deleteClient", "deleteRole") and "not found" in error.lower():
                continue  # already gone
            raise ControlError(f"the broker refused {r.get('command')}: {error}")
