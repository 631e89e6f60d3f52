"""Bearer checks, per-route call counters and injected faults (429, 5xx, timeouts) on D365 routes.

The counters are what benchmarks read to count the calls a client made.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable

from fastapi import Request, Response

from d365sim.auth import TokenIssuer
from d365sim.config import Faults
from d365sim.errors import odata_error

THROTTLE_MESSAGE = (
    "This request could not be processed at this time due to system experiencing high "
    "resource utilization."
)
_KEY_PREDICATE = re.compile(r"\(.*?\)(?=/|$)")


def route_key(method: str, path: str) -> str:
    """'GET /data/CustomersV3' for any key, query or trailing $count of that set."""
    if "/oauth2/" in path:
        return f"{method} /oauth2/token"
    path = _KEY_PREDICATE.sub("", path).rstrip("/")
    return f"{method} {path or '/'}"


class CallCounters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


class Throttle:
    """A one-second sliding window; beyond `rps` requests in it the caller gets 429."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: deque[float] = deque()

    def retry_after(self, rps: float, now: float | None = None) -> int | None:
        """None when the request may pass, else the seconds the caller should wait."""
        if rps <= 0:
            return None
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) < rps:
                self._recent.append(now)
                return None
            # Retry-After is whole seconds; D365 never answers 0
            return max(1, math.ceil(1.0 - (now - self._recent[0])))


def middleware(
    issuer: TokenIssuer,
    faults: Faults,
    counters: CallCounters,
    rng: random.Random | None = None,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    throttle = Throttle()
    chance = rng or random.Random()

    async def handle(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if path.startswith("/_sim"):
            return await call_next(request)
        key = route_key(request.method, path)
        counters.add(key)
        if not path.startswith("/data"):
            return await call_next(request)
        if not issuer.validate(request.headers.get("authorization")):
            counters.add("401")
            return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        # Service protection documents DIXF/DMF as exempt: throttle OData, not package actions.
        exempt = path.startswith("/data/DataManagementDefinitionGroups/")
        wait = None if exempt else throttle.retry_after(faults.throttle_rps)
        if wait is not None:
            counters.add("429")
            return odata_error(429, THROTTLE_MESSAGE, headers={"Retry-After": str(wait)})
        if faults.error_rate and chance.random() < faults.error_rate:
            counters.add("5xx")
            status = chance.choice((500, 503))
            return odata_error(status, "An error has occurred.", "Injected server error.")
        if faults.timeout_rate and chance.random() < faults.timeout_rate:
            counters.add("timeout")
            await asyncio.sleep(faults.timeout_seconds)
            return odata_error(504, "The operation timed out.")
        return await call_next(request)

    return handle
