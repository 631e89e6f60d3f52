"""U3/U4 end to end through the real transports: commercetools messages pushed over HTTP to a
uvicorn server and sent through SQS (moto in server mode), every message delivered three times in
a shuffled order, then posted to d365sim; and bad input reaching the error queue with its reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from fastapi import FastAPI
from moto.server import ThreadedMotoServer

from d365ct.config import IntakeSettings
from d365ct.flows.orders import process_inbox
from d365ct.intake import Inbox, SqsConsumer, intake_router
from d365ct.mapping.orders import STATUS_FIELD
from tests.asgi_server import serve_in_thread
from tests.ct_fixtures import CtMock
from tests.flows.test_orders import (
    CommerceEnv,
    add_product,
    create_customer,
    ct_get,
    import_order,
    make_commerce_env,
    message,
    order_created,
    seed_commercetools,
)
from tests.sim_fixtures import RunningSim

TOKEN = "e2e-intake-token"
REGION = "eu-west-1"


@pytest.fixture
def env(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CommerceEnv]:
    yield from make_commerce_env(fresh_sim, ct_mock, tmp_path, monkeypatch)


@pytest.fixture
def intake_url(env: CommerceEnv) -> Iterator[str]:
    """The intake route on a real uvicorn server, storing into the environment's inbox."""
    app = FastAPI()
    app.include_router(intake_router(env.inbox, lambda: TOKEN))
    with serve_in_thread(app) as base_url:
        yield f"{base_url}/intake/commercetools"


@pytest.fixture
def sqs_queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str, str]]:
    # moto accepts any credentials; never let a developer's real ones near a test
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    url = str(sqs.create_queue(QueueName=f"ct-{uuid.uuid4().hex[:12]}")["QueueUrl"])
    yield sqs, url, endpoint
    server.stop()


async def drain_sqs(inbox: Inbox, sqs: Any, queue_url: str, endpoint: str) -> None:
    """Run the real SQS consumer until the queue is empty."""
    settings = IntakeSettings(
        kind="sqs",
        sqs_queue_url=queue_url,
        sqs_region=REGION,
        sqs_endpoint_url=endpoint,
        sqs_wait_seconds=1,
        sqs_visibility_timeout=30,
    )
    consumer = SqsConsumer(settings, inbox)
    task = asyncio.create_task(consumer.run())
    deadline = time.monotonic() + 60
    while True:
        attrs = sqs.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        waiting = attrs["ApproximateNumberOfMessages"]
        if waiting == "0" and attrs["ApproximateNumberOfMessagesNotVisible"] == "0":
            break
        assert time.monotonic() < deadline, "the SQS consumer did not drain the queue"
        await asyncio.sleep(0.2)
    consumer.stop()
    await asyncio.wait_for(task, 30)


async def test_every_message_three_times_shuffled_over_http_and_sqs_posts_each_once(
    env: CommerceEnv, intake_url: str, sqs_queue: tuple[Any, str, str]
) -> None:
    await seed_commercetools(env)
    customer = await create_customer(
        env,
        stores=[{"typeId": "store", "key": "us-store"}],
        addresses=[{"streetName": "Pine St", "city": "Seattle", "country": "US"}],
        defaultShippingAddress=0,
    )
    orders = [
        await import_order(env, [("D0001", 1 + n, 1000)], order_number=f"E2E-US{n}")
        for n in range(3)
    ]
    orders.append(
        await import_order(
            env, [("D0002", 2, 1500)], order_number="E2E-CUST", customer_id=customer["id"]
        )
    )
    orders += [
        await import_order(
            env,
            [("D0001", 1, 2500)],
            store="de-store",
            currency="EUR",
            country="DE",
            order_number=f"E2E-DE{n}",
        )
        for n in range(2)
    ]
    bodies = [order_created(env, order) for order in orders]
    bodies.append(
        message(env.mock.project_key, "customer", customer, "CustomerCreated", customer=customer)
    )
    deliveries = [body for body in bodies for _ in range(3)]
    random.Random(20_303).shuffle(deliveries)
    over_http, over_sqs = deliveries[::2], deliveries[1::2]

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for body in over_http:
            response = await client.post(intake_url, json=body)
            assert response.status_code == 200, response.text
    sqs, queue_url, endpoint = sqs_queue
    for body in over_sqs:
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(body))
    await drain_sqs(env.inbox, sqs, queue_url, endpoint)

    counts = env.inbox.counts()
    assert counts["pending"] == len(bodies) and counts["duplicates"] == 2 * len(bodies)
    summary = await process_inbox(env.flows, env.inbox, worker_id="e2e")
    again = await process_inbox(env.flows, env.inbox, worker_id="e2e")

    assert summary.counts()["orders_posted"] == len(orders), summary.as_dict()
    assert again.rounds == 0  # nothing left: every delivery was one message, processed once
    assert env.inbox.counts()["processed"] == len(bodies)
    for order in orders:
        headers, _ = env.order_in_d365(order["orderNumber"])
        assert len(headers) == 1, order["orderNumber"]  # exactly once
        current = await ct_get(env, "orders", order["id"])
        assert current["custom"]["fields"][STATUS_FIELD] == "posted"
    stats = env.sim_stats()
    # one customer import, one order package per legal entity
    assert stats["imports"] == 3 and stats["importOverlaps"] == 0
    assert env.errors.count_open() == 0


