"""Azure Service Bus intake (azure-servicebus aio): peek-lock receive from a commercetools
Subscription queue, store in the durable inbox, then complete; poison messages are dead-lettered.

Real use: create a Service Bus queue, give commercetools a Subscription with an
``AzureServiceBus`` destination (``connectionString`` of a *Send* SAS policy on that queue),
and configure d365ct with a *Listen* policy::

    [intake]
    kind = "servicebus"
    servicebus_connection = "env:D365CT_SERVICEBUS"   # Endpoint=sb://…;SharedAccessKeyName=…
    servicebus_queue = "commercetools"

Each receive takes up to ``max_messages`` in peek-lock mode. Every message is registered with
an ``AutoLockRenewer`` so its lock outlives a slow store, then the batch is stored in one
transaction and each message completed. Malformed messages are recorded in the error queue
*and* dead-lettered (reason ``MalformedMessage``, the parse error as description), so neither
the broker nor the operator loses them. If the store fails, the batch is abandoned: Service Bus
redelivers it and, after the queue's MaxDeliveryCount, dead-letters it itself. Settlement
failures (a lock lost) are logged; the redelivery is deduplicated by the inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, Protocol

from d365ct.config import IntakeSettings
from d365ct.errors import ConfigurationError
from d365ct.intake.inbox import Inbox
from d365ct.intake.messages import IntakeMessage, MalformedMessageError, parse_message
from d365ct.intake.sqs import BatchResult

__all__ = ["DEAD_LETTER_REASON", "LockRenewer", "Receiver", "ServiceBusConsumer"]

log = logging.getLogger(__name__)

DEAD_LETTER_REASON: Final = "MalformedMessage"
_MAX_DESCRIPTION = 1024  # dead-letter properties are headers: keep them short


class Receiver(Protocol):
    """The part of ``azure.servicebus.aio.ServiceBusReceiver`` the consumer uses."""

    async def receive_messages(
        self, max_message_count: int | None = 1, max_wait_time: float | None = None
    ) -> list[Any]: ...

    async def complete_message(self, message: Any) -> None: ...

    async def abandon_message(self, message: Any) -> None: ...

    async def dead_letter_message(
        self, message: Any, reason: str | None = None, error_description: str | None = None
    ) -> None: ...


class LockRenewer(Protocol):
    """The part of ``azure.servicebus.aio.AutoLockRenewer`` the consumer uses."""

    def register(
        self, receiver: Any, renewable: Any, max_lock_renewal_duration: float | None = None
    ) -> None: ...

    async def close(self) -> None: ...


ReceiverFactory = Callable[[], AbstractAsyncContextManager[Receiver]]


def _sdk_receiver_factory(settings: IntakeSettings, prefetch: int) -> ReceiverFactory:
    if settings.servicebus_connection is None or not settings.servicebus_queue:
        raise ConfigurationError(
            "intake.servicebus_connection and intake.servicebus_queue: required when "
            "intake.kind = 'servicebus'"
        )
    connection = settings.servicebus_connection
    queue = settings.servicebus_queue

    @asynccontextmanager
    async def factory() -> AsyncIterator[Receiver]:
        from azure.servicebus import ServiceBusReceiveMode
        from azure.servicebus.aio import ServiceBusClient

        async with (
            ServiceBusClient.from_connection_string(connection.resolve()) as client,
            client.get_queue_receiver(
                queue, receive_mode=ServiceBusReceiveMode.PEEK_LOCK, prefetch_count=prefetch
            ) as receiver,
        ):
            yield receiver

    return factory


def _sdk_renewer() -> LockRenewer:
    from azure.servicebus.aio import AutoLockRenewer

    renewer: LockRenewer = AutoLockRenewer()
    return renewer


def message_body(message: Any) -> bytes:
    """The body of a Service Bus message as bytes, whatever its AMQP body type."""
    body = message.body
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, dict | list):  # an AMQP value body
        return json.dumps(body).encode("utf-8")
    if isinstance(body, Iterable):  # data body: a generator of byte sections
        return b"".join(bytes(part) for part in body)
    return str(body).encode("utf-8")


class ServiceBusConsumer:
    """Consumes a Service Bus queue into ``inbox``; ``await run()``, then ``stop()``."""

    def __init__(
        self,
        settings: IntakeSettings,
        inbox: Inbox,
        *,
        receiver_factory: ReceiverFactory | None = None,
        renewer_factory: Callable[[], LockRenewer] = _sdk_renewer,
        max_messages: int = 50,
        max_wait_seconds: float = 5.0,
        max_lock_renewal_seconds: float = 300.0,
        error_backoff_seconds: float = 5.0,
        source: str = "servicebus",
    ) -> None:
        self._inbox = inbox
        self._receiver_factory = receiver_factory or _sdk_receiver_factory(settings, max_messages)
        self._renewer_factory = renewer_factory
        self.max_messages = max_messages
        self.max_wait_seconds = max_wait_seconds
        self.max_lock_renewal_seconds = max_lock_renewal_seconds
        self.error_backoff_seconds = error_backoff_seconds
        self.source = source
        self._stop = asyncio.Event()
        self.totals = BatchResult()

    def stop(self) -> None:
        """Finish the batch in hand, then return from ``run``."""
        self._stop.set()

    async def run(self, *, until_empty: bool = False) -> BatchResult:
        """Receive until ``stop()`` (or, with ``until_empty``, until a receive comes back empty).

        A receive waits at most ``max_wait_seconds``, so a stop takes effect within that.
        """
        self._stop.clear()
        renewer = self._renewer_factory()
        try:
            async with self._receiver_factory() as receiver:
                while not self._stop.is_set():
                    try:
                        batch = await receiver.receive_messages(
                            max_message_count=self.max_messages,
                            max_wait_time=self.max_wait_seconds,
                        )
                    except Exception:
                        log.exception("Service Bus receive failed")
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._stop.wait(), self.error_backoff_seconds)
                        continue
                    if not batch:
                        if until_empty:
                            break
                        continue
                    self.totals += await self.process(receiver, renewer, batch)
        finally:
            await renewer.close()
        return self.totals

    async def process(
        self, receiver: Receiver, renewer: LockRenewer, batch: list[Any]
    ) -> BatchResult:
        """Store one received batch durably, then settle every message of it."""
        result = BatchResult(received=len(batch))
        for message in batch:
            renewer.register(
                receiver, message, max_lock_renewal_duration=self.max_lock_renewal_seconds
            )
        good: list[tuple[Any, IntakeMessage]] = []
        bad: list[tuple[Any, MalformedMessageError]] = []
        for message in batch:
            try:
                good.append((message, parse_message(message_body(message))))
            except MalformedMessageError as exc:
                bad.append((message, exc))
        try:
            accepted = await asyncio.to_thread(
                self._inbox.accept_many, [m for _, m in good], source=self.source
            )
            for _, err in bad:
                await asyncio.to_thread(self._inbox.reject_error, err, source=self.source)
        except Exception:
            log.exception("intake store unavailable: %d Service Bus messages abandoned", len(batch))
            for message in batch:
                await self._settle(receiver.abandon_message(message))
            result.failed = len(batch)
            return result
        for r in accepted:
            setattr(result, r.status, getattr(result, r.status) + 1)
        result.malformed = len(bad)
        for message, _ in good:
            result.settled += await self._settle(receiver.complete_message(message))
        for message, err in bad:
            result.settled += await self._settle(
                receiver.dead_letter_message(
                    message,
                    reason=DEAD_LETTER_REASON,
                    error_description=err.reason[:_MAX_DESCRIPTION],
                )
            )
        return result

    @staticmethod
    async def _settle(call: Any) -> int:
        try:
            await call
        except Exception:
            # A lost lock means redelivery, which the inbox deduplicates: log, do not fail.
            log.warning("Service Bus settlement failed", exc_info=True)
            return 0
        return 1
