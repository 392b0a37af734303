"""Secure update keys: RSA-2048 pairs, their encryption at rest, and AliOS Things' digestsign.

digestsign (PROTOCOL.md) = base64(RSA-2048 PKCS#1 v1.5 signature with SHA-256 over the raw bytes
of the firmware's `sign`). AliOS Things' `ota_verify_download_rsa_sign` hex-decodes `sign` (16
bytes for Md5, 32 for SHA256), hashes those bytes with SHA-256 and checks a PKCS#1 v1.5
signature of that digest with the product's public key (e = 65537): `sign(raw, PKCS1v15,
SHA256)` below is exactly that. Pure functions, no database: the device SDK uses them too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BITS = 2048  # AliOS Things refuses keys under 2048 bits
PUBLIC_EXPONENT = 65537  # AliOS Things builds its key from n and a 3-byte e
ENCRYPTION_FORMAT = "fernet-hkdf-v1"  # the prefix of an encrypted private key: a future
# format change can tell old rows from new ones
_PEM_PUBLIC = re.compile(
    rb"-----BEGIN PUBLIC KEY-----\r?\n[A-Za-z0-9+/=\r\n]+-----END PUBLIC KEY-----"
)


class SigningError(Exception):
    """A key that cannot be used: unreadable, of the wrong kind, or not decryptable."""


@dataclass(frozen=True)
class KeyPair:
    public_pem: str  # SubjectPublicKeyInfo PEM: what device makers are given
    private_pem: bytes  # PKCS#8 PEM, unencrypted: encrypt it before storing


def generate_key_pair() -> KeyPair:
    key = rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=KEY_BITS)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return KeyPair(public_pem_of(key.public_key()), private_pem)


def public_pem_of(key: rsa.RSAPublicKey) -> str:
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def derived_fernet(secret: bytes, info: str) -> Fernet:
    """A Fernet key derived from the installation's secret for one purpose and one row (`info`):
    a ciphertext copied onto another row does not decrypt there."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info.encode())
    return Fernet(base64.urlsafe_b64encode(derived.derive(secret)))


def _fernet(secret: bytes, product_key: str) -> Fernet:
    return derived_fernet(secret, f"ota secure-update private key:{product_key}")


def encrypt_private_key(private_pem: bytes, secret: bytes, product_key: str) -> str:
    """Fernet (AES-128-CBC + HMAC-SHA256) over the PEM, keyed per product by HKDF."""
    token = _fernet(secret, product_key).encrypt(private_pem).decode()
    return f"{ENCRYPTION_FORMAT}:{token}"


def decrypt_private_key(stored: str, secret: bytes, product_key: str) -> rsa.RSAPrivateKey:
    fmt, _, token = stored.partition(":")
    if fmt != ENCRYPTION_FORMAT or not token:
        raise SigningError(f"product {product_key}: unknown private key format {fmt!r}")
    try:
        pem = _fernet(secret, product_key).decrypt(token.encode())
    except InvalidToken:
        raise SigningError(
            f"product {product_key}: its signing key does not decrypt with this installation's "
            "secret (OTA_KEY_ENCRYPTION_SECRET or OTA_HOME/key-secret changed?)"
        ) from None
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningError(f"product {product_key}: the stored key is not an RSA key")
    return key


def load_public_key(pem: bytes | str) -> rsa.RSAPublicKey:
    """An RSA public key of at least 2048 bits from PEM; SigningError otherwise."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SigningError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < KEY_BITS:
        raise SigningError(f"secure update needs an RSA public key of {KEY_BITS} bits or more")
    return key


def fingerprint(public_pem: str | bytes) -> str:
    """SHA-256 of the DER public key, hex: names a key in logs, caches and the CLI."""
    der = load_public_key(public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _sign_bytes(sign: str) -> bytes:
    """The raw digest the signature covers: `sign` hex-decoded (case does not matter)."""
    try:
        raw = bytes.fromhex(sign)
    except ValueError:
        raise SigningError("sign must be a hex digest") from None
    if len(raw) not in (16, 32):  # Md5 or SHA256, as AliOS Things accepts
        raise SigningError("sign must be an MD5 or SHA-256 hex digest")
    return raw


def digestsign(private_key: rsa.RSAPrivateKey, sign: str) -> str:
    """PROTOCOL.md's digestsign of a firmware whose hex digest is `sign`."""
    signature = private_key.sign(_sign_bytes(sign), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode()


def verify_digestsign(public_key: rsa.RSAPublicKey, sign: str, signature_b64: str) -> bool:
    """True only if `signature_b64` is the product key's digestsign of `sign`."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        raw = _sign_bytes(sign)
    except (binascii.Error, ValueError, SigningError):
        return False
    try:
        public_key.verify(signature, raw, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def find_public_key(image: bytes) -> bytes | None:
    """The first PEM public key embedded in a firmware image: how a key-rotation carrier
    brings a device its new key (inside the signed image, never in unsigned extData)."""
    found = _PEM_PUBLIC.search(image)
    return found.group(0) if found else None
