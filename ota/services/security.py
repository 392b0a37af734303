"""Secure update: a product's signing keys (switch, rotation) and the digestsign of each push.

The private key is generated here, stored encrypted (ota.signing) and decrypted only inside
`Signer`; no function of this module returns it. The rotation procedure is in docs/security.md.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from ota import signing
from ota.db.engine import session_scope
from ota.db.models import Batch, Firmware, Product, utcnow
from ota.domain import OPEN_BATCH_STATES
from ota.errors import Conflict, InvalidInput
from ota.metrics import SIGNATURE_CACHE
from ota.services.products import get_product, product_public, require_product
from ota.settings import Settings

log = logging.getLogger(__name__)

# ext_data key of a firmware that must be signed with a chosen key; "_" keeps it off the wire.
SIGN_WITH = "_sign_with"
CURRENT, PREVIOUS = "current", "previous"
SIGN_WITH_CHOICES = (CURRENT, PREVIOUS)
# How long a worker or bridge trusts what it read of a product's keys: switching secure update
# takes effect within this, and a 100,000-device batch reads the product once per period.
PRODUCT_TTL_SECONDS = 5.0


def set_secure_update(
    engine: Engine, settings: Settings, product_key: str, enabled: bool
) -> dict[str, Any]:
    """The console's switch: on creates the key pair if the product has none; off keeps it, so
    devices built with its public key still verify when it is switched on again."""
    with session_scope(engine) as session:
        product = require_product(session, product_key)
        if enabled and product.public_key is None:
            pair = signing.generate_key_pair()
            product.public_key = pair.public_pem
            product.private_key_enc = signing.encrypt_private_key(
                pair.private_pem, settings.resolved_key_encryption_secret, product_key
            )
            log.info(
                "product %s: new signing key %s", product_key, signing.fingerprint(pair.public_pem)
            )
        product.secure_update = enabled
    log.info("product %s: secure update %s", product_key, "on" if enabled else "off")
    return product_public(get_product(engine, product_key))


def public_key(engine: Engine, product_key: str, previous: bool = False) -> str:
    """The PEM device makers build into their firmware (or, with previous, the one before)."""
    product = get_product(engine, product_key)
    pem = product.previous_public_key if previous else product.public_key
    if pem is None:
        what = "no previous key (no rotation under way)" if previous else "no signing key yet"
        raise Conflict(
            f"product {product_key} has {what}; `ota product secure-update {product_key} --on` "
            "creates one",
            field="product_key",
        )
    return pem


def key_status(engine: Engine, product_key: str) -> dict[str, Any]:
    """What the CLI shows about a product's keys: fingerprints and the rotation, never a secret."""
    product = get_product(engine, product_key)
    return {
        "product_key": product.product_key,
        "secure_update": product.secure_update,
        "key": signing.fingerprint(product.public_key) if product.public_key else None,
        "previous_key": (
            signing.fingerprint(product.previous_public_key)
            if product.previous_public_key
            else None
        ),
        "key_rotated_at": product.key_rotated_at.isoformat() if product.key_rotated_at else None,
    }


def rotate_key(engine: Engine, settings: Settings, product_key: str) -> dict[str, Any]:
    """A new key pair signs from now on; the old one becomes `previous` and signs only firmware
    marked `_sign_with: previous` (the carrier of the new public key) until it is retired."""
    pair = signing.generate_key_pair()
    with session_scope(engine) as session:
        product = require_product(session, product_key)
        if product.public_key is None or product.private_key_enc is None:
            raise Conflict(
                f"product {product_key} has no signing key to rotate; turn secure update on first",
                field="product_key",
            )
        if product.previous_public_key is not None:
            raise Conflict(
                f"product {product_key} is already rotating its key (since "
                f"{product.key_rotated_at:%Y-%m-%d %H:%M}); roll out the carrier firmware, then "
                f"`ota product retire-key {product_key}` before rotating again",
                field="product_key",
            )
        product.previous_public_key = product.public_key
        product.previous_private_key_enc = product.private_key_enc
        product.public_key = pair.public_pem
        product.private_key_enc = signing.encrypt_private_key(
            pair.private_pem, settings.resolved_key_encryption_secret, product_key
        )
        product.key_rotated_at = utcnow()
    status = key_status(engine, product_key)
    log.info("product %s: key rotated %s -> %s", product_key, status["previous_key"], status["key"])
    return status


def retire_previous_key(engine: Engine, product_key: str, force: bool = False) -> dict[str, Any]:
    """End a rotation: forget the previous key. Refused while a batch of a firmware signed with
    it is active (its devices would be pushed an update they can no longer verify)."""
    with session_scope(engine) as session:
        product = require_product(session, product_key)
        if product.previous_public_key is None:
            raise Conflict(f"product {product_key} has no previous key", field="product_key")
        active = _active_carrier_batches(session, product_key)
        if active and not force:
            raise Conflict(
                f"batches {', '.join(active)} still push firmware signed with the previous key; "
                "wait for them or cancel them (or --force)",
                field="product_key",
            )
        product.previous_public_key = None
        product.previous_private_key_enc = None
    return key_status(engine, product_key)


