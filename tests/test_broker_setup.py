"""Setting up a broker's device identity: ota_auth built (once per source) or, where it cannot
be, the dynamic-security fallback; and the mosquitto.conf lines that load it."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from ota.devstack import mosquitto_conf
from ota.identity.accounts import ServiceRole, service_password
from ota.identity.broker_setup import USERS_FILE, broker_security, usable_broker_auth
from ota.identity.plugin_build import build_plugin, plugin_name
from ota.settings import Settings

SETTINGS = Settings(broker_auth="plugin", mqtt_service_secret="setup-test")


def test_the_plugin_is_built_once_per_source(tmp_path: Path):
    first = build_plugin(tmp_path)
    if first is None:
        pytest.skip("no compiler or headers here (scripts/test installs them)")
    assert first.name == plugin_name()
    built_at = first.stat().st_mtime_ns
    assert build_plugin(tmp_path) == first and first.stat().st_mtime_ns == built_at
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left


def test_without_a_compiler_it_says_why_and_falls_back_to_dynsec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with caplog.at_level(logging.WARNING):
        assert build_plugin(tmp_path / "plugin") is None
        assert usable_broker_auth(SETTINGS, tmp_path / "plugin") == "dynsec"
    assert "cannot build the ota_auth broker plugin" in caplog.text
    dynsec = Settings(broker_auth="dynsec", mqtt_service_secret="setup-test")
    assert usable_broker_auth(dynsec, tmp_path) == "dynsec"


def test_the_conf_loads_ota_auth_with_the_admins_salted_hash(tmp_path: Path):
    if build_plugin(tmp_path / "mosquitto") is None:
        pytest.skip("no compiler or headers here (scripts/test installs them)")
    settings = Settings(home=tmp_path, broker_auth="plugin", mqtt_service_secret="setup-test")
    lines = dict(
        line.split(" ", 1) for line in mosquitto_conf(tmp_path, "127.0.0.1", 1883, settings)
        .read_text().splitlines()
    )  # fmt: skip
    assert lines["allow_anonymous"] == "false"
    assert lines["plugin"] == str(tmp_path / "mosquitto" / plugin_name())
    assert lines["plugin_opt_users_file"] == str(tmp_path / "mosquitto" / USERS_FILE)
    assert lines["plugin_opt_admin_username"] == ServiceRole.ADMIN.value
    salt, digest = lines["plugin_opt_admin_password_sha256"].split(":")
    password = service_password(settings, ServiceRole.ADMIN).encode()
    assert hashlib.sha256(bytes.fromhex(salt) + password).hexdigest() == digest
    dynsec = broker_security(settings.model_copy(update={"broker_auth": "dynsec"}), tmp_path)
    assert dynsec.broker_auth == "dynsec" and "plugin_opt_config_file" in dynsec.lines
