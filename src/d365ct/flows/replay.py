"""The error queue's replay: one handler per flow re-drives an entry through that flow's own path.

Flows register handlers in REPLAYERS; a replay that goes through closes the entry as replayed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa

from d365ct.config import Settings
from d365ct.errors import D365ctError
from d365ct.store.error_queue import EntryClosedError, ErrorEntry, ErrorQueue

__all__ = [
    "BEFORE_LAUNCH",
    "REPLAYERS",
    "ReplayHandler",
    "ReplayOutcome",
    "durable_flows",
    "prepare_durable",
    "register_replayer",
    "replay_entries",
]


@dataclass(frozen=True)
class ReplayOutcome:
    entry_id: int
    flow: str
    status: str  # replayed | failed | unsupported | skipped
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "replayed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.entry_id,
            "flow": self.flow,
            "status": self.status,
            "detail": self.detail,
        }


# (settings, entry) → (went through?, what happened). Handlers re-run the flow's idempotent path;
# when it fails again, the flow itself updates the entry (one more attempt, the new error).
ReplayHandler = Callable[[Settings, ErrorEntry], Awaitable[tuple[bool, str]]]

REPLAYERS: dict[str, ReplayHandler] = {}
# Flows whose handlers run DBOS workflows: each hook creates the flow's DBOS instances, which
# must exist before the engine launches (DBOS recovers workflows only of known instances).
BEFORE_LAUNCH: dict[str, Callable[[Settings], object]] = {}


def register_replayer(
    flow: str,
    handler: ReplayHandler,
    *,
    before_launch: Callable[[Settings], object] | None = None,
) -> None:
    """Make `d365ct errors replay` able to re-drive entries of `flow`."""
    REPLAYERS[flow] = handler
    if before_launch is not None:
        BEFORE_LAUNCH[flow] = before_launch


def durable_flows(flows: Iterable[str]) -> list[str]:
    """Which of these flows need the workflow engine to replay."""
    return sorted({flow for flow in flows if flow in BEFORE_LAUNCH})


def prepare_durable(settings: Settings, flows: Iterable[str]) -> None:
    """Create the DBOS instances of `flows`; call before launch_engine."""
    for flow in durable_flows(flows):
        BEFORE_LAUNCH[flow](settings)


async def replay_entries(
    settings: Settings, engine: sa.Engine, entries: Sequence[ErrorEntry]
) -> list[ReplayOutcome]:
    """Replay each entry with its flow's handler; close those that went through as replayed.

    Entries that are not open are skipped; a flow without a handler is reported unsupported.
    The engine must be launched when a durable flow is among them (see prepare_durable).
    """
    queue = ErrorQueue(engine)
    outcomes: list[ReplayOutcome] = []
    for entry in entries:
        if entry.status != "open":
            outcomes.append(
                ReplayOutcome(entry.id, entry.flow, "skipped", f"entry is {entry.status}")
            )
            continue
        handler = REPLAYERS.get(entry.flow)
        if handler is None:
            known = ", ".join(sorted(REPLAYERS)) or "none"
            outcomes.append(
                ReplayOutcome(
                    entry.id,
                    entry.flow,
                    "unsupported",
                    f"no replay for flow '{entry.flow}' (replayable: {known}); fix the cause "
                    "and resolve it with a note",
                )
            )
            continue
        try:
            ok, detail = await handler(settings, entry)
        except (D365ctError, httpx.HTTPError, LookupError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        if ok:
            try:
                queue.close(entry.id, "replayed", note=f"replayed: {detail}"[:2000])
            except EntryClosedError as exc:  # resolved by someone while the replay ran
                detail = f"{detail}; the entry was meanwhile {exc.entry.status}"
        outcomes.append(ReplayOutcome(entry.id, entry.flow, "replayed" if ok else "failed", detail))
    return outcomes


# -- the handlers of U3, U4 and the intake -----------------------------------------------------


async def _replay_orders(settings: Settings, entry: ErrorEntry) -> tuple[bool, str]:
    from d365ct.flows.orders import replay_order, wired_flows

    return await replay_order(wired_flows(settings), entry.id)


async def _replay_customers(settings: Settings, entry: ErrorEntry) -> tuple[bool, str]:
    from d365ct.flows.customers import replay_customer
    from d365ct.flows.orders import wired_flows

    return await replay_customer(wired_flows(settings).customers, entry.id)


async def _replay_intake(settings: Settings, entry: ErrorEntry) -> tuple[bool, str]:
    """A delivery that could not be parsed: parse the stored body again (the parser may have
    been fixed, or the entry edited) and accept what now parses into the inbox."""
    from d365ct.intake import Inbox, IntakeMessage, MalformedMessageError, parse_body
    from d365ct.store import make_engine

    payload = entry.payload if isinstance(entry.payload, dict) else {}
    body = payload.get("body")
    if not isinstance(body, str) or payload.get("truncated"):
        return False, "the stored body is missing or truncated: ask the sender to deliver again"
    try:
        parsed = parse_body(body)
    except MalformedMessageError as exc:
        return False, f"still malformed: {exc.reason}"
    messages = [p for p in parsed if isinstance(p, IntakeMessage)]
    bad = [p for p in parsed if isinstance(p, MalformedMessageError)]
    if bad or not messages:
        reason = bad[0].reason if bad else "no message in the body"
        return False, f"still malformed: {reason}"
    engine = make_engine(settings.store.url)
    inbox = Inbox(engine)
    try:
        results = inbox.accept_many(messages, source=str(payload.get("source") or "replay"))
    finally:
        inbox.close()
        engine.dispose()
    return True, ", ".join(f"{r.message_id} {r.status}" for r in results)


def _commerce(settings: Settings) -> object:
    from d365ct.flows.orders import commerce_flows

    return commerce_flows(settings)


register_replayer("orders", _replay_orders, before_launch=_commerce)
register_replayer("customers", _replay_customers, before_launch=_commerce)
register_replayer("intake", _replay_intake)
