"""MQTT over TLS: the device SDK, the bridge and the worker's publisher all connect through
ota.mqtt to a broker that speaks only TLS and exchange an update's messages; a client that does
not trust the broker's CA is refused; with mTLS, so is a client without a certificate."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiomqtt
import httpx
import pytest

from activities.push import MqttPublisher
from ota import protocol
from ota.bridge import Bridge
from ota.device.sdk import Device
from ota.device.simulator import Fleet, FleetConfig
from ota.identity.accounts import ServiceRole, service_endpoint
from ota.mqtt import MqttEndpoint
from ota.push import upgrade_data
from tests.fixtures.tls import TlsBroker, make_pki
from tests.linkkit.seed import seed_fleet, versions
from tests.test_bridge import Recorder, bridge_settings, running, until
from tests.test_device_identity import online

IMAGE = b"firmware over tls " * 64


def serve(content: bytes) -> httpx.AsyncClient:
    """The device's HTTP client: the download is not what is tested here."""
    return httpx.AsyncClient(
        transport=httpx.MockTransport(lambda _: httpx.Response(200, content=content))
    )


async def connect(endpoint: MqttEndpoint, timeout: float = 10) -> None:
    async with endpoint.client(None, timeout=timeout) as client:
        await client.publish("ota/tls-test", b"hello", qos=1)


async def refused(endpoint: MqttEndpoint, broker: TlsBroker, reason: str) -> None:
    """The connection fails, and the broker's log says why. After a TLS 1.3 handshake the
    broker's verdict on the client certificate comes as an alert aiomqtt does not pass on (it
    ignores a disconnect before CONNACK): the client sees a timeout, so a short one."""
    seen = broker.log.stat().st_size
    with pytest.raises(aiomqtt.MqttError):
        await connect(endpoint, timeout=2)
    await until(lambda: reason in broker.log.read_text()[seen:], 5, f"broker log: {reason!r}")


async def test_device_bridge_and_worker_exchange_an_update_over_tls(
    sqlite_engine, tls_broker: TlsBroker, tmp_path: Path
):
    """Device -> bridge (its version on connect), worker -> device (the push), device -> bridge
    (the new version after installing): every hop over mqtts://, each side trusting the CA."""
    fleet = seed_fleet(sqlite_engine, 1, version="0.9.0", task_state=None, content=IMAGE)
    pk, (dn,) = fleet.product_key, fleet.names
    settings = bridge_settings(tmp_path, tls_broker.url, mqtt_ca_file=tls_broker.pki.ca)
    bridge = Bridge(settings, sqlite_engine, Recorder(), session_expiry=60, products=[pk])
    publisher = MqttPublisher(service_endpoint(settings, ServiceRole.WORKER))
    results: list[int] = []
    http = serve(IMAGE)
    device = Device(
        pk,
        dn,
        mqtt_url=tls_broker.url,
        ca_file=tls_broker.pki.ca,
        versions="1.0.0",
        http=http,
        session_expiry=60,
        on_result=lambda _device, _upgrade, code: results.append(code),
    )
    assert bridge.endpoint.tls and publisher.endpoint.tls and device.endpoint.tls
    try:
        async with running(bridge), online(device):
            await until(lambda: versions(sqlite_engine, pk) == {dn: "1.0.0"}, what="inform")
            data = upgrade_data(settings, fleet.firmware, pk, dn)
            assert data["md5"] == hashlib.md5(IMAGE).hexdigest()
            await publisher.publish(
                protocol.upgrade_topic(pk, dn), protocol.encode_upgrade(data, 1)
            )
            await until(lambda: versions(sqlite_engine, pk) == {dn: "2.0.0"}, what="update")
    finally:
        await publisher.close()
        await http.aclose()
    assert results == [100]
    assert bridge.stats["rejected"] == 0 and bridge.stats["unknown_device"] == 0


async def test_a_client_that_does_not_trust_the_ca_is_refused(tls_broker: TlsBroker, tmp_path):
    await connect(MqttEndpoint.from_url(tls_broker.url, ca_file=tls_broker.pki.ca))
    system_cas_only = MqttEndpoint.from_url(tls_broker.url)
    with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
        await connect(system_cas_only)
    another_ca = make_pki(tmp_path / "other", "other").ca
    with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
        await connect(MqttEndpoint.from_url(tls_broker.url, ca_file=another_ca))


async def test_no_cleartext_on_a_tls_listener(tls_broker: TlsBroker):
    port = MqttEndpoint.from_url(tls_broker.url).port
    plain = MqttEndpoint.from_url(f"mqtt://127.0.0.1:{port}")
    await refused(plain, tls_broker, "wrong version number")


async def test_mtls_admits_a_client_certificate_signed_by_the_ca_only(
    tls_broker: TlsBroker, tmp_path
):
    pki, url = tls_broker.pki, tls_broker.mtls_url
    ca_only = MqttEndpoint.from_url(url, ca_file=pki.ca)
    await refused(ca_only, tls_broker, "peer did not return a certificate")
    other = make_pki(tmp_path / "other", "other")
    foreign = MqttEndpoint.from_url(
        url, ca_file=pki.ca, cert_file=other.client_cert, key_file=other.client_key
    )
    await refused(foreign, tls_broker, "certificate verify failed")
    await connect(
        MqttEndpoint.from_url(
            url, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key
        )
    )


async def test_the_sdk_and_the_services_send_the_client_certificate_from_their_settings(
    tls_broker: TlsBroker, tmp_path
):
    """Device(cert_file, key_file), the simulator's FleetConfig and OTA_MQTT_CERT_FILE/KEY_FILE
    (the services') reach the TLS handshake: the listener admits no one without."""
    pki = tls_broker.pki
    device = Device(
        "pk-mtls",
        "dev-mtls",
        mqtt_url=tls_broker.mtls_url,
        ca_file=pki.ca,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        session_expiry=10,
    )
    async with online(device):
        assert device.stats["connects"] == 1
    fleet = Fleet(
        FleetConfig(
            "pk-mtls",
            devices=2,
            version="1.0.0",
            mqtt_url=tls_broker.mtls_url,
            ca_file=str(pki.ca),
            cert_file=str(pki.client_cert),
            key_file=str(pki.client_key),
            session_expiry=10,
        )
    )
    running_fleet = asyncio.create_task(fleet.run())
    await until(lambda: len(fleet.devices) == 2 and all(d.is_connected for d in fleet.devices))
    fleet.stop.set()
    assert (await running_fleet)["connected_once"] == 2
    settings = bridge_settings(
        tmp_path,
        tls_broker.mtls_url,
        mqtt_ca_file=pki.ca,
        mqtt_cert_file=pki.client_cert,
        mqtt_key_file=pki.client_key,
    )
    publisher = MqttPublisher(service_endpoint(settings, ServiceRole.WORKER))
    try:
        await publisher.publish("ota/tls-test", b"from the worker")
    finally:
        await publisher.close()
