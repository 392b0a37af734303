"""A Mosquitto that enforces device identity: its configuration and the plugin's first users.

`ota dev`, the tests and the benchmark start Mosquitto with `mosquitto_conf`; an operator with a
broker of their own runs `ota broker config DIR` and adds the lines it prints (README).
The plugin's file starts with one user, the admin account our services manage it with; `ota
broker sync` (run by `ota dev` at start) adds the bridge's and the worker's and every device's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path

from ota.identity.accounts import ServiceRole, service_account
from ota.identity.sync import DEFAULT_ACCESS
from ota.settings import Settings

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
    """What a mosquitto.conf needs for device identity."""
    return (
        "allow_anonymous false\n"
        f"plugin {plugin or plugin_path() or DEFAULT_PLUGIN}\n"
        f"plugin_opt_config_file {dynsec_file}\n"
        f"max_packet_size {MAX_PACKET_BYTES}\n"
    )


def tls_lines(port: int, host: str, cafile: Path, certfile: Path, keyfile: Path) -> str:
    return f"listener {port} {host}\ncafile {cafile}\ncertfile {certfile}\nkeyfile {keyfile}\n"
