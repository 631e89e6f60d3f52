"""What every OAuth token provider shares: the provider protocol and an early-refreshing cache.

Both the D365 and the commercetools adapters cache client-credentials tokens the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

# Refresh this long before expiry (or at half the lifetime for short-lived tokens).
REFRESH_MARGIN_SECONDS = 300.0


class TokenProvider(Protocol):
    client_id: str

    async def token(self, *, force_refresh: bool = False) -> str: ...

    async def close(self) -> None: ...


class CachedToken:
    """One cached token; the lock keeps concurrent callers from fetching it twice."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.value: str | None = None
        self.refresh_at = 0.0
        self.lock = asyncio.Lock()

    def fresh(self) -> str | None:
        return self.value if self.value and self.clock() < self.refresh_at else None

    def store(self, value: str, lifetime: float) -> None:
        self.value = value
        self.refresh_at = self.clock() + lifetime - min(REFRESH_MARGIN_SECONDS, lifetime / 2)
