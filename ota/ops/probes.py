"""The health checks of one installation, component by component: what /readyz answers and
`ota doctor` prints.

Each probe returns a Check whose hint tells a new user what to do about a failure: the OTA_*
setting to look at, the command to run. No detail carries a secret: addresses are shown
without passwords, and every error text is scrubbed of the installation's secrets (a driver may
quote its connection string).
"""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import aiomqtt
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL, make_url
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError

from ota.context import Context
from ota.errors import OtaError, Unavailable
from ota.identity.accounts import ServiceRole, broker_endpoint, service_endpoint
from ota.mqtt import MqttEndpoint
from ota.ops.checks import Check, CheckFn
from ota.ops.hints import (
    S3_HINT,
    broker_hint,
    database_hint,
    describe_database,
    reason,
    refused,
    temporal_hint,
    temporal_refusal,
)
from ota.storage import StorageUnavailable
from ota.temporal import search_attribute_state

PROBE_SECONDS = 4.0  # within run_checks' 5 s, so a probe reports its own reason first

EngineGetter = Callable[[], Engine | None]


class Probes:
    """Every check, over one Context's settings and connections."""

    def __init__(
        self,
        context: Context,
        *,
        engine: EngineGetter | None = None,
        broker_roles: Sequence[ServiceRole] = (ServiceRole.WORKER, ServiceRole.BRIDGE),
    ) -> None:
        """`engine`: the process's own engine (None while it is still being opened); without
        it, each database check opens one of its own and migrates nothing (`ota doctor`).
        `broker_roles`: the service accounts the broker check connects as."""
        self.context = context
        self.settings = context.settings
        self._engine = engine
        self.broker_roles = tuple(broker_roles)
        self._temporal_lock = asyncio.Lock()

    def checks(self, *names: str) -> list[tuple[str, CheckFn]]:
        """("database", self.database), ...: the form run_checks and serving_ops take."""
        return [(name, getattr(self, name)) for name in names]

    def _reason(self, exc: BaseException) -> str:
        return reason(exc, self.settings)

    # -- database --------------------------------------------------------------------------

    async def database(self) -> Check:
        """SELECT 1, off the event loop; with an engine of its own, the schema's revision too."""
        return await asyncio.to_thread(self._database)

    def _database(self) -> Check:
        url = make_url(self.settings.resolved_database_url)
        where, hint = describe_database(url), database_hint(url, self.settings)
        own = self._engine is None
        if own:
            if url.get_backend_name() == "sqlite" and not _sqlite_exists(url):
                return Check(
                    "database", True, f"{where}: not created yet (ota creates it at start)"
                )
            from ota.db.engine import make_engine

            engine: Engine | None = make_engine(self.settings.resolved_database_url, migrate=False)
        else:
            assert self._engine is not None
            engine = self._engine()
            if engine is None:
                return Check("database", False, f"{where}: not open yet (see the log)", hint)
        assert engine is not None
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                version = ".".join(str(v) for v in conn.dialect.server_version_info or ())
                ok, schema = schema_state(conn) if own else (True, "")
        except Exception as exc:
            return Check("database", False, f"{where}: {self._reason(exc)}", hint)
        finally:
            if own:
                engine.dispose()
        detail = where.replace(" at ", f" {version} at ", 1) if version else where
        if not ok:
            return Check(
                "database",
                False,
                f"{detail}: {schema}",
                "this ota is older than the database: upgrade it",
            )
        return Check("database", True, f"{detail}{'; ' + schema if schema else ''}")

    # -- Temporal --------------------------------------------------------------------------

    async def _client(self) -> Client:
        async with self._temporal_lock:  # the temporal and search_attributes checks run at once
            return await self.context.temporal()

    async def temporal(self) -> Check:
        """Connected, and the namespace exists: DescribeNamespace, one cheap call."""
        s = self.settings
        where = f"{s.temporal_address}, namespace {s.temporal_namespace}"
        try:
            client = await self._client()
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=s.temporal_namespace),
                timeout=timedelta(seconds=PROBE_SECONDS),
            )
        except RPCError as exc:
            detail, hint = temporal_refusal(exc, s)
            return Check("temporal", False, f"{where}: {detail}", hint)
        except OtaError as exc:  # unreachable (Unavailable), or TLS settings (InvalidInput)
            cause = exc.__cause__ if isinstance(exc, Unavailable) and exc.__cause__ else exc
            return Check("temporal", False, f"{where}: {self._reason(cause)}", temporal_hint(s))
        return Check("temporal", True, where)

    async def search_attributes(self) -> Check:
        """Ours registered in the namespace: without them every workflow task fails."""
        namespace = self.settings.temporal_namespace
        try:
            state = await search_attribute_state(await self._client())
        except (OtaError, RPCError) as exc:
            why = "Temporal does not answer" if isinstance(exc, Unavailable) else self._reason(exc)
            return Check(
                "search_attributes",
                False,
                f"cannot list them in namespace {namespace}: {why}",
                "make Temporal answer first (the temporal check); then `ota temporal setup`",
            )
        if state.wrong_type:
            clash = ", ".join(f"{n} is {t}" for n, t in state.wrong_type.items())
            return Check(
                "search_attributes",
                False,
                f"namespace {namespace}: {clash}; ota needs Keyword",
                "remove them (`temporal operator search-attribute remove --name ...`), then run "
                "`ota temporal setup`",
            )
        if state.missing:
            return Check(
                "search_attributes",
                False,
                f"namespace {namespace} lacks {', '.join(state.missing)}",
                "run `ota temporal setup` (it registers them; so does `ota worker` at start)",
            )
        return Check("search_attributes", True, f"{', '.join(state.present)} in {namespace}")

    # -- broker ----------------------------------------------------------------------------

    async def broker(self) -> Check:
        """Each service account named connects (and disconnects) with its own credentials."""
        endpoints = {service_endpoint(self.settings, r): None for r in self.broker_roles}
        for endpoint in endpoints:
            who = endpoint.username or "anonymous"
            try:
                await _connect(endpoint)
            except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                detail = f"{endpoint.url} as {who}: {self._reason(exc)}"
                return Check("broker", False, detail, broker_hint(exc, endpoint, self.settings))
        users = " and ".join(e.username or "anonymous" for e in endpoints)
        return Check("broker", True, f"{broker_endpoint(self.settings).url}: {users} connect")

    async def device_identity(self) -> Check:
        """With OTA_BROKER_AUTH on: anonymous clients refused, the plugin answering on its
        control topic, and the services' users on it."""
        s = self.settings
        if s.broker_auth == "none":
            return Check(
                "device_identity", True, "off (OTA_BROKER_AUTH=none): ota does not manage them"
            )
        endpoint = broker_endpoint(s)
        try:
            await _connect(endpoint.with_credentials(None, None))
            return Check(
                "device_identity",
                False,
                f"{endpoint.url} accepts anonymous clients: it does not check devices",
                "configure Mosquitto with `ota broker config`, then `ota broker sync` "
                "(docs/security.md); or set OTA_BROKER_AUTH=none for a broker that checks "
                "devices by other means",
            )
        except aiomqtt.MqttError as exc:
            if not refused(exc):
                return Check(
                    "device_identity", False, f"{endpoint.url}: {self._reason(exc)}", "see broker"
                )
        from ota.identity.sync import broker_users  # the registry's modules: doctor only

        quick = s.model_copy(update={"broker_timeout_seconds": PROBE_SECONDS - 1})
        services = [ServiceRole.BRIDGE.value, ServiceRole.WORKER.value]
        plugin = "ota_auth" if s.broker_auth == "plugin" else "dynamic-security"
        try:
            async with broker_users(quick) as users:
                found = await users.existing(services)
        except (OtaError, aiomqtt.MqttError) as exc:
            return Check(
                "device_identity",
                False,
                f"the {plugin} plugin does not answer: {self._reason(exc)}",
                f"is Mosquitto running with {plugin} (`ota broker config` writes its "
                "configuration, OTA_BROKER_AUTH picks the plugin), with the "
                "OTA_MQTT_SERVICE_SECRET it was configured with?",
            )
        missing = [u for u in services if u not in found]
        if missing:
            return Check(
                "device_identity",
                False,
                f"the {plugin} plugin lacks the users {', '.join(missing)}",
                "run `ota broker sync`",
            )
        return Check(
            "device_identity",
            True,
            f"{plugin} answers; anonymous clients refused; {', '.join(services)} present",
        )

    # -- storage ---------------------------------------------------------------------------

    async def storage(self) -> Check:
        """The folder writable, or the bucket answering; presigning, if devices get S3 URLs."""
        return await asyncio.to_thread(self._storage)

    def _storage(self) -> Check:
        s = self.settings
        url = s.resolved_storage_url
        if not url.startswith("s3://"):
            return folder_check(Path(url))
        where = f"{url} at {s.s3_endpoint_url or 'AWS S3'}"
        bucket = url[len("s3://") :].split("/", 1)[0]
        try:
            store = self.context.store
            store.check_root()
        except FileNotFoundError:
            return Check(
                "storage",
                False,
                f"{where}: no bucket {bucket}",
                f"create the bucket {bucket} (`aws s3 mb s3://{bucket}`, or your S3's console), "
                "or fix OTA_STORAGE_URL",
            )
        except (StorageUnavailable, OSError, ValueError) as exc:
            return Check("storage", False, f"{where}: {self._reason(exc)}", S3_HINT)
        if s.s3_direct_urls:
            refused = presign_refused(store.presign(f".ota-probe-{uuid.uuid4().hex}", 60))
            if refused:
                return Check(
                    "storage",
                    False,
                    f"{where}: a presigned URL was refused ({refused})",
                    "devices download from presigned URLs (OTA_S3_DIRECT_URLS): check "
                    "OTA_S3_KEY, OTA_S3_SECRET and the S3 server's clock",
                )
            where += "; presigned URLs accepted"
        return Check("storage", True, where)


