"""Our own Mosquitto plugin, ota_auth (ota/identity/plugin/ota_auth.c), driven over its
control topic.

A device user is its username and DeviceSecret: the plugin checks Alibaba's signature at each
connect (so LinkKit's fresh timestamps work) and derives the device's ACLs from the username.
A service user is a password (stored salted and hashed) and the ACL rules of `accounts`. Each
user carries a tag, a one-way fingerprint of what it was set with, so a sync sees what is
already right without reading secrets back.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ota.identity.accounts import RECEIVE, SEND, SUBSCRIBE, Account
from ota.identity.control import BrokerUsers, Command, ControlClient, ControlError
from ota.identity.credentials import fingerprint
from ota.mqtt import MqttEndpoint

if TYPE_CHECKING:
    from ota.identity.sync import SyncReport

REQUEST_TOPIC = "$CONTROL/ota-auth/v1"
HINT = "is Mosquitto running with the ota_auth plugin (`ota broker config`), and "
HINT += "OTA_MQTT_SERVICE_SECRET the one it was configured with?"
ACCESS = {SEND: "publish", SUBSCRIBE: "subscribe"}


def OtaAuth(endpoint: MqttEndpoint, timeout: float = 30.0) -> ControlClient:  # noqa: N802
    """An admin connection to the plugin's control topic."""
    return ControlClient(endpoint, REQUEST_TOPIC, timeout, HINT, defer_saves=True)


def service_rules(account: Account) -> list[dict[str, str]]:
    """The plugin's form of a service's ACLs. It strips `$share/{group}/` from a subscription
    before matching, so the dynsec-only `$share/+/...` rules go; delivery (RECEIVE) is always
    allowed for what a client may subscribe to."""
    return [
        {"access": ACCESS[a.kind], "topic": a.topic}
        for a in account.acls
        if a.kind != RECEIVE and not a.topic.startswith("$share/")
    ]


def set_command(account: Account) -> Command:
    """setDevice or setService: creates the user or replaces it (the plugin drops its live
    connections only when its secret, password, rules or state changed)."""
    if account.secret is not None:
        return {
            "command": "setDevice",
            "username": account.username,
            "secret": account.secret,
            "enabled": account.enabled,
            "tag": account.tag,
        }
    return {
        "command": "setService",
        "username": account.username,
        "password": account.password,
        "role": account.role,
        "acls": service_rules(account),
        "enabled": account.enabled,
        "tag": service_tag(account),
    }


def service_tag(account: Account) -> str:
    """A service's tag covers its rules too, so a release that changes them updates it."""
    rules = json.dumps(service_rules(account), separators=(",", ":"))
    return fingerprint(f"{account.password}|{account.role}|{rules}")


def _kind(account: Account) -> str:
    return "device" if account.secret is not None else "service"


class OtaAuthUsers(BrokerUsers):
    def __init__(self, endpoint: MqttEndpoint, timeout: float = 30.0) -> None:
        super().__init__(OtaAuth(endpoint, timeout))

    async def existing(self, usernames: list[str] | None) -> dict[str, dict[str, Any]]:
        if usernames is None:
            commands: list[Command] = [{"command": "listUsers"}]
        else:  # in slices, so each command stays a small part of a control message
            slices = [usernames[i : i + 1000] for i in range(0, len(usernames), 1000)]
            commands = [{"command": "getUsers", "usernames": s} for s in slices]
        responses = await self.run(commands)
        self.check(responses)
        return {
            u["username"]: u
            for r in responses
            for u in r.get("data", {}).get("users", [])
            if isinstance(u, dict) and "username" in u
        }

    def plan(
        self, accounts: list[Account], existing: dict[str, dict[str, Any]], report: SyncReport
    ) -> list[Command]:
        commands: list[Command] = []
        for a in accounts:
            user = existing.get(a.username)
            command = set_command(a)
            if user is None:
                commands.append(command)
                report.created += 1
                report.disabled += not a.enabled
                continue
            enabled = bool(user.get("enabled"))
            if user.get("kind") != _kind(a) or user.get("tag") != command["tag"]:
                commands.append(command)  # it carries the state too
                report.updated += 1
            elif enabled != a.enabled:
                name = "enableUser" if a.enabled else "disableUser"
                commands.append({"command": name, "username": a.username})
            if enabled != a.enabled:
                report.enabled += a.enabled
                report.disabled += not a.enabled
        return commands

    def is_device(self, user: dict[str, Any]) -> bool:
        return user.get("kind") == "device"

    def delete(self, username: str, product_key: str, device_name: str) -> list[Command]:
        return [{"command": "deleteUser", "username": username}]

    def check(self, responses: list[dict[str, Any]]) -> None:
        for r in responses:
            error = r.get("error")
            if not error or (r.get("command") == "deleteUser" and "not found" in error.lower()):
                continue
            raise ControlError(f"the broker refused {r.get('command')}: {error}")
