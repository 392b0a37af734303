"""The `data` of an upgrade push and of a firmware/get reply, built the same way for both."""

from __future__ import annotations

from typing import Any

from ota.db.models import Firmware
from ota.domain import DEFAULT_MODULE, FirmwareType, SignMethod
from ota.settings import Settings
from ota.urls import download_url


def upgrade_data(
    settings: Settings,
    firmware: Firmware,
    product_key: str,
    device_name: str,
    digestsign: str | None = None,
) -> dict[str, Any]:
    """PROTOCOL.md's push data, with a fresh URL signed for this device."""
    method = SignMethod(firmware.sign_method)
    assert firmware.id is not None
    data: dict[str, Any] = {
        "size": firmware.size,
        "version": firmware.version,
        "url": download_url(settings, firmware.id, product_key, device_name),
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
