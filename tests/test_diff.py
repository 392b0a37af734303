"""`ota firmware diff`: packages made on the server from two full images, what they save on a
realistic pair (two gcc builds), what is refused, and applying them as a device does."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import bsdiff4
import pytest
from typer.testing import CliRunner

from ota.device.download import VerifyFailed, apply_diff
from ota.device.simulator import synth_image
from ota.errors import Conflict, InvalidInput
from ota.services import products
from ota.services.diff import create_diff
from ota.services.firmware import add_firmware, diff_summary, firmware_public
from ota.settings import Settings
from ota.storage import FirmwareStore
from starter.cli import app


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, storage_url=str(tmp_path / "fw"))


@pytest.fixture
def store(settings) -> FirmwareStore:
    return FirmwareStore(settings)


def full(engine, store, settings, content: bytes, version: str, module: str = "default", pk="pk1"):
    return add_firmware(
        engine, store, settings, src=io.BytesIO(content), file_name=f"fw-{version}.bin",
        product_key=pk, name=f"fw_{version.replace('.', '_')}", version=version, module=module,
        sign_method="SHA256",
    )  # fmt: skip


def c_program(changed: set[int], banner: str) -> str:
    """300 small functions, as a firmware's code is many of them; `changed` get a new body."""
    lines = ["#include <stdio.h>"]
    for i in range(300):
        k = i * 7 + 3
        if i in changed:
            body = f"int s = {k}; for (int j = 0; j < n; j++) {{ s = s * 33 + j * {k + 5};"
            body += f" if (s % 7 == 0) s ^= {i}; }} return s + n;"
        else:
            body = f"int s = {k}; for (int j = 0; j < n; j++) s = s * 31 + j; return s ^ {i};"
        lines.append(f"int f{i}(int n) {{ {body} }}")
    lines.append(f'static const char *banner = "{banner}";')
    calls = " ".join(f"t += f{i}(argc + {i % 5});" for i in range(300))
    lines.append(f"int main(int argc, char **argv) {{ int t = 0; puts(banner); {calls} ")
    lines.append('printf("%d\\n", t); return 0; }')
    return "\n".join(lines)


def gcc_build(tmp_path: Path, name: str, source: str) -> bytes:
    """Statically linked when the libc allows it (a monolithic image, like firmware)."""
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / name
    for static in (["-static"], []):
        done = subprocess.run(
            ["gcc", "-O2", *static, "-o", str(out), str(src)], capture_output=True
        )
        if done.returncode == 0:
            return out.read_bytes()
    raise AssertionError(done.stderr.decode())


