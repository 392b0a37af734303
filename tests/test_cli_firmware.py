"""The `ota product|device|firmware` commands: exit codes, messages naming the field, --json."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starter.cli import app

ELF = b"\x7fELF" + bytes(range(256)) * 40


@pytest.fixture
def ota(tmp_path):
    """Run `ota ...` in-process against a fresh OTA_HOME; returns the click Result."""
    runner = CliRunner()
    env = {"OTA_HOME": str(tmp_path / "home"), "OTA_DATABASE_URL": None, "OTA_STORAGE_URL": None}
    env["OTA_BROKER_AUTH"] = "none"  # the machine's anonymous Mosquitto (identity: its own tests)

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args], env=env)

    return run


def flat(text: str) -> str:
    """Rich wraps long messages at the terminal width: compare with the wrapping undone."""
    return " ".join(text.split())


@pytest.fixture
def fw_file(tmp_path) -> Path:
    path = tmp_path / "thermo-2.0.0.bin"
    path.write_bytes(ELF)
    return path


@pytest.fixture
def product(ota) -> str:
    assert ota("product", "add", "pk1", "--name", "Thermostat").exit_code == 0
    return "pk1"


def stored_files(tmp_path) -> list[Path]:
    root = tmp_path / "home" / "firmware"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# --- products and devices -----------------------------------------------------------------------


def test_product_add_list_duplicate(ota):
    added = ota("product", "add", "pk1", "--name", "Thermostat", "--json")
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["product_key"] == "pk1"
    dup = ota("product", "add", "pk1", "--name", "Again")
    assert dup.exit_code == 2 and "product pk1 already exists" in flat(dup.stderr)
    bad = ota("product", "add", "bad key", "--name", "X")
    assert bad.exit_code == 2 and "product_key: must be 1 to 64" in flat(bad.stderr)
    listed = ota("product", "list", "--json")
    assert [p["name"] for p in json.loads(listed.stdout)] == ["Thermostat"]
    assert "Thermostat" in ota("product", "list").stdout


def test_device_add_import_list(ota, product, tmp_path):
    assert (
        ota("device", "add", "dev-0001", "--product", product, "--version", "1.0.0").exit_code == 0
    )
    good = tmp_path / "good.csv"
    good.write_text("name,version,module\ndev-0002,1.0.0\ndev-0003,1.1.0,wifi\n")
    result = ota("device", "import", good, "--product", product)
    assert result.exit_code == 0 and "imported 2 devices" in result.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("dev-0004,1.0\nno,1.0\n")
    result = ota("device", "import", bad, "--product", product)
    assert result.exit_code == 2
    assert "file: line 2: name must be 4 to 32" in flat(result.stderr)
    listed = json.loads(ota("device", "list", "--product", product, "--json").stdout)
    assert {d["name"]: d["versions"] for d in listed} == {
        "dev-0001": {"default": "1.0.0"},
        "dev-0002": {"default": "1.0.0"},
        "dev-0003": {"wifi": "1.1.0"},
    }
    table = ota("device", "list").stdout
    assert "wifi=1.1.0" in table and "dev-0003" in table
    missing = ota("device", "import", tmp_path / "nope.csv", "--product", product)
    assert missing.exit_code == 2 and "file: cannot read" in flat(missing.stderr)
    dup = ota("device", "add", "dev-0001", "--product", product)
    assert dup.exit_code == 2 and "already exists" in dup.stderr


# --- firmware -----------------------------------------------------------------------------------


def test_firmware_add_json(ota, product, fw_file):
    result = ota(
        "firmware", "add", fw_file, "--product", product, "--name", "thermo_fw",
        "--version", "2.0.0", "--sign-method", "sha256", "--description", "spring", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["id"] >= 1 and data["size"] == len(ELF)
    assert data["sign_method"] == "SHA256" and data["sign"] == hashlib.sha256(ELF).hexdigest()
    assert data["md5"] == hashlib.md5(ELF).hexdigest()
    assert data["state"] == "unverified" and data["description"] == "spring"
    shown = json.loads(ota("firmware", "show", data["id"], "--json").stdout)
    assert shown == data
    table = ota("firmware", "list").stdout
    assert "thermo_fw" in table and "2.0.0" in table


def test_firmware_list_in_a_narrow_terminal_is_one_firmware_a_line(
    ota, product, fw_file, monkeypatch
):
    """80 columns would cut "unverified" to "unver…": one whole firmware a line instead."""
    ota(
        "firmware", "add", fw_file, "--product", product, "--name", "thermo_fw_long_name",
        "--version", "2.0.0-rc.1", "--module", "default",
    )  # fmt: skip
    monkeypatch.setenv("COLUMNS", "200")
    wide = ota("firmware", "list").stdout
    assert "┃ id" in wide and "unverified" in wide
    monkeypatch.setenv("COLUMNS", "40")
    narrow = ota("firmware", "list").stdout
    assert "…" not in narrow and "┃" not in narrow
    assert f"{product}/default thermo_fw_long_name 2.0.0-rc.1 (full, " in narrow
    assert narrow.rstrip().endswith(": unverified")


def test_the_same_firmware_twice_exits_2_naming_the_first(ota, product, fw_file):
    """Not a second thermo_fw 2.0.0: `ota batch create thermo_fw` would not know which."""
    args = ("firmware", "add", fw_file, "--product", product, "--name", "thermo_fw")
    first = ota(*args, "--version", "2.0.0", "--json")
    assert first.exit_code == 0, first.output
    twin = ota(*args, "--version", "2.0.0")
    assert twin.exit_code == 2, twin.output
    fw_id = json.loads(first.stdout)["id"]
    assert f"already has thermo_fw 2.0.0 as firmware {fw_id}" in flat(twin.stderr)
    assert len(json.loads(ota("firmware", "list", "--json").stdout)) == 1
    second = ota(*args, "--version", "2.0.1", "--json")
    assert second.exit_code == 0, second.output
    # One name for two versions is allowed; a batch by that name lists them.
    result = ota("batch", "create", "thermo_fw", "--src-version", "1.0.0", "--dry-run")
    assert result.exit_code == 2, result.output
    second_id = json.loads(second.stdout)["id"]
    assert (
        f"firmware: name thermo_fw is ambiguous: give the firmware id: {fw_id} (pk1/default "
        f"2.0.0), {second_id} (pk1/default 2.0.1)"
    ) in flat(result.stderr)


def test_diff_firmware_and_no_verify(ota, product, fw_file):
    result = ota(
        "firmware", "add", fw_file, "--product", product, "--name", "thermo_diff", "--type", "diff",
        "--src-version", "1.0.0", "--src-version", "1.1.0", "--dest-version", "2.0.0",
        "--no-verify", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["type"], data["version"], data["src_versions"]) == (
        "diff", "2.0.0", ["1.0.0", "1.1.0"],
    )  # fmt: skip
    assert data["state"] == "verified"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "_thermo", "--version", "2.0.0"], "name: must be 4 to 32"),
        (["--name", "thermo_fw"], "version: is required for a full firmware"),
        (["--name", "thermo_fw", "--version", "2.0 beta"], "version: must be 1 to 64"),
        (["--name", "thermo_fw", "--version", "2", "--module", "WIFI"], "module: must be 1 to 64"),
        (
            ["--name", "thermo_fw", "--version", "2", "--type", "delta"],
            "type: must be full or diff",
        ),
        (["--name", "thermo_fw", "--type", "diff", "--dest-version", "2"], "src_versions:"),
        (["--name", "thermo_fw", "--version", "2", "--sign-method", "crc"], "sign_method: must be"),
        (["--name", "thermo_fw", "--version", "2", "--description", "d" * 101], "description:"),
    ],
)
def test_firmware_add_bad_input_exits_2(ota, product, fw_file, tmp_path, args, message):
    result = ota("firmware", "add", fw_file, "--product", product, *args)
    assert result.exit_code == 2
    assert message in flat(result.stderr)
    assert json.loads(ota("firmware", "list", "--json").stdout) == []
    assert stored_files(tmp_path) == []


def add_fw(ota, path, product: str = "pk1", *extra: str):
    """`ota firmware add` with a valid name and version unless extra options say otherwise."""
    valid = ("--product", product, "--name", "thermo_fw", "--version", "2")
    return ota("firmware", "add", path, *valid, *extra)


def test_firmware_add_file_problems_exit_2(ota, product, tmp_path):
    exe = tmp_path / "fw.exe"
    exe.write_bytes(ELF)
    result = add_fw(ota, exe)
    assert result.exit_code == 2 and "file: must be a .bin" in flat(result.stderr)
    fake_zip = tmp_path / "fw.zip"
    fake_zip.write_bytes(ELF)
    result = add_fw(ota, fake_zip)
    assert result.exit_code == 2
    assert "file: content does not match its extension .zip" in flat(result.stderr)
    result = add_fw(ota, tmp_path / "missing.bin")
    assert result.exit_code == 2 and "is not a readable file" in flat(result.stderr)
    assert stored_files(tmp_path) == []


def test_firmware_unknown_product_show_delete(ota, product, fw_file, tmp_path):
    result = add_fw(ota, fw_file, "nope")
    assert result.exit_code == 2 and "product nope not found" in result.stderr
    assert ota("firmware", "show", "42").exit_code == 2
    fw_id = json.loads(add_fw(ota, fw_file, product, "--json").stdout)["id"]
    assert len(stored_files(tmp_path)) == 1
    deleted = ota("firmware", "delete", fw_id)
    assert deleted.exit_code == 0 and f"deleted firmware {fw_id}" in deleted.stdout
    assert stored_files(tmp_path) == []
    again = ota("firmware", "delete", fw_id)
    assert again.exit_code == 2 and f"firmware {fw_id} not found" in again.stderr


def test_usage_errors_exit_2(ota, fw_file):
    assert ota("firmware", "add", fw_file, "--name", "thermo_fw").exit_code == 2  # no --product
    assert ota("firmware", "show", "not-a-number").exit_code == 2


def test_unexpected_errors_exit_1(tmp_path, fw_file):
    """Not the user's fault (here: no database at that address): exit 1, not 2."""
    env = {"OTA_HOME": str(tmp_path), "OTA_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}
    result = CliRunner().invoke(app, ["product", "list"], env=env)
    assert result.exit_code == 1


def test_the_installed_command(tmp_path, fw_file):
    """The real `ota` entry point, as a subprocess."""
    ota_bin = Path(sys.executable).with_name("ota")
    env = {**os.environ, "OTA_HOME": str(tmp_path / "home")}
    env.pop("OTA_DATABASE_URL", None)
    env.pop("OTA_STORAGE_URL", None)

    def run(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run(
            [ota_bin, *map(str, args)], env=env, capture_output=True, text=True, timeout=60
        )

    assert run("product", "add", "pk1", "--name", "Thermostat").returncode == 0
    valid = ("--product", "pk1", "--name", "thermo_fw", "--version", "2.0.0")
    added = run("firmware", "add", fw_file, *valid, "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["md5"] == hashlib.md5(ELF).hexdigest()
    bad = run("firmware", "add", fw_file, "--product", "pk1", "--name", "abc", "--version", "2")
    assert bad.returncode == 2 and "name:" in bad.stderr


def test_batch_create_without_temporal_says_so_and_registers_nothing(tmp_path):
    """No traceback, exit 1, and no batch left behind without a workflow."""
    env = {**os.environ, "OTA_HOME": str(tmp_path), "OTA_TEMPORAL_ADDRESS": "127.0.0.1:1"}
    ota = [sys.executable, "-m", "starter"]
    run = lambda *a: subprocess.run([*ota, *a], env=env, capture_output=True, text=True)  # noqa: E731
    assert run("product", "add", "pk_cli1", "--name", "P").returncode == 0
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"firmware")
    added = run("firmware", "add", str(fw), "--product", "pk_cli1", "--name", "fw_cli",
                "--version", "2.0", "--no-verify")  # fmt: skip
    assert added.returncode == 0, added.stderr
    result = run("batch", "create", "1", "--src-version", "1.0")
    assert result.returncode == 1
    assert "Temporal is not reachable at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(run("batch", "list", "--json").stdout) == []
