"""A Mosquitto that enforces device identity: its configuration and the plugin's first user.

`ota dev`, the tests and the benchmark start Mosquitto with `mosquitto_conf`; an operator with a
broker of their own runs `ota broker config DIR` and adds the lines it prints (docs/security.md).
Either plugin starts with one user, the admin account our services manage it with: for ota_auth
a salted hash of its password in mosquitto.conf, for dynamic-security its JSON file. `ota broker
sync` (run by `ota dev` at start) adds the bridge's and the worker's and every device's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ota.identity.accounts import ServiceRole, service_account, service_password
from ota.identity.dynsec import DEFAULT_ACCESS
from ota.identity.plugin_build import build_plugin
from ota.settings import Settings

log = logging.getLogger(__name__)

USERS_FILE = "ota-auth-users.json"  # ota_auth's users (it creates the file; 0600)
DYNSEC_FILE = "dynamic-security.json"
DEFAULT_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"  # Debian, amd64
PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
ITERATIONS = 101  # what the plugin itself uses for the passwords it hashes
MAX_PACKET_BYTES = 1024 * 1024  # no device message comes near; a 200 MB publish is refused


def plugin_path() -> str | None:
    return next((p for p in PLUGIN_PATHS if Path(p).exists()), None)


def password_hash(password: str, salt: bytes | None = None) -> dict[str, object]:
    """The plugin's stored form: PBKDF2-HMAC-SHA512 with a 12-byte salt, both base64."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": ITERATIONS,
    }


def initial_dynsec_config(settings: Settings) -> dict[str, object]:
    admin = service_account(settings, ServiceRole.ADMIN)
    return {
        "defaultACLAccess": {a["acltype"]: a["allow"] for a in DEFAULT_ACCESS},
        "clients": [
            {
                "username": admin.username,
                "textname": admin.textname,
                **password_hash(admin.password),
                "roles": [{"rolename": admin.role}],
            }
        ],
        "roles": [{"rolename": admin.role, "acls": [a.to_dynsec() for a in admin.acls]}],
        "groups": [],
    }


def write_dynsec_config(settings: Settings, path: Path) -> bool:
    """Create the plugin's file (0600) if it does not exist; an existing one holds the live
    users and is never overwritten. Returns whether it was created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(initial_dynsec_config(settings), f, indent=1)
    return True


def security_lines(dynsec_file: Path, plugin: str | None = None) -> str:
    """What a mosquitto.conf needs for device identity with the dynamic-security plugin."""
    return (
        "allow_anonymous false\n"
        f"plugin {plugin or plugin_path() or DEFAULT_PLUGIN}\n"
        f"plugin_opt_config_file {dynsec_file}\n"
        f"max_packet_size {MAX_PACKET_BYTES}\n"
    )


def admin_password_sha256(settings: Settings) -> str:
    """ota_auth's `plugin_opt_admin_password_sha256`: SALTHEX:hex(SHA-256(salt || password))."""
    salt = secrets.token_bytes(16)
    password = service_password(settings, ServiceRole.ADMIN).encode()
    return f"{salt.hex()}:{hashlib.sha256(salt + password).hexdigest()}"


def ota_auth_lines(settings: Settings, plugin: Path, users_file: Path) -> str:
    """What a mosquitto.conf needs for device identity with ota_auth."""
    return (
        "allow_anonymous false\n"
        f"plugin {plugin}\n"
        f"plugin_opt_users_file {users_file}\n"
        f"plugin_opt_admin_username {ServiceRole.ADMIN.value}\n"
        f"plugin_opt_admin_password_sha256 {admin_password_sha256(settings)}\n"
        f"max_packet_size {MAX_PACKET_BYTES}\n"
    )


@dataclass(frozen=True)
class BrokerSecurity:
    """A broker's device identity, set up in a folder: which plugin, and its mosquitto.conf
    lines."""

    broker_auth: str  # "plugin" or "dynsec": what OTA_BROKER_AUTH must say for this broker
    lines: str
    files: list[Path]


def usable_broker_auth(settings: Settings, folder: Path) -> str:
    """`settings.broker_auth`, or "dynsec" where ota_auth was asked for and cannot be built
    here (no compiler or headers: the reason is logged)."""
    if settings.broker_auth == "plugin" and build_plugin(folder) is None:
        return "dynsec"
    return settings.broker_auth


def broker_security(settings: Settings, folder: Path) -> BrokerSecurity:
    """Build ota_auth into `folder` (or write the dynamic-security file there, when that is
    what `settings.broker_auth` says), and the lines that load it."""
    folder.mkdir(parents=True, exist_ok=True)
    if settings.broker_auth == "plugin":
        plugin = build_plugin(folder)
        if plugin is None:
            raise RuntimeError(
                "the ota_auth broker plugin cannot be built here (see the log above); "
                "OTA_BROKER_AUTH=dynsec uses Mosquitto's dynamic-security plugin instead"
            )
        users = folder / USERS_FILE
        return BrokerSecurity("plugin", ota_auth_lines(settings, plugin, users), [plugin, users])
    dynsec = plugin_path()
    if dynsec is None:
        raise RuntimeError(
            "Mosquitto's dynamic-security plugin is not installed (Debian's mosquitto 2.x "
            "ships it); or set OTA_BROKER_AUTH=none for a broker without device identity"
        )
    path = folder / DYNSEC_FILE
    write_dynsec_config(settings, path)
    return BrokerSecurity("dynsec", security_lines(path, dynsec), [path])
