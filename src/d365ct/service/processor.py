"""The service's inbox processor: drains the durable inbox continuously — customer sync (U4), then
order micro-batches (U3) — round after round, and stops after the round in hand.

Each round is ``process_inbox(..., wait=True, max_rounds=1)``: customers first, then orders held
open until ``[orders] max_orders`` per legal entity or ``max_wait_seconds`` after the oldest one
arrived. Several processes may run it on one PostgreSQL store: the inbox leases each message to
one worker (``FOR UPDATE SKIP LOCKED`` under an advisory lock), and a batch's DBOS workflow id
derives from its messages, so a message re-claimed after a lost lease rejoins its batch and no
order is posted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from d365ct.intake import Inbox
from d365ct.service import metrics

if TYPE_CHECKING:
    from d365ct.flows.orders import ProcessSummary

__all__ = ["IDLE_POLL_SECONDS", "InboxProcessor", "ProcessorStats", "worker_id"]

log = logging.getLogger("d365ct.service.processor")

IDLE_POLL_SECONDS: Final = 1.0  # between claim attempts while the inbox has nothing claimable
ERROR_BACKOFF_SECONDS: Final = 10.0  # after a round failed as a whole (store or engine trouble)


def worker_id() -> str:
    """Who leases the messages: host and process id, distinct per worker process."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class ProcessorStats:
    """What this process's processor did since it started (logged at stop)."""

    rounds: int = 0
    customer_messages: int = 0
    order_messages: int = 0
    orders_posted: int = 0
    orders_failed: int = 0
    failed_rounds: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "customer_messages": self.customer_messages,
            "order_messages": self.order_messages,
            "orders_posted": self.orders_posted,
            "orders_failed": self.orders_failed,
            "failed_rounds": self.failed_rounds,
            "last_error": self.last_error,
        }


class InboxProcessor:
    """Runs rounds until ``stop()``; ``running()`` is the service's Background for it.

    ``flows`` is the ``CommerceFlows`` of this process (``commerce_flows`` was called before the
    engine launched, so DBOS can recover batches). ``on_idle`` runs between rounds when nothing
    was claimable (the runner keeps the schedules' application version current with it).
    """

    def __init__(
        self,
        flows: Any,
        inbox: Inbox,
        *,
        worker: str | None = None,
        stop_timeout: float = 30.0,
        idle_seconds: float = IDLE_POLL_SECONDS,
        on_idle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.flows = flows
        self.inbox = inbox
        self.worker = worker or worker_id()
        self.stop_timeout = stop_timeout
        self.idle_seconds = idle_seconds
        self.on_idle = on_idle
        self.stats = ProcessorStats()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Finish the round in hand, then return from run()."""
        self._stop.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def run_round(self) -> bool:
        """One round; True when it did anything."""
        from d365ct.flows.orders import process_inbox

        summary = await process_inbox(
            self.flows, self.inbox, worker_id=self.worker, wait=True, max_rounds=1, stop=self._stop
        )
        counts = summary.counts()
        busy = summary.rounds > 0
        if busy:
            self.stats.rounds += 1
            self.stats.customer_messages += len(summary.customers)
            self.stats.order_messages += len(summary.orders)
            self.stats.orders_posted += int(counts["orders_posted"])
            self.stats.orders_failed += int(counts["orders_failed"])
            _record_round(summary)
            log.info("inbox round processed", extra={"worker": self.worker, **counts})
        return busy

    async def run(self) -> None:
        log.info("inbox processor started", extra={"worker": self.worker})
        try:
            while not self._stop.is_set():
                try:
                    busy = await self.run_round()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # The round's messages stay leased and are claimed again after the lease:
                    # nothing is lost, and their batch's workflow id keeps them from posting twice.
                    self.stats.failed_rounds += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception(
                        "an inbox round failed; retrying in %.0f s", ERROR_BACKOFF_SECONDS
                    )
                    await self._pause(ERROR_BACKOFF_SECONDS)
                    continue
                if not busy:
                    if self.on_idle is not None:
                        try:
                            await self.on_idle()
                        except Exception:
                            log.exception("the idle hook of the inbox processor failed")
                    await self._pause(self.idle_seconds)
        finally:
            from d365ct.flows.orders import close_clients

            with contextlib.suppress(Exception):
                await close_clients()
            log.info(
                "inbox processor stopped", extra={"worker": self.worker, **self.stats.as_dict()}
            )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self.run(), name="inbox-processor")
        try:
            yield
        finally:
            self.stop()
            try:
                await asyncio.wait_for(asyncio.shield(task), self.stop_timeout)
            except TimeoutError:
                # Cut short: the claimed messages stay leased until their lease ends and are
                # then claimed again (by this or another worker) into the same batch.
                log.warning(
                    "the inbox round in hand did not finish within %.0f s; its messages are "
                    "processed again after their lease",
                    self.stop_timeout,
                )
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            except Exception:
                log.exception("the inbox processor ended with an error")


def _record_round(summary: ProcessSummary) -> None:
    """Feed /metrics: records and failures per flow, and how long the round took."""
    for flow, results in (("customers", summary.customers), ("orders", summary.orders)):
        if results:
            metrics.record_records(flow, len(results))
            failed = sum(1 for result in results if result.status == "failed")
            if failed:
                metrics.record_failures(flow, failed)
    metrics.observe_step("orders", "inbox-round", summary.seconds)
