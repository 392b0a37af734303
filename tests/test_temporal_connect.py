"""Settings -> Temporal's connect arguments: TLS, mTLS, API keys, namespace (no TLS server:
the dev server speaks plain gRPC, so the mapping is what is tested)."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import Client, TLSConfig

from ota.context import Context
from ota.errors import InvalidInput
from ota.settings import Settings
from ota.temporal import temporal_connect_options


def settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(home=tmp_path, **kw)  # type: ignore[arg-type]


def pem_files(tmp_path: Path) -> dict[str, Path]:
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for name, path in files.items():
        path.write_bytes(f"-----{name}-----\n".encode())
    return files


def test_the_dev_server_plain_with_the_namespace(tmp_path):
    assert temporal_connect_options(settings(tmp_path)) == {"namespace": "default"}
    options = temporal_connect_options(settings(tmp_path, temporal_namespace="ota-prod"))
    assert options == {"namespace": "ota-prod"}


def test_tls_alone_checks_against_the_system_cas(tmp_path):
    options = temporal_connect_options(settings(tmp_path, temporal_tls=True))
    assert options == {"namespace": "default", "tls": True}


def test_a_private_ca_and_a_server_name(tmp_path):
    files = pem_files(tmp_path)
    s = settings(tmp_path, temporal_ca_file=files["ca"], temporal_server_name="temporal.internal")
    tls = temporal_connect_options(s)["tls"]
    assert tls == TLSConfig(server_root_ca_cert=b"-----ca-----\n", domain="temporal.internal")


def test_mtls_sends_the_client_certificate_and_key_and_implies_tls(tmp_path):
    files = pem_files(tmp_path)
    s = settings(tmp_path, temporal_cert_file=files["cert"], temporal_key_file=files["key"])
    options = temporal_connect_options(s)  # temporal_tls unset: the files say TLS
    assert options["tls"] == TLSConfig(
        client_cert=b"-----cert-----\n", client_private_key=b"-----key-----\n"
    )


def test_an_api_key_implies_tls_and_keeps_a_given_ca(tmp_path):
    s = settings(tmp_path, temporal_api_key="secret-key", temporal_namespace="ota.a1b2c")
    assert temporal_connect_options(s) == {
        "namespace": "ota.a1b2c",
        "api_key": "secret-key",
        "tls": True,
    }
    files = pem_files(tmp_path)
    with_ca = temporal_connect_options(
        settings(tmp_path, temporal_api_key="secret-key", temporal_ca_file=files["ca"])
    )
    assert with_ca["tls"] == TLSConfig(server_root_ca_cert=b"-----ca-----\n")


@pytest.mark.parametrize(("given", "missing"), [("cert", "KEY"), ("key", "CERT")])
def test_half_a_client_certificate_names_the_missing_setting(tmp_path, given, missing):
    files = pem_files(tmp_path)
    s = settings(tmp_path, **{f"temporal_{given}_file": files[given]})
    with pytest.raises(InvalidInput) as err:
        temporal_connect_options(s)
    assert err.value.field == f"OTA_TEMPORAL_{missing}_FILE"
    assert f"OTA_TEMPORAL_{given.upper()}_FILE is set" in err.value.message


def test_an_unreadable_file_names_its_setting(tmp_path):
    s = settings(tmp_path, temporal_ca_file=tmp_path / "nowhere.pem")
    with pytest.raises(InvalidInput) as err:
        temporal_connect_options(s)
    assert err.value.field == "OTA_TEMPORAL_CA_FILE"
    assert "nowhere.pem" in err.value.message


def test_environment_variables_reach_the_options(tmp_path, monkeypatch):
    files = pem_files(tmp_path)
    monkeypatch.setenv("OTA_TEMPORAL_NAMESPACE", "prod")
    monkeypatch.setenv("OTA_TEMPORAL_CA_FILE", str(files["ca"]))
    monkeypatch.setenv("OTA_TEMPORAL_CERT_FILE", str(files["cert"]))
    monkeypatch.setenv("OTA_TEMPORAL_KEY_FILE", str(files["key"]))
    monkeypatch.setenv("OTA_TEMPORAL_SERVER_NAME", "frontend.temporal")
    options = temporal_connect_options(Settings(home=tmp_path))
    assert options == {
        "namespace": "prod",
        "tls": TLSConfig(
            server_root_ca_cert=b"-----ca-----\n",
            client_cert=b"-----cert-----\n",
            client_private_key=b"-----key-----\n",
            domain="frontend.temporal",
        ),
    }


async def test_the_context_connects_with_them(tmp_path, monkeypatch):
    """Every entry point (worker, bridge, API, CLI) gets its client from Context.temporal."""
    calls = []

    async def connect(address: str, **options: object) -> object:
        calls.append((address, options))
        return object()

    monkeypatch.setattr(Client, "connect", connect)
    s = settings(tmp_path, temporal_address="temporal.example:7233", temporal_api_key="k")
    await Context(s).temporal()
    assert calls == [
        ("temporal.example:7233", {"namespace": "default", "api_key": "k", "tls": True})
    ]