def connection_check(component: str, ready: asyncio.Event, url: str) -> CheckFn:
    """A process's own live connection as a check (the bridge's broker session): no new one."""

    async def check() -> Check:
        if ready.is_set():
            return Check(component, True, f"connected to {url}")
        return Check(
            component,
            False,
            f"not connected to {url} (reconnecting; see the log)",
            "is the broker running at OTA_MQTT_URL, and does it accept this service's account?",
        )

    return check


def _sqlite_exists(url: URL) -> bool:
    return not url.database or url.database == ":memory:" or Path(url.database).exists()


def schema_state(conn: Connection) -> tuple[bool, str]:
    """Whether this ota can use the database's schema: at head, behind (the next ota process
    migrates it), or from a newer ota (which this one cannot downgrade)."""
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from ota.db.engine import MIGRATIONS

    current = MigrationContext.configure(conn).get_current_revision()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(config)
    if current in script.get_heads():
        return True, "schema up to date"
    if current is None:
        return True, "no schema yet (ota creates it at start)"
    try:
        script.get_revision(current)
    except Exception:
        return False, f"schema revision {current} is from a newer ota"
    return True, "schema behind this ota (migrated when an ota process starts)"


async def _connect(endpoint: MqttEndpoint) -> None:
    client = endpoint.client(f"ota-probe-{uuid.uuid4().hex[:12]}", timeout=PROBE_SECONDS)
    async with asyncio.timeout(PROBE_SECONDS):
        async with client:
            pass


def folder_check(path: Path) -> Check:
    """A folder store: writable, or creatable at the first upload."""
    if path.exists():
        if path.is_dir() and os.access(path, os.W_OK | os.X_OK):
            return Check("storage", True, f"folder {path}")
        problem = "is not a folder" if not path.is_dir() else "is not writable"
    else:
        parent = next((p for p in path.parents if p.exists()), Path("/"))
        if os.access(parent, os.W_OK | os.X_OK):
            return Check("storage", True, f"folder {path} (created at the first upload)")
        problem = f"cannot be created ({parent} is not writable)"
    return Check(
        "storage",
        False,
        f"folder {path} {problem}",
        "set OTA_STORAGE_URL to a writable folder, or to s3://bucket/prefix with "
        "OTA_S3_ENDPOINT_URL, OTA_S3_KEY and OTA_S3_SECRET",
    )


def presign_refused(url: str) -> str | None:
    """None when S3 takes a presigned GET's signature (a missing key: 404), else why not."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_SECONDS - 1):  # noqa: S310 (our S3's URL)
            return None
    except urllib.error.HTTPError as exc:
        return None if exc.code == 404 else f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
