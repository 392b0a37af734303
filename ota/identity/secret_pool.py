"""Many devices' secrets made on every core: a registration of 100,000 devices encrypts each
secret under a key of its own (HKDF, then Fernet), 60 us a device on one core.

The helpers are `python -m ota.identity.secret_pool` subprocesses, each given its share of the
names (and the installation's key) on stdin, answering on stdout: unlike a multiprocessing
pool they never re-import the caller's main module, and they are safe to start from the API's
threads.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from ota.identity.credentials import encrypt_secret, new_device_secret

Made = tuple[str, str, str]  # (device name, DeviceSecret, its encryption)


def make_secrets(key_secret: bytes, product_key: str, names: list[str]) -> list[Made]:
    """A fresh secret for each name, and its encryption, in this process."""
    made = []
    for name in names:
        secret = new_device_secret()
        made.append((name, secret, encrypt_secret(secret, key_secret, product_key, name)))
    return made


def make_secrets_on_cores(
    key_secret: bytes, product_key: str, names: list[str], workers: int | None = None
) -> list[Made]:
    """make_secrets, the names shared among a subprocess per core; in the names' order."""
    workers = workers or os.cpu_count() or 1
    share = -(-len(names) // workers)
    shares = [names[i : i + share] for i in range(0, len(names), share)]
    key = base64.b64encode(key_secret).decode()
    with ThreadPoolExecutor(len(shares)) as threads:
        parts = threads.map(lambda s: _in_subprocess(key, product_key, s), shares)
        return [made for part in parts for made in part]


def _in_subprocess(key: str, product_key: str, names: list[str]) -> list[Made]:
    request = json.dumps({"key": key, "product_key": product_key, "names": names})
    done = subprocess.run(
        [sys.executable, "-m", __name__], input=request, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"making device secrets failed: {done.stderr.strip()[-500:]}")
    made = [tuple(row) for row in json.loads(done.stdout)]
    if [row[0] for row in made] != names:
        raise RuntimeError("making device secrets: the helper answered for other devices")
    return made  # type: ignore[return-value]


def main() -> None:
    request = json.load(sys.stdin)
    made = make_secrets(base64.b64decode(request["key"]), request["product_key"], request["names"])
    json.dump(made, sys.stdout)


if __name__ == "__main__":
    main()
