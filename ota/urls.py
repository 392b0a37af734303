"""Download URLs: expiring, and signed (HMAC) for one device and one firmware."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

from ota.settings import Settings


def _signature(
    secret: bytes, firmware_id: int, product_key: str, device_name: str, expires: int
) -> str:
    msg = f"{firmware_id}\n{product_key}\n{device_name}\n{expires}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def download_url(
    settings: Settings,
    firmware_id: int,
    product_key: str,
    device_name: str,
    now: float | None = None,
) -> str:
    expires = int((now or time.time()) + settings.url_ttl_seconds)
    sig = _signature(settings.resolved_url_secret, firmware_id, product_key, device_name, expires)
    query = urlencode({"pk": product_key, "dn": device_name, "expires": expires, "sig": sig})
    return f"{settings.resolved_public_url}/download/{firmware_id}?{query}"


def check_token(
    settings: Settings,
    firmware_id: int,
    product_key: str,
    device_name: str,
    expires: int,
    sig: str,
    now: float | None = None,
) -> bool:
    """True when the URL was issued by us for this firmware and device and has not expired."""
    if expires < (now or time.time()):
        return False
    expected = _signature(
        settings.resolved_url_secret, firmware_id, product_key, device_name, expires
    )
    return hmac.compare_digest(expected, sig)
