"""uvicorn's access log without secrets: a download URL's signature, a token in a query string.

A logged download URL downloads the firmware for whoever reads the log until it expires (a day
by default), so its `sig` is replaced by `***`; so is any `token` or signature-like parameter.
"""

from __future__ import annotations

import logging
import re

ACCESS_LOGGER = "uvicorn.access"
_SECRET = re.compile(
    r"([?&](?:sig|signature|[a-z0-9_.-]*token|x-amz-signature|x-amz-credential)=)[^&#\s\"]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    return _SECRET.sub(r"\1***", text)


class RedactSecrets(logging.Filter):
    """On the logger, so it holds whichever handlers uvicorn's logging config attaches."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):  # uvicorn: (client, method, path?query, version, status)
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install() -> None:
    """Once per process: uvicorn's dictConfig replaces the logger's handlers, not its filters."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactSecrets) for f in logger.filters):
        logger.addFilter(RedactSecrets())
