"""The Service Bus consumer with the SDK's own message type and a fake peek-lock receiver:
complete after a durable accept, dead-letter poison, abandon on store failure, lock renewal."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from azure.servicebus import ServiceBusMessage

from d365ct.config import IntakeSettings
from d365ct.errors import ConfigurationError
from d365ct.intake import Inbox, ServiceBusConsumer
from d365ct.intake.servicebus import DEAD_LETTER_REASON, Receiver, message_body
from d365ct.store.error_queue import ErrorQueue
from tests.intake import samples

SETTINGS = IntakeSettings(kind="servicebus")


class FakeReceiver:
    """A peek-lock receiver over prepared batches, recording every settlement and renewal."""

    def __init__(self, batches: list[list[ServiceBusMessage]]) -> None:
        self.batches = list(batches)
        self.calls: list[tuple[str, Any]] = []
        self.completed: list[ServiceBusMessage] = []
        self.dead_lettered: list[tuple[ServiceBusMessage, str | None, str | None]] = []
        self.abandoned: list[ServiceBusMessage] = []
        self.renewed: list[ServiceBusMessage] = []

    async def receive_messages(
        self, max_message_count: int | None = 1, max_wait_time: float | None = None
    ) -> list[Any]:
        self.calls.append(("receive", (max_message_count, max_wait_time)))
        if not self.batches:
            await asyncio.sleep(min(max_wait_time or 0, 0.05))
            return []
        batch = self.batches.pop(0)
        assert max_message_count is not None and len(batch) <= max_message_count
        return batch

    async def complete_message(self, message: Any) -> None:
        self.calls.append(("complete", message))
        self.completed.append(message)

    async def abandon_message(self, message: Any) -> None:
        self.calls.append(("abandon", message))
        self.abandoned.append(message)

    async def dead_letter_message(
        self, message: Any, reason: str | None = None, error_description: str | None = None
    ) -> None:
        self.calls.append(("dead_letter", message))
        self.dead_lettered.append((message, reason, error_description))

    async def renew_message_lock(self, message: Any) -> None:
        self.calls.append(("renew", message))
        self.renewed.append(message)


class FakeRenewer:
    """Renews each registered message's lock every ``period`` until it is settled, as the
    SDK's AutoLockRenewer does (which only accepts messages received from a real broker)."""

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.registered: list[Any] = []
        self.closed = False
        self._tasks: list[asyncio.Task[None]] = []

    def register(
        self, receiver: Any, renewable: Any, max_lock_renewal_duration: float | None = None
    ) -> None:
        assert max_lock_renewal_duration == 300.0
        self.registered.append(renewable)
        self._tasks.append(asyncio.ensure_future(self._renew(receiver, renewable)))

    async def _renew(self, receiver: FakeReceiver, message: Any) -> None:
        while True:
            await asyncio.sleep(self.period)
            settled = {id(m) for m in receiver.completed + receiver.abandoned} | {
                id(m) for m, _, _ in receiver.dead_lettered
            }
            if id(message) in settled:
                return
            await receiver.renew_message_lock(message)

    async def close(self) -> None:
        self.closed = True
        for task in self._tasks:
            task.cancel()


def consumer_for(
    receiver: FakeReceiver, inbox: Inbox, renewer: FakeRenewer | None = None
) -> tuple[ServiceBusConsumer, FakeRenewer]:
    renewer = renewer or FakeRenewer()

    @asynccontextmanager
    async def factory() -> AsyncIterator[Receiver]:
        yield receiver

    consumer = ServiceBusConsumer(
        SETTINGS,
        inbox,
        receiver_factory=factory,
        renewer_factory=lambda: renewer,
        max_messages=10,
        max_wait_seconds=0.05,
    )
    return consumer, renewer


