"""The console's sessions: a signed cookie that expires, and a shared list of those logged out.

Why this shape: the cookie carries its own issue time and a random id, signed (HMAC-SHA256)
with the API token, so every API process checks it without shared state, and a new token ends
every session. Logout must also end a copy of the cookie replayed later, on any API process of
the installation: a list in memory would hold for one process only, so the ids of sessions
logged out go to the database (`revoked_sessions`), one primary-key lookup per console request
with a valid cookie. A row is dropped once its session would have expired anyway, so the table
holds only the logouts of the last OTA_CONSOLE_SESSION_HOURS.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from ota.db.engine import session_scope
from ota.db.models import RevokedSession, utcnow

CLOCK_SKEW_SECONDS = 60  # API processes on several hosts: one's clock may run a little ahead
_ISSUED = re.compile(r"[0-9]{1,12}")
_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class ConsoleSession:
    id: str
    expires_at: datetime


def issue(token: str, now: float | None = None) -> str:
    """A new session's cookie value: `issued.id.mac` (the cookie is not the token)."""
    issued = int(time.time() if now is None else now)
    session_id = secrets.token_hex(16)
    return f"{issued}.{session_id}.{_mac(token, issued, session_id)}"


def read(token: str, value: str, hours: float, now: float | None = None) -> ConsoleSession | None:
    """The session a cookie value names, if we signed it and it has not expired."""
    parts = value.split(".")
    if len(parts) != 3 or not _ISSUED.fullmatch(parts[0]) or not _ID.fullmatch(parts[1]):
        return None
    issued, session_id, mac = int(parts[0]), parts[1], parts[2]
    if not hmac.compare_digest(mac.encode(), _mac(token, issued, session_id).encode()):
        return None
    now = time.time() if now is None else now
    expires = issued + hours * 3600
    if not issued - CLOCK_SKEW_SECONDS <= now < expires:
        return None
    return ConsoleSession(session_id, datetime.fromtimestamp(expires, UTC))


def is_revoked(engine: Engine, session: ConsoleSession) -> bool:
    with Session(engine) as db:
        return db.get(RevokedSession, session.id) is not None


def revoke(engine: Engine, session: ConsoleSession) -> None:
    """Logout: refused from now on by every process; expired rows are dropped meanwhile."""
    try:
        with session_scope(engine) as db:
            db.execute(delete(RevokedSession).where(col(RevokedSession.expires_at) < utcnow()))
            if db.get(RevokedSession, session.id) is None:
                db.add(RevokedSession(id=session.id, expires_at=session.expires_at))
    except IntegrityError:
        pass  # logged out twice at once: revoked either way


def _mac(token: str, issued: int, session_id: str) -> str:
    message = f"ota console session\n{issued}\n{session_id}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()
