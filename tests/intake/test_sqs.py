"""The SQS consumer against moto in server mode: long polling, dedup, the error queue for
malformed messages, visibility extension, deletion only after a durable accept, graceful stop."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from moto.server import ThreadedMotoServer

from d365ct.config import IntakeSettings
from d365ct.intake import Inbox, SqsConsumer
from d365ct.intake.sqs import SqsClient, sqs_client_factory
from d365ct.store.error_queue import ErrorQueue
from tests.intake import samples

REGION = "eu-west-1"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto accepts any credentials; never let a developer's real ones near a test.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sqs(moto_endpoint: str) -> Any:
    return boto3.client("sqs", region_name=REGION, endpoint_url=moto_endpoint)


@pytest.fixture
def queue_url(sqs: Any) -> str:
    return str(sqs.create_queue(QueueName=f"ct-{uuid.uuid4().hex[:12]}")["QueueUrl"])


def settings(queue_url: str, endpoint: str, **kw: Any) -> IntakeSettings:
    values: dict[str, Any] = {
        "kind": "sqs",
        "sqs_queue_url": queue_url,
        "sqs_region": REGION,
        "sqs_endpoint_url": endpoint,
        "sqs_wait_seconds": 1,
        "sqs_visibility_timeout": 30,
    }
    values.update(kw)
    return IntakeSettings(**values)


def queue_depth(sqs: Any, queue_url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
    )


async def test_drains_the_queue_into_the_inbox(
    sqs: Any, queue_url: str, moto_endpoint: str, sqlite_inbox: Inbox, sqlite_engine: sa.Engine
) -> None:
    order = samples.order_created("o-1")
    bodies = [
        json.dumps(order),
        json.dumps(order),  # at-least-once: the same message again…
        json.dumps(samples.cloud_event(order)),  # …and once more, in a CloudEvent
        json.dumps(samples.customer_created("c-1")),
        json.dumps(samples.customer_address_added("c-1", seq=2)),
        json.dumps(samples.order_state_changed("o-1")),  # not handled: ignored
        "this is { not json",
    ]
    bodies += [json.dumps(samples.order_created(f"o-{i}")) for i in range(2, 14)]
    for body in bodies:
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)

    consumer = SqsConsumer(settings(queue_url, moto_endpoint), sqlite_inbox)
    totals = await asyncio.wait_for(consumer.run(until_empty=True), 60)

    assert totals.received == len(bodies) == 19
    assert (totals.accepted, totals.duplicate, totals.ignored, totals.malformed) == (15, 2, 1, 1)
    assert totals.settled == 19 and totals.failed == 0
    assert queue_depth(sqs, queue_url) == (0, 0)
    pending = sqlite_inbox.pending(limit=100)
    assert len(pending) == 15 and all(e.source == "sqs" for e in pending)
    [error] = ErrorQueue(sqlite_engine).list(flow="intake")
    assert error.payload["body"] == "this is { not json" and error.payload["source"] == "sqs"


class Recording:
    """An SQS client that records the calls it forwards to the real one."""

    def __init__(self, client: SqsClient) -> None:
        self._client = client
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("receive_message", kwargs))
        return await self._client.receive_message(**kwargs)

    async def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("delete_message_batch", kwargs))
        return await self._client.delete_message_batch(**kwargs)

    async def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        response = await self._client.change_message_visibility_batch(**kwargs)
        self.calls.append(("change_message_visibility_batch", {**kwargs, "response": response}))
        return response


class SlowInbox(Inbox):
    def __init__(self, engine: sa.Engine, delay: float) -> None:
        super().__init__(engine)
        self.delay = delay

    def accept_many(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.delay)
        return super().accept_many(*args, **kwargs)


async def test_visibility_is_extended_while_a_slow_batch_is_stored(
    sqs: Any, queue_url: str, moto_endpoint: str, sqlite_engine: sa.Engine
) -> None:
    for i in range(3):
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(samples.order_created(f"{i}")))
    config = settings(queue_url, moto_endpoint, sqs_visibility_timeout=2)
    real = sqs_client_factory(config)
    recorders: list[Recording] = []

    @asynccontextmanager
    async def factory() -> AsyncIterator[SqsClient]:
        async with real() as client:
            recorders.append(Recording(client))
            yield recorders[-1]

    inbox = SlowInbox(sqlite_engine, delay=1.5)
    consumer = SqsConsumer(config, inbox, client_factory=factory, heartbeat_seconds=0.4)
    totals = await asyncio.wait_for(consumer.run(until_empty=True), 60)
    assert totals.accepted == 3
    [recorder] = recorders
    names = [name for name, _ in recorder.calls]
    extensions = [kw for name, kw in recorder.calls if name == "change_message_visibility_batch"]
    assert len(extensions) >= 2
    assert all(not kw["response"].get("Failed") for kw in extensions)
    assert all(e["VisibilityTimeout"] == 2 for kw in extensions for e in kw["Entries"])
    # extended while storing, deleted after, never the other way round
    assert names.index("change_message_visibility_batch") < names.index("delete_message_batch")
    assert queue_depth(sqs, queue_url) == (0, 0)
    inbox.close()


async def test_nothing_is_deleted_when_the_store_fails(
    sqs: Any, queue_url: str, moto_endpoint: str, sqlite_inbox: Inbox, monkeypatch: Any
) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(samples.order_created("o-1")))

    def broken(*_a: Any, **_k: Any) -> Any:
        raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(sqlite_inbox, "accept_many", broken)
    consumer = SqsConsumer(settings(queue_url, moto_endpoint), sqlite_inbox)
    result = await asyncio.wait_for(consumer.run(until_empty=True), 60)
    assert (result.received, result.failed, result.settled) == (1, 1, 0)
    assert queue_depth(sqs, queue_url) == (0, 1)  # still there, invisible until redelivered


async def test_stop_ends_a_long_poll_promptly(
    queue_url: str, moto_endpoint: str, sqlite_inbox: Inbox
) -> None:
    consumer = SqsConsumer(settings(queue_url, moto_endpoint, sqs_wait_seconds=20), sqlite_inbox)
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(0.5)
    started = time.monotonic()
    consumer.stop()
    totals = await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 2
    assert totals.received == 0


def test_requires_a_queue_url(sqlite_inbox: Inbox) -> None:
    from d365ct.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="sqs_queue_url"):
        SqsConsumer(IntakeSettings(kind="sqs"), sqlite_inbox)
