"""The `data` of an upgrade push and of a firmware/get reply, built the same way for both."""

from __future__ import annotations

from typing import Any

from ota.db.models import Firmware
from ota.domain import DEFAULT_MODULE, FirmwareType, SignMethod
from ota.settings import Settings
from ota.storage import FirmwareStore
from ota.urls import download_url


def upgrade_data(
    settings: Settings,
    firmware: Firmware,
    product_key: str,
    device_name: str,
    digestsign: str | None = None,
    store: FirmwareStore | None = None,
) -> dict[str, Any]:
    """PROTOCOL.md's push data, with a fresh URL signed for this device."""
    method = SignMethod(firmware.sign_method)
    assert firmware.id is not None
    data: dict[str, Any] = {
        "size": firmware.size,
        "version": firmware.version,
        "url": firmware_url(settings, firmware, product_key, device_name, store),
        "sign": firmware.sign,
        "signMethod": method.wire,
    }
    if method is SignMethod.MD5:
        data["md5"] = firmware.md5
    if firmware.type == FirmwareType.DIFF:
        data["isDiff"] = 1
    if firmware.module != DEFAULT_MODULE:
        data["module"] = firmware.module
    if digestsign:
        data["digestsign"] = digestsign
    ext = {k: v for k, v in (firmware.ext_data or {}).items() if not k.startswith("_")}
    if ext:
        data["extData"] = ext
    return data


def firmware_url(
    settings: Settings,
    firmware: Firmware,
    product_key: str,
    device_name: str,
    store: FirmwareStore | None = None,
) -> str:
    """Our signed /download URL, or with OTA_S3_DIRECT_URLS a presigned URL of the S3 object.

    Direct URLs take the file traffic off the HTTP server; they expire like ours but are not
    bound to one device. Pass `store` when calling often: building one costs an S3 client.
    """
    assert firmware.id is not None
    if settings.s3_direct_urls and settings.resolved_storage_url.startswith("s3://"):
        store = store or FirmwareStore(settings)
        return store.presign(firmware.storage_key, settings.url_ttl_seconds)
    return download_url(settings, firmware.id, product_key, device_name)