@pytest.fixture(scope="module")
def gcc_builds(tmp_path_factory) -> tuple[bytes, bytes]:
    """Two builds of one program, three of its 300 functions changed (built once per module)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    where = tmp_path_factory.mktemp("gcc")
    old = gcc_build(where, "v1", c_program(set(), "firmware 1.0.0"))
    new = gcc_build(where, "v2", c_program({17, 140, 255}, "firmware 1.1.0"))
    return old, new


def test_diff_of_two_gcc_builds_saves_most_of_the_image(engine, store, settings, gcc_builds):
    products.add_product(engine, "pk1", "Thermostat")
    old, new = gcc_builds
    a = full(engine, store, settings, old, "1.0.0")
    b = full(engine, store, settings, new, "1.1.0")
    result = create_diff(engine, store, settings, a.id, b.id)  # type: ignore[arg-type]
    fw = result.firmware
    ratio = fw.size / len(new)
    print(
        f"\ngcc builds: {len(old):,} -> {len(new):,} bytes; diff {fw.size:,} bytes "
        f"({100 * ratio:.1f}% of the target, {result.saved_bytes:,} saved) in {result.seconds:.2f}s"
    )
    assert ratio < 0.2
    assert (fw.type, fw.src_versions, fw.version, fw.module) == (
        "diff",
        ["1.0.0"],
        "1.1.0",
        "default",
    )
    assert fw.file_name == "fw_1_1_0-1.0.0-to-1.1.0.bin" and fw.name == "fw_1_1_0_diff"
    assert fw.sign_method == "SHA256" and fw.state == "unverified"
    assert fw.ext_data == {
        "targetSha256": hashlib.sha256(new).hexdigest(),
        "targetSize": len(new),
        "_diff_from": a.id,
        "_diff_to": b.id,
        "_diff_algorithm": "bsdiff4",
        "_saved_bytes": len(new) - fw.size,
    }
    shown = firmware_public(fw)
    assert shown["diff"] == diff_summary(fw)
    assert shown["diff"]["saved_bytes"] == len(new) - fw.size
    # What is stored is what a device downloads: it rebuilds the new image exactly.
    with store.open(fw.storage_key) as f:
        package = f.read()
    assert hashlib.sha256(package).hexdigest() == fw.sha256
    assert apply_diff(old, package, fw.ext_data) == new


def test_simulated_images_differ_like_builds(engine, store, settings):
    products.add_product(engine, "pk1", "Thermostat")
    one, two = synth_image("default", "1.0.0"), synth_image("default", "2.0.0")
    assert one == synth_image("default", "1.0.0") and one != two and len(one) == len(two)
    a = full(engine, store, settings, one, "1.0.0")
    b = full(engine, store, settings, two, "2.0.0")
    fw = create_diff(engine, store, settings, a.id, b.id, name="sim_diff").firmware  # type: ignore[arg-type]
    print(f"\nsynthesized images: {len(two):,} bytes; diff {fw.size:,} bytes")
    assert fw.size < len(two) * 0.1 and fw.name == "sim_diff"


def test_what_cannot_be_diffed_is_refused_before_anything_is_stored(engine, store, settings):
    products.add_product(engine, "pk1", "Thermostat")
    products.add_product(engine, "pk2", "Other")
    a = full(engine, store, settings, b"\x7fELF" + b"a" * 5000, "1.0.0")
    b = full(engine, store, settings, b"\x7fELF" + b"b" * 5000, "2.0.0")
    same = full(engine, store, settings, b"\x7fELF" + b"c" * 5000, "1.0.0", module="wifi")
    wifi = full(engine, store, settings, b"\x7fELF" + b"d" * 5000, "2.0.0", module="wifi")
    other = full(engine, store, settings, b"\x7fELF" + b"e" * 5000, "3.0.0", pk="pk2")
    diff = create_diff(engine, store, settings, a.id, b.id).firmware  # type: ignore[arg-type]
    keys = store.keys()
    for src, dst, field, message in [
        (a.id, wifi.id, "to", "one product and module"),
        (a.id, other.id, "to", "one product and module"),
        (diff.id, b.id, "from", "both ends must be full"),
        (a.id, diff.id, "to", "both ends must be full"),
        (a.id, a.id, "to", "another firmware"),
        (same.id, same.id, "to", "another firmware"),
    ]:
        with pytest.raises(InvalidInput, match=message) as err:
            create_diff(engine, store, settings, src, dst)  # type: ignore[arg-type]
        assert err.value.field == field
    with pytest.raises(InvalidInput, match="up to 4,096 bytes") as err:
        create_diff(engine, store, settings, a.id, b.id, max_bytes=4096)  # type: ignore[arg-type]
    assert "offline" in err.value.message
    Path(store.path(b.storage_key)).write_bytes(b"\x7fELF" + b"X" * 5000)  # damaged at rest
    with pytest.raises(Conflict, match="does not match its record"):
        create_diff(engine, store, settings, a.id, b.id)  # type: ignore[arg-type]
    assert store.keys() == keys


def test_applying_a_package_checks_the_result():
    old, new = synth_image("m", "1"), synth_image("m", "2")
    package = bsdiff4.diff(old, new)
    ext = {"targetSha256": hashlib.sha256(new).hexdigest(), "targetSize": len(new)}
    assert apply_diff(old, package, ext) == new
    with pytest.raises(VerifyFailed, match="targetSha256"):  # another installed image
        apply_diff(synth_image("m", "0.9"), package, ext)
    with pytest.raises(VerifyFailed, match="bytes, not"):
        apply_diff(old, package, ext | {"targetSize": 5})
    with pytest.raises(VerifyFailed, match="does not apply"):
        apply_diff(old, b"not a bsdiff package", ext)
    assert apply_diff(old, package, None) == new  # an uploaded package without a digest


def test_cli_firmware_diff_and_show(tmp_path):
    runner = CliRunner()
    env = {"OTA_HOME": str(tmp_path / "home"), "OTA_DATABASE_URL": None, "OTA_STORAGE_URL": None}

    def ota(*args: str):
        return runner.invoke(app, [str(a) for a in args], env=env)

    assert ota("product", "add", "pk1", "--name", "T").exit_code == 0
    for version in ("1.0.0", "2.0.0"):
        image = tmp_path / f"sim-{version}.bin"
        made = ota("simulate", "--product", "pk1", "--version", version, "--export-image", image)
        assert made.exit_code == 0, made.output
        assert image.read_bytes() == synth_image("default", version)
        added = ota("firmware", "add", image, "-p", "pk1", "--name", "thermo", "--version", version)
        assert added.exit_code == 0, added.output
    made = ota("firmware", "diff", "--from", "1", "--to", "2", "--name", "thermo_d", "--json")
    assert made.exit_code == 0, made.output
    shown = json.loads(made.output)
    assert shown["type"] == "diff" and shown["src_versions"] == ["1.0.0"]
    assert shown["diff"]["saved_bytes"] > 0.9 * shown["diff"]["target_size"]
    text = ota("firmware", "diff", "--from", "1", "--to", "2").output
    assert "saves" in text and "%" in text
    show = ota("firmware", "show", shown["id"])
    assert "saved_bytes" in show.output and "targetSha256" in show.output
    bad = ota("firmware", "diff", "--from", "1", "--to", "1")
    assert bad.exit_code == 2 and "to:" in bad.output
    missing = ota("firmware", "diff", "--from", "1", "--to", "99")
    assert missing.exit_code == 2 and "not found" in missing.output