def _active_carrier_batches(session: Session, product_key: str) -> list[str]:
    rows = session.exec(
        select(Batch.id, Firmware.ext_data)
        .join(Firmware, col(Firmware.id) == col(Batch.firmware_id))
        .where(Batch.product_key == product_key, col(Batch.state).in_(OPEN_BATCH_STATES))
    ).all()
    return [batch_id for batch_id, ext in rows if (ext or {}).get(SIGN_WITH) == PREVIOUS]


def check_sign_with(session: Session, product_key: str, value: str | None) -> str | None:
    """A firmware's `sign_with` choice at upload: `previous` needs a rotation under way."""
    if value is None or value == CURRENT:
        return None  # the default: nothing stored
    if value != PREVIOUS:
        raise InvalidInput("sign_with", f"must be one of {', '.join(SIGN_WITH_CHOICES)}")
    product = require_product(session, product_key)
    if product.previous_public_key is None:
        raise InvalidInput(
            "sign_with",
            f"product {product_key} has no previous key: `ota product rotate-key {product_key}` "
            "first, then add the firmware that carries the new public key",
        )
    return PREVIOUS


@dataclass(frozen=True)
class _ProductKeys:
    secure_update: bool
    keys: dict[str, tuple[str, rsa.RSAPrivateKey]]  # current|previous -> (fingerprint, key)
    read_at: float


UNSIGNABLE = ""  # secure update requires a signature that cannot be made now
_CACHE_HIT, _CACHE_MISS = SIGNATURE_CACHE.labels("hit"), SIGNATURE_CACHE.labels("miss")


class Signer:
    """digestsign for pushes and firmware/get replies, cached per (firmware, sign, key): a
    100,000-device batch signs once per firmware, and reads its product every few seconds."""

    def __init__(
        self, engine: Engine, settings: Settings, ttl: float = PRODUCT_TTL_SECONDS
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.ttl = ttl
        self._products: dict[str, _ProductKeys] = {}
        self._signatures: dict[tuple[int, str, str], str] = {}
        self._lock = threading.Lock()  # the bridge signs from worker threads
        self.signed = 0  # RSA operations done: what the cache saves is visible

    def digestsign(self, product_key: str, firmware: Firmware) -> str | None:
        """None when the product does not use secure update. A key that cannot be used raises:
        the push is retried rather than sent unsigned to devices that require a signature."""
        keys = self._product(product_key)
        if not keys.secure_update:
            return None
        which = (firmware.ext_data or {}).get(SIGN_WITH) or CURRENT
        if which not in keys.keys:
            if which == PREVIOUS:
                # The rotation ended before this carrier finished: devices that hold the new key
                # still verify it; those that do not fail with -3, as they should.
                log.warning(
                    "firmware %s asks for the previous key of %s, which was retired; signing "
                    "with the current key",
                    firmware.id,
                    product_key,
                )
                which = CURRENT
            if which not in keys.keys:
                raise signing.SigningError(f"product {product_key} has no signing key")
        fp, key = keys.keys[which]
        assert firmware.id is not None
        cache_key = (firmware.id, firmware.sign, fp)
        with self._lock:
            found = self._signatures.get(cache_key)
        if found is None:
            _CACHE_MISS.inc()
            found = signing.digestsign(key, firmware.sign)
            with self._lock:
                self._signatures[cache_key] = found
                self.signed += 1
        else:
            _CACHE_HIT.inc()
        return found

    def digestsign_or_unsignable(self, product_key: str, firmware: Firmware) -> str | None:
        """As `digestsign`, for the bridge's messages, which no activity retries: a key that
        cannot be used is logged and answered UNSIGNABLE, and the caller sends nothing (unsigned,
        a secure device would fail the update with -3; the device asks again, the worker's push
        retries until the key is usable)."""
        try:
            return self.digestsign(product_key, firmware)
        except Exception:
            log.exception("cannot sign firmware %s for %s", firmware.id, product_key)
            return UNSIGNABLE

    def _product(self, product_key: str) -> _ProductKeys:
        now = time.monotonic()
        with self._lock:
            cached = self._products.get(product_key)
        if cached is not None and now - cached.read_at < self.ttl:
            return cached
        with Session(self.engine) as session:
            product = session.get(Product, product_key)
            if product is None:
                raise signing.SigningError(f"product {product_key} not found")
            session.expunge(product)
        keys: dict[str, tuple[str, rsa.RSAPrivateKey]] = {}
        if product.secure_update:
            pairs = {
                CURRENT: (product.public_key, product.private_key_enc),
                PREVIOUS: (product.previous_public_key, product.previous_private_key_enc),
            }
            for which, (pub, enc) in pairs.items():
                if pub and enc:
                    fp = signing.fingerprint(pub)
                    old = cached.keys.get(which) if cached else None
                    # Decrypting costs little, but the key object is reused when unchanged.
                    key = (
                        old[1]
                        if old and old[0] == fp
                        else signing.decrypt_private_key(
                            enc, self.settings.resolved_key_encryption_secret, product_key
                        )
                    )
                    keys[which] = (fp, key)
        fresh = _ProductKeys(product.secure_update, keys, now)
        with self._lock:
            self._products[product_key] = fresh
        return fresh