async def test_bad_input_reaches_the_error_queue_with_its_reason(
    env: CommerceEnv, intake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed_commercetools(env)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with env.ct() as ct:  # sold in the storefront, unknown to D365
        await add_product(ct, "ZZ404", {"ItemNumber": "ZZ404"})
    good = await import_order(env, [("D0001", 1, 1000)], order_number="BAD-GOOD")
    unknown_sku = await import_order(env, [("ZZ404", 1, 1000)], order_number="BAD-SKU")
    async with env.ct() as ct:
        await ct.create("stores", {"key": "fr-store", "name": {"en": "fr-store"}})
    unmapped = await import_order(
        env,
        [("D0001", 1, 1000)],
        order_number="BAD-STORE",
        store="fr-store",
        country="FR",
        shipping=False,
    )
    async with httpx.AsyncClient(headers=auth) as client:
        malformed = await client.post(
            intake_url, content=b'{"notificationType": "Message", "id": ', headers=auth
        )
        unknown_type = await client.post(
            intake_url,
            json=message(env.mock.project_key, "order", good, "OrderNoteAdded"),
        )
        for order in (good, unknown_sku, unmapped):
            pushed = await client.post(intake_url, json=order_created(env, order))
            assert pushed.json()["accepted"] == 1
    assert malformed.status_code == 400
    assert unknown_type.status_code == 200 and unknown_type.json()["ignored"] == 1

    summary = await process_inbox(env.flows, env.inbox, worker_id="e2e")

    assert summary.counts()["orders_posted"] == 1
    assert len(env.order_in_d365("BAD-GOOD")[0]) == 1  # the rest of the batch proceeded
    entries = {(e.flow, e.step): e for e in env.errors.list(status="open")}
    parse = entries[("intake", "parse")]
    assert "JSON" in parse.error or "json" in parse.error
    assert parse.payload["body"].startswith('{"notificationType"')
    d365 = entries[("orders", "import")]
    assert d365.business_key == "BAD-SKU"
    assert "ZZ404" in d365.error and "Released products" in d365.error  # D365's own text
    route = entries[("orders", "route")]
    assert route.business_key == "BAD-STORE" and "fr-store" in route.error
    # A type nobody handles is recorded as ignored, and named once in the error queue.
    unhandled = entries[("subscription", "accept")]
    assert unhandled.business_key == "message-type:OrderNoteAdded"
    assert "Narrow the Subscription" in unhandled.error
    assert len(entries) == 4
    assert env.inbox.counts()["ignored"] == 1


@pytest.fixture
def small_packages_env(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CommerceEnv]:
    from tests.flows.support import sim_settings

    d365 = sim_settings(fresh_sim.base_url).model_dump(mode="json")
    d365["package_max_bytes"] = 64 * 1024
    yield from make_commerce_env(fresh_sim, ct_mock, tmp_path, monkeypatch, d365=d365)


async def test_an_order_too_large_for_any_package_fails_alone(
    small_packages_env: CommerceEnv,
) -> None:
    env = small_packages_env
    await seed_commercetools(env)
    normal = await import_order(env, [("D0001", 1, 1000)], order_number="SIZE-OK")
    # 120 lines whose names are 1,000 random characters each: far above 64 KiB compressed
    huge_lines = [
        {
            "name": {"en": os.urandom(500).hex()},
            "variant": {"sku": "D0001"},
            "price": {"value": {"currencyCode": "USD", "centAmount": 100}},
            "quantity": 1,
        }
        for _ in range(120)
    ]
    async with env.ct() as ct:
        huge = dict(
            await ct.request(
                "POST",
                "orders/import",
                json={
                    "orderNumber": "SIZE-HUGE",
                    "store": {"typeId": "store", "key": "us-store"},
                    "totalPrice": {"currencyCode": "USD", "centAmount": 12_000},
                    "shippingAddress": {"country": "US"},
                    "lineItems": huge_lines,
                },
            )
        )
    for order in (normal, huge):
        env.deliver(order_created(env, order))

    summary = await process_inbox(env.flows, env.inbox, worker_id="e2e")

    assert summary.counts()["orders_posted"] == 1, summary.as_dict()
    assert len(env.order_in_d365("SIZE-OK")[0]) == 1
    assert env.order_in_d365("SIZE-HUGE") == ([], [])
    (entry,) = env.errors.list(status="open")
    assert entry.business_key == "SIZE-HUGE" and entry.step == "import"
    assert "PackageTooLargeError" in entry.error and "65536" in entry.error
    # queued at once: the same package would be too large on every retry
    assert env.inbox.counts()["pending"] == 0
    current = await ct_get(env, "orders", huge["id"])
    assert (current.get("custom") or {}).get("fields", {}).get(STATUS_FIELD) != "posted"
