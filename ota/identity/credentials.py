"""A device's secret, and the MQTT connection parameters Alibaba's signing rule makes of it.

Alibaba's SDKs sign in with username `{dn}&{pk}`, a client id
`{cid}|securemode=N,signmethod=hmacsha256,timestamp={ts}|` and password
hex(HMAC-SHA256(DeviceSecret, "clientId{cid}deviceName{dn}productKey{pk}timestamp{ts}"))
(../shared/PROTOCOL.md). We fix `cid` to `{pk}.{dn}` and `ts` to one far-future value, as
Alibaba's console does for the parameters it shows, so a device's parameters never change until
its secret does: the broker can store them, and an SDK given only the triple computes the same.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import asdict, dataclass

from cryptography.fernet import Fernet, InvalidToken

from ota.signing import derived_fernet

SECRET_FORMAT = "fernet-hkdf-v1"  # the prefix of a stored (encrypted) device secret
SIGN_METHOD = "hmacsha256"
TIMESTAMP = "2524608000000"  # 2050-01-01 in ms: a fixed timestamp keeps the password fixed
SECURE_MODE = "2"


class SecretError(Exception):
    """A stored device secret does not decrypt with this installation's secret."""


def new_device_secret() -> str:
    """32 hex characters, the length of Alibaba's DeviceSecret."""
    return secrets.token_hex(16)


def _fernet(key_secret: bytes, product_key: str, device_name: str) -> Fernet:
    return derived_fernet(key_secret, f"ota device secret:{product_key}/{device_name}")


def encrypt_secret(secret: str, key_secret: bytes, product_key: str, device_name: str) -> str:
    token = _fernet(key_secret, product_key, device_name).encrypt(secret.encode()).decode()
    return f"{SECRET_FORMAT}:{token}"


def decrypt_secret(stored: str, key_secret: bytes, product_key: str, device_name: str) -> str:
    fmt, _, token = stored.partition(":")
    if fmt != SECRET_FORMAT or not token:
        raise SecretError(f"device {product_key}/{device_name}: unknown secret format {fmt!r}")
    try:
        return _fernet(key_secret, product_key, device_name).decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretError(
            f"device {product_key}/{device_name}: its secret does not decrypt with this "
            "installation's secret (OTA_KEY_ENCRYPTION_SECRET or OTA_HOME/key-secret changed?)"
        ) from None


@dataclass(frozen=True)
class MqttCredentials:
    """What a device puts in its MQTT CONNECT (Alibaba's console shows the same three)."""

    client_id: str
    username: str
    password: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def username_of(product_key: str, device_name: str) -> str:
    return f"{device_name}&{product_key}"


def device_of_username(username: str) -> tuple[str, str]:
    """(product key, device name) of a device's username: neither may contain `&`."""
    name, _, product_key = username.partition("&")
    return product_key, name


def client_id_of(product_key: str, device_name: str) -> str:
    cid = f"{product_key}.{device_name}"
    return f"{cid}|securemode={SECURE_MODE},signmethod={SIGN_METHOD},timestamp={TIMESTAMP}|"


def sign_password(
    secret: str, client_id: str, product_key: str, device_name: str, timestamp: str = TIMESTAMP
) -> str:
    """Alibaba's password: `client_id` is the part before the first `|`."""
    cid = client_id.split("|", 1)[0]
    content = f"clientId{cid}deviceName{device_name}productKey{product_key}timestamp{timestamp}"
    return hmac.new(secret.encode(), content.encode(), hashlib.sha256).hexdigest()


def device_credentials(product_key: str, device_name: str, secret: str) -> MqttCredentials:
    client_id = client_id_of(product_key, device_name)
    return MqttCredentials(
        client_id=client_id,
        username=username_of(product_key, device_name),
        password=sign_password(secret, client_id, product_key, device_name),
    )


def fingerprint(password: str) -> str:
    """A short, one-way tag of a password: the broker keeps it beside the user, so a sync sees
    whether the password it holds is the current one without reading it back."""
    return hashlib.sha256(f"ota-password:{password}".encode()).hexdigest()[:16]
