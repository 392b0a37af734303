"""Health: the probes against the real services, /healthz and /readyz on the API, the worker
and the bridge, `ota doctor`, and `ota temporal setup` on a fresh namespace."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client
from typer.testing import CliRunner

from ota.context import Context
from ota.ops.checks import Check
from ota.ops.probes import Probes
from ota.settings import Settings
from starter.cli import app
from tests.fixtures.mqtt import SecureBroker
from tests.fixtures.net import free_port
from tests.fixtures.s3 import S3Server, s3_settings

SECRETS = ("tok-secret-123", "pg-secret-456", "mq-secret-789", "s3-secret-0ab")


def address(client: Client) -> str:
    return client.service_client.config.target_host


def good(tmp_path: Path, database_url: str, temporal: Client, mqtt_url: str, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "home": tmp_path / "home",
        "database_url": database_url,
        "storage_url": str(tmp_path / "firmware"),
        "temporal_address": address(temporal),
        "mqtt_url": mqtt_url,
        "broker_auth": "none",  # the machine's Mosquitto is anonymous
        "task_queue": f"health-{uuid.uuid4().hex[:8]}",
    }
    return Settings(**(values | kw))


def variant(settings: Settings, changes: dict[str, Any]) -> Settings:
    """Fresh settings (a copy would keep the original's cached resolved_* values)."""
    return Settings(**(settings.model_dump() | changes))


async def probe(settings: Settings, name: str) -> Check:
    return await getattr(Probes(Context(settings)), name)()


def assert_fails(check: Check, component: str, *in_hint: str) -> None:
    assert not check.ok, check
    assert check.component == component
    for words in in_hint:
        assert words in check.hint, check


# -- the probes ----------------------------------------------------------------------------------


async def test_every_probe_passes_on_a_working_installation(
    tmp_path, database_url, temporal_env, mqtt_url
):
    settings = good(tmp_path, database_url, temporal_env.client, mqtt_url)
    probes = Probes(Context(settings))
    for name in ("database", "temporal", "search_attributes", "broker", "storage"):
        check = await getattr(probes, name)()
        assert check.ok and check.component == name, check
    db = await probes.database()
    assert db.detail.startswith("PostgreSQL" if "postgresql" in database_url else "SQLite")
    assert "namespace default" in (await probes.temporal()).detail
    assert "OtaBatchId" in (await probes.search_attributes()).detail


async def test_a_wrong_database_url_fails_with_the_setting_and_without_its_password(tmp_path):
    port = free_port()
    settings = Settings(
        home=tmp_path, database_url=f"postgresql://ota:pg-secret-456@127.0.0.1:{port}/ota"
    )
    check = await probe(settings, "database")
    assert_fails(check, "database", "OTA_DATABASE_URL")
    assert f"PostgreSQL at ota@127.0.0.1:{port}/ota" in check.detail
    assert "pg-secret-456" not in check.detail + check.hint


async def test_a_database_that_is_not_there_yet_is_created_at_start(tmp_path):
    check = await probe(Settings(home=tmp_path / "new"), "database")
    assert check.ok and "not created yet" in check.detail
    assert not (tmp_path / "new").exists()  # the doctor looks, it does not create


async def test_temporal_on_a_wrong_port_or_a_missing_namespace(tmp_path, temporal_env):
    nowhere = Settings(home=tmp_path, temporal_address=f"127.0.0.1:{free_port()}")
    assert_fails(await probe(nowhere, "temporal"), "temporal", "ota dev", "OTA_TEMPORAL_ADDRESS")
    assert_fails(await probe(nowhere, "search_attributes"), "search_attributes")
    far = Settings(home=tmp_path, temporal_address="temporal.invalid:7233")
    assert "OTA_TEMPORAL_API_KEY" in (await probe(far, "temporal")).hint
    missing = Settings(
        home=tmp_path, temporal_address=address(temporal_env.client), temporal_namespace="nope"
    )
    check = await probe(missing, "temporal")
    assert_fails(check, "temporal", "temporal operator namespace create", "OTA_TEMPORAL_NAMESPACE")
    assert "no such namespace" in check.detail


async def test_the_broker_on_a_wrong_port(tmp_path):
    settings = Settings(home=tmp_path, mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    assert_fails(await probe(settings, "broker"), "broker", "OTA_MQTT_URL", "ota dev")


@pytest.mark.parametrize("secure_broker", ["plugin"], indirect=True)
async def test_a_broker_that_checks_devices(tmp_path, secure_broker: SecureBroker, mqtt_url):
    settings = Settings(home=tmp_path, **secure_broker.settings())  # type: ignore[arg-type]
    assert (await probe(settings, "broker")).ok
    identity = await probe(settings, "device_identity")
    assert identity.ok and "ota_auth answers" in identity.detail, identity
    # Another installation's secret: the broker refuses the services' derived passwords.
    wrong = variant(settings, {"mqtt_service_secret": "mq-secret-789"})
    check = await probe(wrong, "broker")
    assert_fails(check, "broker", "OTA_MQTT_SERVICE_SECRET", "ota broker sync")
    assert "mq-secret-789" not in check.detail
    # A broker that lets anyone in does not check devices, whatever OTA_BROKER_AUTH says.
    anonymous = Settings(home=tmp_path, mqtt_url=mqtt_url, broker_auth="plugin")
    assert_fails(await probe(anonymous, "device_identity"), "device_identity", "ota broker config")


async def test_storage_a_missing_bucket_a_dead_s3_and_presigned_urls(tmp_path, s3_server: S3Server):
    s3 = s3_settings(s3_server, tmp_path)
    ok = await probe(variant(s3, {"s3_direct_urls": True}), "storage")
    assert ok.ok and "presigned URLs accepted" in ok.detail, ok
    no_bucket = variant(s3, {"storage_url": f"s3://missing-{uuid.uuid4().hex[:8]}/fw"})
    check = await probe(no_bucket, "storage")
    assert_fails(check, "storage", "create the bucket")
    dead = variant(s3, {"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    assert_fails(await probe(dead, "storage"), "storage", "OTA_S3_ENDPOINT_URL")
    wrong_key = variant(s3, {"s3_secret": "s3-secret-0ab"})
    check = await probe(wrong_key, "storage")
    assert_fails(check, "storage", "OTA_S3_SECRET")
    assert "s3-secret-0ab" not in check.detail


async def test_a_folder_store_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    settings = Settings(home=tmp_path, storage_url=str(blocker))
    assert_fails(await probe(settings, "storage"), "storage", "OTA_STORAGE_URL")


# -- /healthz and /readyz ------------------------------------------------------------------------


async def test_the_api_is_ready_when_its_dependencies_answer(
    tmp_path, database_url, temporal_env, mqtt_url
):
    settings = good(tmp_path, database_url, temporal_env.client, mqtt_url, api_token="t")
    transport = httpx.ASGITransport(app=_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://ota.test") as http:
        assert (await http.get("/healthz")).json() == {"alive": True}
        ready = await http.get("/readyz")  # no token
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["ready"] is True
        assert [c["component"] for c in body["checks"]] == [
            "database",
            "temporal",
            "broker",
            "storage",
        ]
        assert "/readyz" not in (await http.get("/openapi.json")).text


async def test_the_api_is_not_ready_when_temporal_is_away(tmp_path, database_url, mqtt_url):
    settings = Settings(
        home=tmp_path,
        database_url=database_url,
        temporal_address=f"127.0.0.1:{free_port()}",
        mqtt_url=mqtt_url,
        broker_auth="none",
        api_token="t",
    )
    transport = httpx.ASGITransport(app=_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://ota.test") as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        failed = [c for c in ready.json()["checks"] if not c["ok"]]
        assert [c["component"] for c in failed] == ["temporal"]
        assert "OTA_TEMPORAL_ADDRESS" in failed[0]["hint"]


def _app(settings: Settings):  # type: ignore[no-untyped-def]
    from ota.api.app import create_app

    return create_app(settings)


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, want: int = 200) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        answer = _get(url)
        if answer is not None and answer.status_code == want:
            return answer.json()  # type: ignore[no-any-return]
        time.sleep(0.3)
    raise AssertionError(
        f"{url} never answered {want}: {answer and answer.text}\n{log.read_text()}"
    )


def test_the_worker_and_the_bridge_serve_their_readiness(tmp_path, temporal_env, forgetful_broker):
    """Real processes, on a broker of the test's own (the bridge listens to every device)."""
    worker_port, bridge_port = free_port(), free_port()
    env = {
        **os.environ,
        "OTA_HOME": str(tmp_path / "home"),
        "OTA_TEMPORAL_ADDRESS": address(temporal_env.client),
        "OTA_TASK_QUEUE": f"health-{uuid.uuid4().hex[:8]}",
        "OTA_MQTT_URL": forgetful_broker.url,
        "OTA_BROKER_AUTH": "none",
        "OTA_WORKER_METRICS_PORT": str(worker_port),
        "OTA_BRIDGE_METRICS_PORT": str(bridge_port),
        "OTA_BRIDGE_SESSION_EXPIRY_SECONDS": "10",
    }
    procs = {}
    try:
        for name in ("worker", "bridge"):
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "starter", name], env=env, stdout=log, stderr=log
            )
        for name, port in (("worker", worker_port), ("bridge", bridge_port)):
            url = f"http://127.0.0.1:{port}"
            body = _wait_ready(f"{url}/readyz", procs[name], tmp_path / f"{name}.log")
            assert [c["component"] for c in body["checks"]] == ["database", "temporal", "broker"]
            assert httpx.get(f"{url}/healthz").json() == {"alive": True}
            assert httpx.get(f"{url}/metrics").status_code == 200
        bridge = next(c for c in body["checks"] if c["component"] == "broker")
        assert bridge["detail"].startswith("connected to")
        # The broker goes: the bridge knows from its own session, the worker from a new one.
        forgetful_broker.kill()
        for name, port in (("worker", worker_port), ("bridge", bridge_port)):
            url = f"http://127.0.0.1:{port}/readyz"
            body = _wait_ready(url, procs[name], tmp_path / f"{name}.log", want=503)
            failed = [c["component"] for c in body["checks"] if not c["ok"]]
            assert failed == ["broker"], body
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(30)


# -- ota doctor and ota temporal setup --------------------------------------------------------


def run_ota(env: dict[str, str], *args: str) -> Any:
    """`ota <args>` with these OTA_* variables only (the session's own are unset)."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("OTA_")}
    return CliRunner().invoke(app, list(args), env={**unset, **env})


def test_doctor_passes_on_a_working_installation(tmp_path, temporal_env, mqtt_url):
    env = {
        "OTA_HOME": str(tmp_path / "home"),
        "OTA_TEMPORAL_ADDRESS": address(temporal_env.client),
        "OTA_MQTT_URL": mqtt_url,
        "OTA_BROKER_AUTH": "none",
        "OTA_API_TOKEN": "tok-secret-123",
    }
    result = run_ota(env, "doctor")
    assert result.exit_code == 0, result.output
    assert "all checks pass" in result.output
    assert "tok-secret-123" not in result.output
    lines = {line.split()[1]: line.split()[0] for line in result.output.splitlines()[:9] if line}
    assert lines["temporal"] == "ok" and lines["search_attributes"] == "ok"
    data = json.loads(run_ota(env, "doctor", "--json").output)
    assert data["ok"] is True


def test_doctor_names_each_broken_component_and_keeps_secrets(tmp_path):
    env = {
        "OTA_HOME": str(tmp_path / "home"),
        "OTA_API_TOKEN": "tok-secret-123",
        "OTA_DATABASE_URL": f"postgresql://ota:pg-secret-456@127.0.0.1:{free_port()}/ota",
        "OTA_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "OTA_MQTT_URL": f"mqtt://ota:mq-secret-789@127.0.0.1:{free_port()}",
        "OTA_STORAGE_URL": "s3://firmware/ota",
        "OTA_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "OTA_S3_KEY": "key",
        "OTA_S3_SECRET": "s3-secret-0ab",
    }
    result = run_ota(env, "doctor")
    assert result.exit_code == 1, result.output
    for secret in SECRETS:
        assert secret not in result.output
    data = json.loads(run_ota(env, "doctor", "--json").output)
    failed = {c["component"]: c["hint"] for c in data["checks"] if not c["ok"]}
    assert set(failed) >= {"database", "temporal", "search_attributes", "broker", "storage"}
    assert "OTA_DATABASE_URL" in failed["database"]
    assert "OTA_MQTT_URL" in failed["broker"]
    assert "OTA_S3_ENDPOINT_URL" in failed["storage"]
    for secret in SECRETS:
        assert secret not in json.dumps(data)


def test_doctor_names_a_setting_that_does_not_parse(tmp_path):
    result = run_ota({"OTA_HOME": str(tmp_path), "OTA_BROKER_AUTH": "maybe"}, "doctor")
    assert result.exit_code == 1
    assert "FAIL  settings" in result.output and "OTA_BROKER_AUTH" in result.output


async def _fresh_namespace(client: Client) -> str:
    name = f"health-{uuid.uuid4().hex[:8]}"
    await client.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=name, workflow_execution_retention_period=Duration(seconds=86400)
        )
    )
    return name


def test_temporal_setup_registers_the_search_attributes_once(tmp_path, temporal_env):
    namespace = asyncio.run(_fresh_namespace(temporal_env.client))
    env = {
        "OTA_HOME": str(tmp_path / "home"),
        "OTA_TEMPORAL_ADDRESS": address(temporal_env.client),
        "OTA_TEMPORAL_NAMESPACE": namespace,
    }
    settings = Settings(
        home=tmp_path, temporal_address=env["OTA_TEMPORAL_ADDRESS"], temporal_namespace=namespace
    )
    before = _eventually(lambda: asyncio.run(probe(settings, "search_attributes")), "lacks")
    assert_fails(before, "search_attributes", "ota temporal setup")
    first = run_ota(env, "temporal", "setup")
    assert first.exit_code == 0, first.output
    assert (
        f"registered OtaBatchId, OtaProductKey, OtaState in namespace {namespace}" in first.output
    )
    again = _eventually(lambda: run_ota(env, "temporal", "setup").output, "all there")
    assert namespace in again
    assert asyncio.run(probe(settings, "search_attributes")).ok


def _eventually(get, want: str, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """A new namespace, and new search attributes, reach the server's caches within seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        text = value if isinstance(value, str) else value.detail
        if want in text or time.monotonic() > deadline:
            return value
        time.sleep(0.5)
