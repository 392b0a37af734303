"""Build ota_auth, our Mosquitto plugin, from the C source shipped in this package.

It needs a C compiler and the headers of Mosquitto's plugin API, OpenSSL and cJSON (Debian:
`apt-get install mosquitto-dev libssl-dev libcjson-dev`). Without them `build_plugin` says why
and returns None: the callers then fall back to Mosquitto's dynamic-security plugin.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "plugin" / "ota_auth.c"
FLAGS = ["-shared", "-fPIC", "-O2", "-Wall", "-Wextra"]
LIBS = ["-lcrypto", "-lcjson"]
PACKAGES = "mosquitto-dev libssl-dev libcjson-dev"


def plugin_name() -> str:
    """The built file's name: one per source and flags, so an upgrade rebuilds it."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS + LIBS).encode()).hexdigest()
    return f"ota_auth-{digest[:12]}.so"


def build_plugin(dest_dir: Path) -> Path | None:
    """The plugin built in `dest_dir` (reused when this source was built there before), or None
    with the reason logged."""
    target = dest_dir / plugin_name()
    if target.exists():
        return target
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.warning("cannot build the ota_auth broker plugin: no C compiler (cc)")
        return None
    dest_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    argv = [cc, *FLAGS, "-o", str(partial), str(SOURCE), *LIBS]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot build the ota_auth broker plugin: %s", exc)
        return None
    if done.returncode != 0:
        missing = "No such file" in done.stderr or "cannot find -l" in done.stderr
        log.warning(
            "cannot build the ota_auth broker plugin%s: %s",
            f" (headers or libraries missing: apt-get install {PACKAGES})" if missing else "",
            done.stderr.strip()[-1000:],
        )
        partial.unlink(missing_ok=True)
        return None
    partial.chmod(0o644)
    os.replace(partial, target)  # atomic: a concurrent build never loads half a file
    log.info("built the ota_auth broker plugin: %s", target)
    return target
