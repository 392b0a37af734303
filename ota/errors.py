"""Domain errors: the API turns them into problem details, the CLI into messages and exit codes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager


class OtaError(Exception):
    """Base of every error the platform raises on purpose."""

    status = 500
    exit_code = 1


class InvalidInput(OtaError):
    """Bad input: names the field and what is allowed. Nothing was changed."""

    status = 422
    exit_code = 2

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(OtaError):
    status = 404
    exit_code = 2

    def __init__(self, kind: str, key: object) -> None:
        super().__init__(f"{kind} {key!s} not found")
        self.kind = kind
        self.key = key


class Conflict(OtaError):
    """The request is well formed but the current state forbids it (a limit, a duplicate)."""

    status = 409
    exit_code = 2

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Unavailable(OtaError):
    """A service the operation needs (Temporal, the broker) does not answer."""

    status = 503
    exit_code = 1


@contextmanager
def renamed(renames: Mapping[str, str]) -> Iterator[None]:
    """A field named as the client sent it: the services name a batch option as the API does
    ("rate_per_minute"), the CLI by its flag ("rate"); other services name fields as the CLI
    does ("device"), the API as its body does ("device_names")."""
    try:
        yield
    except (InvalidInput, Conflict) as exc:
        if exc.field is not None and exc.field in renames:
            exc.field = renames[exc.field]
        raise
