"""How we reach Temporal: the settings turned into `Client.connect`'s arguments, and what a
namespace must hold for our workflows (the search attributes).

The mapping is kept pure (no connection) so it is tested without a TLS Temporal: the dev server
speaks plain gRPC only.

    OTA_TEMPORAL_TLS=true                   TLS, checked against the system's CAs
    OTA_TEMPORAL_CA_FILE                    ... or against this CA (a self-hosted cluster)
    OTA_TEMPORAL_CERT_FILE + _KEY_FILE      mTLS: our client certificate
    OTA_TEMPORAL_SERVER_NAME                the name the server's certificate carries
    OTA_TEMPORAL_API_KEY                    Temporal Cloud's API keys (implies TLS)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client, TLSConfig
from temporalio.service import RPCError, RPCStatusCode

from ota.contracts import SEARCH_ATTRIBUTES
from ota.errors import InvalidInput
from ota.settings import Settings

log = logging.getLogger(__name__)


def temporal_connect_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `Client.connect(settings.temporal_address, **options)`."""
    s = settings
    if bool(s.temporal_cert_file) != bool(s.temporal_key_file):
        have, missing = ("CERT", "KEY") if s.temporal_cert_file else ("KEY", "CERT")
        raise InvalidInput(
            f"OTA_TEMPORAL_{missing}_FILE",
            f"OTA_TEMPORAL_{have}_FILE is set: mTLS needs both the client certificate and its "
            "private key",
        )
    options: dict[str, Any] = {"namespace": s.temporal_namespace}
    if s.temporal_api_key:
        options["api_key"] = s.temporal_api_key
    tls_files = (s.temporal_ca_file, s.temporal_cert_file, s.temporal_key_file)
    if any(tls_files) or s.temporal_server_name:
        options["tls"] = TLSConfig(
            server_root_ca_cert=_read(s.temporal_ca_file, "OTA_TEMPORAL_CA_FILE"),
            client_cert=_read(s.temporal_cert_file, "OTA_TEMPORAL_CERT_FILE"),
            client_private_key=_read(s.temporal_key_file, "OTA_TEMPORAL_KEY_FILE"),
            domain=s.temporal_server_name,
        )
    elif s.temporal_tls or s.temporal_api_key:
        # Said outright: an API key over plain gRPC would be sent in the clear.
        options["tls"] = True
    return options


TRANSIENT_STATUSES = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,  # connection refused or reset, server starting
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.RESOURCE_EXHAUSTED,  # rate limited
    }
)


def is_transient(exc: BaseException) -> bool:
    """Temporal unreachable or overloaded (try again later), as opposed to refusing the call."""
    if not isinstance(exc, RPCError):
        return False
    if exc.status in TRANSIENT_STATUSES:
        return True
    # A connection reset mid-call comes from the SDK's core as UNKNOWN "transport error".
    return exc.status == RPCStatusCode.UNKNOWN and "transport error" in str(exc)


def _read(path: Path | None, setting: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(setting, f"cannot read {path}: {exc.strerror or exc}") from None


@dataclass
class SearchAttributeState:
    """Our search attributes in one namespace: which are registered, missing, or clash."""

    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    wrong_type: dict[str, str] = field(default_factory=dict)  # name -> the type registered

    @property
    def complete(self) -> bool:
        return not self.missing and not self.wrong_type


def _type_name(value: int) -> str:
    return IndexedValueType.Name(value).removeprefix("INDEXED_VALUE_TYPE_").title()  # type: ignore[arg-type]


async def search_attribute_state(client: Client) -> SearchAttributeState:
    """Which of SEARCH_ATTRIBUTES the client's namespace holds, and with what type."""
    have = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    state = SearchAttributeState()
    for key in SEARCH_ATTRIBUTES:
        registered = have.custom_attributes.get(key.name)
        if registered is None:
            state.missing.append(key.name)
        elif registered != int(key.indexed_value_type):
            state.wrong_type[key.name] = _type_name(registered)
        else:
            state.present.append(key.name)
    return state


async def ensure_search_attributes(client: Client) -> list[str]:
    """Register those of OtaBatchId, OtaProductKey and OtaState the namespace lacks (idempotent);
    the names registered. Without them a workflow's first upsert fails its workflow task, over
    and over. `ota dev` passes them to its dev server; the worker and `ota temporal setup` add
    them to any other cluster."""
    state = await search_attribute_state(client)
    if state.missing:
        types = {k.name: int(k.indexed_value_type) for k in SEARCH_ATTRIBUTES}
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes={name: types[name] for name in state.missing},  # type: ignore[misc]
            )
        )
        log.info("registered search attributes %s", ", ".join(state.missing))
    return state.missing
