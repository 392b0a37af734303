"""Differential packages made on the server: bsdiff between two full images of one module.

The package (BSDIFF40, bz2-compressed) is stored as a diff firmware from A's version to B's, with
extData telling the device the digest of the image it must end up with; the device SDK applies
it to its installed image and checks that digest before installing (ota.device.download).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import time
from dataclasses import dataclass

import bsdiff4  # type: ignore[import-untyped]
from sqlalchemy import Engine

from ota.db.models import Firmware
from ota.domain import FirmwareType
from ota.errors import Conflict, InvalidInput
from ota.services.firmware import add_firmware, get_firmware
from ota.settings import Settings
from ota.storage import FirmwareStore, format_size

log = logging.getLogger(__name__)

# bsdiff sorts every suffix of the source image: measured at ~16 bytes per source byte on top of
# both images held in memory (16 MiB in -> 315 MB peak RSS). 128 MiB of source is ~2.3 GB and a
# few minutes of one CPU; beyond that, make the package offline and upload it as a diff.
MAX_DIFF_INPUT_BYTES = 128 * 1024 * 1024
ALGORITHM = "bsdiff4"
NAME_MAX = 32


@dataclass(frozen=True)
class DiffResult:
    firmware: Firmware
    source_size: int
    target_size: int
    seconds: float

    @property
    def saved_bytes(self) -> int:
        return self.target_size - self.firmware.size


def create_diff(
    engine: Engine,
    store: FirmwareStore,
    settings: Settings,
    from_id: int,
    to_id: int,
    *,
    name: str | None = None,
    description: str | None = None,
    need_verify: bool = True,
    max_bytes: int = MAX_DIFF_INPUT_BYTES,
) -> DiffResult:
    """Generate and store the package from firmware `from_id` to `to_id` (both full images)."""
    src, dst = get_firmware(engine, from_id), get_firmware(engine, to_id)
    _check_pair(src, dst, max_bytes)
    old, new = _read(store, src), _read(store, dst)
    started = time.monotonic()
    patch = bsdiff4.diff(old, new)
    seconds = time.monotonic() - started
    # A package that does not rebuild the target must never reach a device.
    if bsdiff4.patch(old, patch) != new:
        raise RuntimeError(f"bsdiff produced a package that does not rebuild firmware {to_id}")
    del old, new  # the two images are the bulk of the memory; the package is small
    ext = {
        "targetSha256": dst.sha256,
        "targetSize": dst.size,
        "_diff_from": src.id,
        "_diff_to": dst.id,
        "_diff_algorithm": ALGORITHM,
        "_saved_bytes": dst.size - len(patch),
    }
    fw = add_firmware(
        engine,
        store,
        settings,
        src=io.BytesIO(patch),
        # .bin: the seed's free-form extension; the package's content has no magic to match.
        file_name=f"{_slug(dst.name)}-{_slug(src.version)}-to-{_slug(dst.version)}.bin",
        product_key=dst.product_key,
        name=name or default_name(dst.name),
        module=dst.module,
        type=FirmwareType.DIFF.value,
        src_versions=[src.version],
        dest_version=dst.version,
        sign_method=dst.sign_method,
        description=description or f"diff {src.version} -> {dst.version} ({ALGORITHM})",
        need_verify=need_verify,
        ext_data=ext,
    )
    log.info(
        "firmware %s: diff %s -> %s is %d bytes for a %d-byte image (%.1fs)",
        fw.id,
        src.version,
        dst.version,
        fw.size,
        dst.size,
        seconds,
    )
    return DiffResult(fw, src.size, dst.size, seconds)


def _check_pair(src: Firmware, dst: Firmware, max_bytes: int) -> None:
    for field, fw in (("from", src), ("to", dst)):
        if fw.type != FirmwareType.FULL:
            raise InvalidInput(field, f"firmware {fw.id} is a diff; both ends must be full images")
        if fw.size > max_bytes:
            raise InvalidInput(
                field,
                f"firmware {fw.id} is {format_size(fw.size)}; server-side diffs take images up "
                f"to {format_size(max_bytes)} (bsdiff needs ~17x the source in memory): make the "
                "package offline and add it with --type diff",
            )
    if src.id == dst.id:
        raise InvalidInput("to", "must be another firmware than the one the diff is made from")
    if (src.product_key, src.module) != (dst.product_key, dst.module):
        raise InvalidInput(
            "to",
            f"firmware {dst.id} is for {dst.product_key}/{dst.module}, firmware {src.id} for "
            f"{src.product_key}/{src.module}: a diff stays within one product and module",
        )
    if src.version == dst.version:
        raise InvalidInput("to", f"both firmware are version {src.version}")


def _read(store: FirmwareStore, fw: Firmware) -> bytes:
    """The stored image, checked against its record: a diff of a damaged file would be too."""
    with store.open(fw.storage_key) as f:
        data = f.read(fw.size + 1)
    if len(data) != fw.size or hashlib.sha256(data).hexdigest() != fw.sha256:
        raise Conflict(f"firmware {fw.id}'s stored file does not match its record", field="from")
    return data


def default_name(target_name: str) -> str:
    """`<target>_diff`, shortened to the seed's 32 characters."""
    suffix = "_diff"
    return target_name[: NAME_MAX - len(suffix)] + suffix


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)
