"""AWS SQS intake (aiobotocore): long-poll a commercetools Subscription queue, store each batch
in the durable inbox, then delete it; malformed messages go to the error queue and are deleted.

Credentials come from the usual AWS chain (environment, shared config, instance role). Messages
stay invisible while a batch is processed: a heartbeat extends their visibility timeout
(``ChangeMessageVisibilityBatch``) every half timeout, so a slow database never lets SQS hand
the same batch to a second consumer mid-way. A message is deleted only after the inbox
committed it; if the store fails, nothing is deleted and SQS redelivers after the timeout (the
inbox deduplicates). ``stop()`` ends the loop after the batch in hand; a long poll in progress
is cancelled, which loses nothing (what SQS sent is redelivered after the timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, fields
from typing import Any, Protocol

from d365ct.config import IntakeSettings
from d365ct.errors import ConfigurationError
from d365ct.intake.inbox import Inbox
from d365ct.intake.messages import IntakeMessage, MalformedMessageError, parse_message

__all__ = ["BatchResult", "SqsClient", "SqsConsumer", "sqs_client_factory"]

log = logging.getLogger(__name__)

_SQS_MAX_BATCH = 10  # ReceiveMessage, DeleteMessageBatch and ChangeMessageVisibilityBatch cap


class SqsClient(Protocol):
    """The part of an aiobotocore SQS client we use (aiobotocore ships no type hints)."""

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]: ...

    async def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]: ...

    async def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]: ...


SqsClientFactory = Callable[[], AbstractAsyncContextManager[SqsClient]]


@dataclass
class BatchResult:
    """What became of the messages of one receive (or, summed, of a whole run)."""

    received: int = 0
    accepted: int = 0
    duplicate: int = 0
    stale: int = 0
    ignored: int = 0
    malformed: int = 0
    settled: int = 0  # deleted (SQS) / completed or dead-lettered (Service Bus)
    failed: int = 0  # not stored (store down): left for redelivery

    def __iadd__(self, other: BatchResult) -> BatchResult:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


def sqs_client_factory(settings: IntakeSettings) -> SqsClientFactory:
    @asynccontextmanager
    async def factory() -> AsyncIterator[SqsClient]:
        from aiobotocore.session import get_session

        session = get_session()
        async with session.create_client(
            "sqs", region_name=settings.sqs_region, endpoint_url=settings.sqs_endpoint_url
        ) as client:
            yield client

    return factory


class SqsConsumer:
    """Consumes ``settings.sqs_queue_url`` into ``inbox``; ``await run()``, then ``stop()``."""

    def __init__(
        self,
        settings: IntakeSettings,
        inbox: Inbox,
        *,
        client_factory: SqsClientFactory | None = None,
        batch_size: int = _SQS_MAX_BATCH,
        heartbeat_seconds: float | None = None,
        error_backoff_seconds: float = 5.0,
        source: str = "sqs",
    ) -> None:
        if not settings.sqs_queue_url:
            raise ConfigurationError("intake.sqs_queue_url: required when intake.kind = 'sqs'")
        if not 1 <= batch_size <= _SQS_MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{_SQS_MAX_BATCH}, got {batch_size}")
        self.queue_url: str = settings.sqs_queue_url
        self.wait_seconds = settings.sqs_wait_seconds
        self.visibility_timeout = settings.sqs_visibility_timeout
        self.heartbeat_seconds = heartbeat_seconds or max(1.0, self.visibility_timeout / 2)
        self.batch_size = batch_size
        self.error_backoff_seconds = error_backoff_seconds
        self.source = source
        self._inbox = inbox
        self._client_factory = client_factory or sqs_client_factory(settings)
        self._stop = asyncio.Event()
        self.totals = BatchResult()

    def stop(self) -> None:
        """Finish the batch in hand, then return from ``run``."""
        self._stop.set()

    async def run(self, *, until_empty: bool = False) -> BatchResult:
        """Poll until ``stop()`` (or, with ``until_empty``, until a receive comes back empty)."""
        self._stop.clear()
        async with self._client_factory() as client:
            while not self._stop.is_set():
                receive = asyncio.ensure_future(self._receive(client))
                stopping = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({receive, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not receive.done():
                    receive.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await receive
                    break
                try:
                    messages = receive.result()
                except Exception:
                    # Network or credentials: keep the service up and try again, slowly.
                    log.exception("SQS receive from %s failed", self.queue_url)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self.error_backoff_seconds)
                    continue
                if not messages:
                    if until_empty:
                        break
                    continue
                self.totals += await self.process(client, messages)
        return self.totals

    async def _receive(self, client: SqsClient) -> list[dict[str, Any]]:
        response = await client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=self.wait_seconds,
            VisibilityTimeout=self.visibility_timeout,
        )
        return list(response.get("Messages", []))

    async def _heartbeat(self, client: SqsClient, handles: list[str]) -> None:
        entries = [
            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": self.visibility_timeout}
            for i, h in enumerate(handles)
        ]
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            try:
                await client.change_message_visibility_batch(
                    QueueUrl=self.queue_url, Entries=entries
                )
            except Exception:
                # The batch goes on; at worst SQS redelivers and the inbox deduplicates.
                log.warning("SQS visibility extension failed", exc_info=True)

    async def process(self, client: SqsClient, messages: list[dict[str, Any]]) -> BatchResult:
        """Store one received batch durably, then delete it from the queue."""
        result = BatchResult(received=len(messages))
        heartbeat = asyncio.create_task(
            self._heartbeat(client, [m["ReceiptHandle"] for m in messages])
        )
        try:
            good: list[IntakeMessage] = []
            bad: list[MalformedMessageError] = []
            for m in messages:
                try:
                    good.append(parse_message(m.get("Body", "")))
                except MalformedMessageError as exc:
                    bad.append(exc)
            try:
                accepted = await asyncio.to_thread(
                    self._inbox.accept_many, good, source=self.source
                )
                for err in bad:
                    await asyncio.to_thread(self._inbox.reject_error, err, source=self.source)
            except Exception:
                log.exception("intake store unavailable: %d SQS messages left", len(messages))
                result.failed = len(messages)
                return result
            for r in accepted:
                setattr(result, r.status, getattr(result, r.status) + 1)
            result.malformed = len(bad)
            result.settled = await self._delete(client, [m["ReceiptHandle"] for m in messages])
            return result
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _delete(self, client: SqsClient, handles: list[str]) -> int:
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
        try:
            response = await client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        except Exception:
            log.warning("SQS delete failed; the messages will be redelivered", exc_info=True)
            return 0
        failed = response.get("Failed", [])
        for entry in failed:
            log.warning("SQS delete failed for one message: %s", entry.get("Message"))
        return len(response.get("Successful", []))