async def test_completes_after_accept_and_dead_letters_poison(
    sqlite_inbox: Inbox, sqlite_engine: sa.Engine
) -> None:
    order = samples.order_created("o-1")
    good = ServiceBusMessage(json.dumps(order), message_id=order["id"])
    duplicate = ServiceBusMessage(json.dumps(order).encode(), message_id=order["id"])
    cloud = ServiceBusMessage(json.dumps(samples.cloud_event(samples.customer_created("c-1"))))
    ignored = ServiceBusMessage(json.dumps(samples.order_state_changed("o-1")))
    poison = ServiceBusMessage("<xml>not a commercetools message</xml>")
    missing = ServiceBusMessage(json.dumps({**order, "id": "m-x", "sequenceNumber": None}))
    receiver = FakeReceiver([[good, duplicate, cloud], [ignored, poison, missing]])
    consumer, renewer = consumer_for(receiver, sqlite_inbox)

    totals = await asyncio.wait_for(consumer.run(until_empty=True), 10)

    assert (totals.received, totals.accepted, totals.duplicate, totals.ignored) == (6, 2, 1, 1)
    assert (totals.malformed, totals.settled, totals.failed) == (2, 6, 0)
    assert receiver.completed == [good, duplicate, cloud, ignored]
    assert [(m, r) for m, r, _ in receiver.dead_lettered] == [
        (poison, DEAD_LETTER_REASON),
        (missing, DEAD_LETTER_REASON),
    ]
    assert "not JSON" in (receiver.dead_lettered[0][2] or "")
    assert "sequenceNumber" in (receiver.dead_lettered[1][2] or "")
    assert receiver.abandoned == []
    assert renewer.registered == [good, duplicate, cloud, ignored, poison, missing]
    assert renewer.closed
    assert len(sqlite_inbox.pending()) == 2
    errors = ErrorQueue(sqlite_engine).list(flow="intake")
    assert {e.business_key for e in errors} >= {"m-x"}
    assert all(e.payload["source"] == "servicebus" for e in errors)


async def test_settlement_comes_only_after_the_batch_is_stored(sqlite_inbox: Inbox) -> None:
    order = samples.order_created("o-1")
    receiver = FakeReceiver([[ServiceBusMessage(json.dumps(order))]])
    seen: list[list[str]] = []
    real_accept = sqlite_inbox.accept_many

    def accept_and_look(*args: Any, **kwargs: Any) -> Any:
        seen.append([name for name, _ in receiver.calls])
        return real_accept(*args, **kwargs)

    sqlite_inbox.accept_many = accept_and_look  # type: ignore[method-assign]
    consumer, _ = consumer_for(receiver, sqlite_inbox)
    await asyncio.wait_for(consumer.run(until_empty=True), 10)
    assert seen == [["receive"]]  # nothing settled before the accept
    assert sqlite_inbox.get(order["id"]) is not None
    assert [name for name, _ in receiver.calls][:2] == ["receive", "complete"]


async def test_locks_are_renewed_while_a_slow_store_works(
    sqlite_inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = ServiceBusMessage(json.dumps(samples.order_created("o-1")))
    receiver = FakeReceiver([[message]])
    real_accept = sqlite_inbox.accept_many

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.4)
        return real_accept(*args, **kwargs)

    monkeypatch.setattr(sqlite_inbox, "accept_many", slow)
    consumer, _ = consumer_for(receiver, sqlite_inbox)
    await asyncio.wait_for(consumer.run(until_empty=True), 10)
    assert len(receiver.renewed) >= 3
    names = [name for name, _ in receiver.calls]
    assert names.index("complete") > max(i for i, n in enumerate(names) if n == "renew")


async def test_store_failure_abandons_for_redelivery(
    sqlite_inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = [ServiceBusMessage(json.dumps(samples.order_created(f"o-{i}"))) for i in range(3)]
    receiver = FakeReceiver([messages])

    def broken(*_a: Any, **_k: Any) -> Any:
        raise sa.exc.OperationalError("INSERT", {}, Exception("connection refused"))

    monkeypatch.setattr(sqlite_inbox, "accept_many", broken)
    consumer, _ = consumer_for(receiver, sqlite_inbox)
    totals = await asyncio.wait_for(consumer.run(until_empty=True), 10)
    assert totals.failed == 3 and totals.settled == 0
    assert receiver.abandoned == messages
    assert receiver.completed == [] and receiver.dead_lettered == []


async def test_stop_returns_between_receives(sqlite_inbox: Inbox) -> None:
    receiver = FakeReceiver([])
    consumer, renewer = consumer_for(receiver, sqlite_inbox)
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(0.2)
    consumer.stop()
    await asyncio.wait_for(task, 2)
    assert renewer.closed
    assert sum(1 for name, _ in receiver.calls if name == "receive") >= 2


def test_message_body_of_every_body_type() -> None:
    assert message_body(ServiceBusMessage("text")) == b"text"
    assert message_body(ServiceBusMessage(b"bytes")) == b"bytes"

    value_body = SimpleNamespace(body={"a": 1})  # an AMQP value body
    assert json.loads(message_body(value_body)) == {"a": 1}


def test_real_use_needs_connection_and_queue(sqlite_inbox: Inbox) -> None:
    with pytest.raises(ConfigurationError, match="servicebus_connection"):
        ServiceBusConsumer(IntakeSettings(kind="servicebus"), sqlite_inbox)
    # configured: the SDK receiver is only built when run() starts
    ServiceBusConsumer(
        IntakeSettings(
            kind="servicebus", servicebus_connection="env:SB_CONN", servicebus_queue="ct"
        ),
        sqlite_inbox,
    )
