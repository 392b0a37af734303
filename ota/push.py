"""The `data` of an upgrade push and of a firmware/get reply, built the same way for both."""

from __future__ import annotations

from typing import Any

from ota.db.models import Firmware
from ota.domain import DEFAULT_MODULE, FirmwareType, SignMethod, is_newer
from ota.protocol import EXT_DOWNGRADE
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
    from_version: str | None = None,
) -> dict[str, Any]:
    """PROTOCOL.md's push data, with a fresh URL signed for this device. `from_version` is the
    task's: a firmware that is not newer makes the push an intended downgrade (extData)."""
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
    # The platform's word alone: a tag of that name on the firmware would let every push of it
    # past the devices' downgrade check.
    ext.pop(EXT_DOWNGRADE, None)
    if is_downgrade(firmware.version, from_version):
        ext[EXT_DOWNGRADE] = True
    if ext:
        data["extData"] = ext
    return data


def is_downgrade(target: str, from_version: str | None) -> bool:
    """The operator chose this firmware for devices on `from_version` (a batch's source
    versions, or devices picked by name): one that is not newer is a downgrade they intend."""
    return (
        from_version is not None and target != from_version and not is_newer(target, from_version)
    )


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
