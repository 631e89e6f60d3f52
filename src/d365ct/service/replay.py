"""Replay and resolve of error-queue entries, shared by the dashboard and the JSON API.

Each flow registers a replay handler that re-drives one failed record through its idempotent path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from d365ct.store.error_queue import EntryClosedError, ErrorEntry, ErrorQueue

if TYPE_CHECKING:
    from d365ct.config import Settings

__all__ = [
    "ReplayHandler",
    "ReplayOutcome",
    "ReplayRegistry",
    "ReplayResult",
    "Replayer",
    "flow_registry",
]

log = logging.getLogger(__name__)

# replayed: it went through, the entry is closed. pending: the flow re-drives it in the
# background and closes the entry itself when it succeeds. failed: still open, with the reason.
ReplayResult = Literal["replayed", "pending", "failed"]


@dataclass(frozen=True)
class ReplayOutcome:
    entry_id: int
    result: ReplayResult | Literal["resolved", "not_found", "refused"]
    detail: str
    entry: ErrorEntry | None = None

    @property
    def ok(self) -> bool:
        return self.result in ("replayed", "pending", "resolved")

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.entry_id, "result": self.result, "detail": self.detail}


# Re-drive one record. Return ("replayed", note) once it went through, ("pending", note) when a
# workflow was started that will close the entry, or raise (or return ("failed", why)).
ReplayHandler = Callable[[ErrorEntry], Awaitable[tuple[ReplayResult, str]]]


class ReplayRegistry:
    """Replay handlers by flow name; flows register theirs when the service is assembled."""

    def __init__(self) -> None:
        self._handlers: dict[str, ReplayHandler] = {}

    def register(self, flow: str, handler: ReplayHandler) -> None:
        self._handlers[flow] = handler

    def get(self, flow: str) -> ReplayHandler | None:
        return self._handlers.get(flow)

    @property
    def flows(self) -> list[str]:
        return sorted(self._handlers)


def flow_registry(settings: Settings, flows: Iterable[str] | None = None) -> ReplayRegistry:
    """A registry holding the flows' own replay handlers (``d365ct.flows.replay.REPLAYERS``,
    the ones ``d365ct errors replay`` uses), for ``flows`` or all of them.

    Durable flows (orders, customers) need the workflow engine launched: see
    ``d365ct.flows.replay.prepare_durable``.
    """
    from d365ct.flows.replay import REPLAYERS

    registry = ReplayRegistry()
    for flow in sorted(REPLAYERS if flows is None else flows):
        registry.register(flow, _flow_handler(settings, flow))
    return registry


def _flow_handler(settings: Settings, flow: str) -> ReplayHandler:
    from d365ct.flows.replay import REPLAYERS

    handler = REPLAYERS[flow]

    async def replay(entry: ErrorEntry) -> tuple[ReplayResult, str]:
        went_through, detail = await handler(settings, entry)
        return ("replayed" if went_through else "failed"), detail

    return replay


class Replayer:
    def __init__(
        self,
        errors: ErrorQueue,
        registry: ReplayRegistry,
        *,
        describe_error: Callable[[BaseException], str] = str,
    ) -> None:
        self._errors = errors
        self._registry = registry
        self._describe = describe_error

    async def replay(self, entry_id: int) -> ReplayOutcome:
        entry = await asyncio.to_thread(self._errors.get, entry_id)
        if entry is None:
            return ReplayOutcome(entry_id, "not_found", f"no error queue entry {entry_id}")
        if entry.status != "open":
            return ReplayOutcome(entry_id, "refused", f"entry {entry_id} is {entry.status}", entry)
        handler = self._registry.get(entry.flow)
        if handler is None:
            # The entry stays open: nothing was tried, so nothing is lost.
            return ReplayOutcome(
                entry_id, "failed", f"no replay handler for flow {entry.flow} yet", entry
            )
        try:
            result, detail = await handler(entry)
        except Exception as exc:  # the record failed again; the operator sees why
            log.warning("replay of error %s (%s) failed: %s", entry_id, entry.flow, exc)
            return ReplayOutcome(
                entry_id, "failed", self._describe(exc) or type(exc).__name__, entry
            )
        if result == "replayed":
            try:
                entry = await asyncio.to_thread(self._errors.close, entry_id, "replayed", detail)
            except EntryClosedError as closed:
                # Resolved (or replayed) by someone else while this replay ran: theirs stands.
                entry = closed.entry
                detail = f"{detail}; the entry was meanwhile {entry.status} by someone else"
        else:
            entry = await asyncio.to_thread(self._errors.get, entry_id) or entry
        return ReplayOutcome(entry_id, result, detail, entry)

    async def resolve(self, entry_id: int, note: str | None) -> ReplayOutcome:
        entry = await asyncio.to_thread(self._errors.get, entry_id)
        if entry is None:
            return ReplayOutcome(entry_id, "not_found", f"no error queue entry {entry_id}")
        if entry.status != "open":
            return ReplayOutcome(entry_id, "refused", f"entry {entry_id} is {entry.status}", entry)
        try:
            closed = await asyncio.to_thread(self._errors.close, entry_id, "resolved", note or None)
        except EntryClosedError as exc:  # closed by a concurrent replay or resolve
            return ReplayOutcome(entry_id, "refused", str(exc), exc.entry)
        return ReplayOutcome(entry_id, "resolved", note or "resolved", closed)

    async def replay_many(self, ids: Iterable[int]) -> list[ReplayOutcome]:
        # One at a time: replays hit D365 and commercetools, whose limits the flows respect.
        return [await self.replay(i) for i in ids]

    async def resolve_many(self, ids: Iterable[int], note: str | None) -> list[ReplayOutcome]:
        return [await self.resolve(i, note) for i in ids]
