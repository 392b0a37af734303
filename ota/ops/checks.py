"""What a health check answers: one component, whether it works, and what to do if not.

The same checks back /readyz (every process that serves HTTP) and `ota doctor`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass

CHECK_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Check:
    component: str  # database, temporal, broker, storage, ...
    ok: bool
    detail: str  # what was found: "PostgreSQL 15.8 at 127.0.0.1:5432/ota", or the error
    hint: str = ""  # what to do about a failure: the setting to look at, the command to run

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


CheckFn = Callable[[], Awaitable[Check]]


async def run_checks(
    checks: Sequence[tuple[str, CheckFn]], timeout: float = CHECK_TIMEOUT_SECONDS
) -> list[Check]:
    """Every check at once, each within `timeout`; a check that raises or hangs fails."""

    async def one(component: str, check: CheckFn) -> Check:
        try:
            return await asyncio.wait_for(check(), timeout)
        except TimeoutError:
            return Check(component, False, f"no answer within {timeout:.0f} s")
        except Exception as exc:  # a check's own bug must not hide the others' answers
            return Check(component, False, f"{type(exc).__name__}: {exc}")

    return list(await asyncio.gather(*(one(name, fn) for name, fn in checks)))
