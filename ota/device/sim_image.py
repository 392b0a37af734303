"""The firmware images simulated devices run: synthesized, one cached copy a version."""

from __future__ import annotations

import functools
import hashlib
import random

IMAGE_CHANGES = 8  # regions a version rewrites: localized changes, as between two real builds
IMAGE_CHANGE_BYTES = 512


IMAGE_MIN = 4096


@functools.lru_cache(maxsize=16)
def synth_image(module: str, version: str, size: int = 256 * 1024) -> bytes:
    """A deterministic pseudo-firmware: a base per module with a few regions rewritten per
    version, so two versions differ the way two builds do and a diff between them is small.
    Upload two of them (`ota simulate` devices run them) to try differential packages."""
    size = max(size, IMAGE_MIN)
    image = bytearray(random.Random(f"image:{module}").randbytes(size))
    rng = random.Random(f"image:{module}:{version}")
    for _ in range(IMAGE_CHANGES):
        at = rng.randrange(0, size - IMAGE_CHANGE_BYTES)
        image[at : at + IMAGE_CHANGE_BYTES] = rng.randbytes(IMAGE_CHANGE_BYTES)
    # Real images carry their version, and often a checksum trailer over the rest.
    tag = f"ota-sim {module} {version}".encode()[:256]
    image[: len(tag)] = tag
    image[-32:] = hashlib.sha256(image[:-32]).digest()
    return bytes(image)
