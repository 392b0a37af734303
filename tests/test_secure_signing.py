"""digestsign as AliOS Things checks it, keys at rest, and the SDK's check (no services needed)."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ota import signing
from ota.device.sdk import Device, SecureUpdateError
from ota.protocol import Upgrade

# DER prefix of DigestInfo{sha256, digest} (RFC 8017 9.2 note 1): what PKCS#1 v1.5 wraps.
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


@pytest.fixture(scope="module")
def pair() -> tuple[signing.KeyPair, rsa.RSAPrivateKey]:
    kp = signing.generate_key_pair()
    key = signing.decrypt_private_key(
        signing.encrypt_private_key(kp.private_pem, b"s", "pk"), b"s", "pk"
    )
    return kp, key


@pytest.mark.parametrize(
    "sign", [hashlib.md5(b"fw").hexdigest(), hashlib.sha256(b"fw").hexdigest()]
)
def test_digestsign_is_pkcs1_v15_over_sha256_of_the_raw_sign(pair, sign):
    """Recompute what ota_verify_download_rsa_sign checks, with nothing but integers: the
    signature, raised to e mod n, must be the PKCS#1 v1.5 block of SHA256(bytes.fromhex(sign))."""
    kp, key = pair
    signature = base64.b64decode(signing.digestsign(key, sign))
    numbers = signing.load_public_key(kp.public_pem).public_numbers()
    assert (numbers.e, numbers.n.bit_length()) == (65537, 2048)
    assert len(signature) == 256
    block = pow(int.from_bytes(signature, "big"), numbers.e, numbers.n).to_bytes(256, "big")
    digest = hashlib.sha256(bytes.fromhex(sign)).digest()
    tail = SHA256_DIGEST_INFO + digest
    assert block == b"\x00\x01" + b"\xff" * (256 - 3 - len(tail)) + b"\x00" + tail
    # The same digest whether the wire carries upper or lower case hex.
    assert signing.digestsign(key, sign.upper()) == signing.digestsign(key, sign)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_verifies_our_digestsign(pair, tmp_path: Path):
    """An independent implementation: `openssl dgst -sha256 -verify` over the raw digest."""
    kp, key = pair
    sign = hashlib.md5(b"firmware").hexdigest()
    (tmp_path / "pub.pem").write_text(kp.public_pem)
    (tmp_path / "raw").write_bytes(bytes.fromhex(sign))
    (tmp_path / "sig").write_bytes(base64.b64decode(signing.digestsign(key, sign)))
    cmd = ["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem")]
    ok = subprocess.run([*cmd, "-signature", str(tmp_path / "sig"), str(tmp_path / "raw")])
    assert ok.returncode == 0
    (tmp_path / "raw").write_bytes(bytes.fromhex(hashlib.md5(b"other").hexdigest()))
    bad = subprocess.run(
        [*cmd, "-signature", str(tmp_path / "sig"), str(tmp_path / "raw")], capture_output=True
    )
    assert bad.returncode != 0


def test_verify_rejects_every_tampering(pair):
    kp, key = pair
    public = signing.load_public_key(kp.public_pem)
    sign = hashlib.md5(b"fw").hexdigest()
    good = signing.digestsign(key, sign)
    assert signing.verify_digestsign(public, sign, good)
    raw = bytearray(base64.b64decode(good))
    raw[100] ^= 1
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for forged_sign, forged in [
        (hashlib.md5(b"evil").hexdigest(), good),  # the file (and its sign) replaced
        (sign, base64.b64encode(bytes(raw)).decode()),  # one bit of the signature
        (sign, signing.digestsign(other_key, sign)),  # signed by someone else's key
        (sign, "not base64!"),
        (sign, ""),
        ("zz" * 16, good),
    ]:
        assert not signing.verify_digestsign(public, forged_sign, forged)


def test_private_key_is_encrypted_per_installation_and_product(pair):
    kp, _ = pair
    stored = signing.encrypt_private_key(kp.private_pem, b"install-secret", "pkA")
    assert stored.startswith(signing.ENCRYPTION_FORMAT + ":")
    # No part of the key in the clear. (Not "MII", the PEM body's usual start: three given
    # letters turn up by chance in ~1% of Fernet tokens this long, which made this test flaky.)
    pem_lines = kp.private_pem.decode().splitlines()[1:-1]
    assert b"PRIVATE KEY" not in stored.encode()
    assert not any(line in stored for line in pem_lines)
    key = signing.decrypt_private_key(stored, b"install-secret", "pkA")
    assert signing.public_pem_of(key.public_key()) == kp.public_pem
    with pytest.raises(signing.SigningError, match="does not decrypt"):
        signing.decrypt_private_key(stored, b"another-secret", "pkA")
    with pytest.raises(signing.SigningError, match="does not decrypt"):
        signing.decrypt_private_key(stored, b"install-secret", "pkB")  # copied to another row
    with pytest.raises(signing.SigningError, match="format"):
        signing.decrypt_private_key(kp.private_pem.decode(), b"install-secret", "pkA")


def test_public_keys_must_be_rsa_2048_and_are_found_inside_images(pair):
    kp, _ = pair
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(signing.SigningError, match="2048"):
        signing.load_public_key(signing.public_pem_of(small.public_key()))
    with pytest.raises(signing.SigningError, match="PEM"):
        signing.load_public_key("nonsense")
    image = b"\x7fELF" + b"\0" * 100 + kp.public_pem.encode() + b"\0" * 100
    assert signing.find_public_key(image) == kp.public_pem.encode().strip()
    assert signing.find_public_key(b"\x7fELF no key") is None


def _upgrade(sign: str, digestsign: str | None) -> Upgrade:
    return Upgrade("1", "2.0.0", "http://x/fw.bin", 10, sign, "Md5", digestsign=digestsign)


def test_sdk_verify_secure(pair):
    kp, key = pair
    sign = hashlib.md5(b"fw").hexdigest()
    device = Device("pk", "dn", public_key=kp.public_pem)
    device.verify_secure(_upgrade(sign, signing.digestsign(key, sign)))
    with pytest.raises(SecureUpdateError, match="no digestsign"):
        device.verify_secure(_upgrade(sign, None))
    with pytest.raises(SecureUpdateError, match="does not verify"):
        device.verify_secure(_upgrade(hashlib.md5(b"x").hexdigest(), signing.digestsign(key, sign)))
    Device("pk", "dn").verify_secure(_upgrade(sign, None))  # no key configured: nothing to check
    device.public_key = b"not a key"
    with pytest.raises(SecureUpdateError, match="unusable"):
        device.verify_secure(_upgrade(sign, signing.digestsign(key, sign)))
