"""B5: intake — durable accept of commercetools messages (dedup) on SQLite and PostgreSQL.

20,000 platform-format messages (OrderCreated and CustomerCreated, 2–4 KB each, unique ids)
plus 10 % duplicate deliveries, each duplicate redelivered later than its original.

Ours, on a fresh store per run (SQLite file, then a scratch PostgreSQL database):

* **batched**: bodies parsed with ``parse_message`` and accepted with ``Inbox.accept_many`` in
  batches of 10, as one SQS consumer does with each receive;
* **http**: a uvicorn server (in a thread of this process) serving ``intake_router`` with a
  bearer token, to which httpx posts Event Grid batches of 10 CloudEvents (the format
  commercetools sends to Event Grid).

Round trips are the inbox's own count (``Inbox.stats.round_trips``); duplicates detected are
the inbox's ``stats.duplicate`` and must equal the duplicates injected. Latency is per accept
call (one batch of 10): ``accept_many`` in-process, the whole POST over HTTP.

Naive: one transaction per message, a ``SELECT`` for the id and an ``INSERT`` when it is absent,
on a table of its own shaped like ``intake_messages`` (SQLAlchemy Core, the same engine settings
as the store), with round trips counted by the same rules as the inbox's counter.

Workflow start is not part of accept in the intake design (``d365ct.intake.inbox``: a flow
consumer claims accepted messages and starts one DBOS workflow per message, workflow id = the
message id). Its cost is measured on its own: ``launch_engine`` on the same kind of store,
then ``DBOS.start_workflow`` of a trivial workflow under ``SetWorkflowID(message id)`` for
2,000 messages plus 10 % repeated starts, which DBOS must deduplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import sqlalchemy as sa
from dbos import DBOS, SetWorkflowID
from sqlalchemy import event

from bench.common import per_second, progress, result_line, scaled

if TYPE_CHECKING:
    from d365ct.intake import Inbox

BENCH_ID = "B5"
FULL_MESSAGES = 20_000
FULL_WORKFLOWS = 2_000
MIN_MESSAGES = 50
MIN_WORKFLOWS = 20
DUPLICATE_SHARE = 0.10
BATCH = 10  # an SQS receive returns at most 10 messages; Event Grid batches likewise here
HTTP_SENDERS = 1  # one sender: the HTTP figures differ from `batched` by the HTTP layer only
ORDER_SHARE = 0.6
SEED = 20_505
TOKEN = "b5-bench-intake-token"
PG_ADMIN_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CREATED_AT = "2026-03-02T10:15:30.123Z"
PROJECT = "acme-bench"
GOAL = (
    "intake: durable accept (dedup) of 20,000 messages + 10 % duplicates reported in"
    " messages/s on SQLite and PostgreSQL with the cost per message in database round trips;"
    " every duplicate detected; round trips per message <= one transaction per message with"
    " SELECT-then-INSERT dedup"
)


# ---------------------------------------------------------------------------------------------
# The deliveries


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _money(cents: int, currency: str = "USD") -> dict[str, Any]:
    return {
        "type": "centPrecision",
        "currencyCode": currency,
        "centAmount": cents,
        "fractionDigits": 2,
    }


def _address(rng: random.Random, key: str) -> dict[str, Any]:
    city = rng.choice(["Redmond", "Seattle", "Portland", "Boise", "Denver", "Austin"])
    return {
        "id": _uuid(rng)[:8],
        "key": key,
        "firstName": rng.choice(["Jane", "John", "Ana", "Lee", "Sam"]),
        "lastName": rng.choice(["Doe", "Smith", "Garcia", "Nguyen", "Müller"]),
        "streetName": rng.choice(["Main Street", "Oak Avenue", "Pine Road", "Lake Drive"]),
        "streetNumber": str(rng.randint(1, 999)),
        "postalCode": f"{rng.randint(10000, 99999)}",
        "city": city,
        "state": rng.choice(["WA", "OR", "ID", "CO", "TX"]),
        "country": "US",
        "phone": f"+1 425 555 {rng.randint(1000, 9999)}",
        "email": f"{key}@example.com",
    }


def _who(rng: random.Random) -> dict[str, Any]:
    return {"isPlatformClient": True, "clientId": f"client-{rng.randint(1, 9)}"}


def _envelope(
    rng: random.Random, type_: str, resource_type: str, resource_id: str, **fields: Any
) -> dict[str, Any]:
    """A platform-format MessageDeliveryPayload (notificationType Message)."""
    return {
        "notificationType": "Message",
        "projectKey": PROJECT,
        "id": _uuid(rng),
        "version": 1,
        "sequenceNumber": 1,
        "resource": {"typeId": resource_type, "id": resource_id},
        "resourceVersion": 1,
        "resourceUserProvidedIdentifiers": fields.pop("identifiers", {}),
        "type": type_,
        "createdAt": CREATED_AT,
        "lastModifiedAt": CREATED_AT,
        "createdBy": _who(rng),
        "lastModifiedBy": _who(rng),
        **fields,
    }


def _order_created(rng: random.Random, n: int) -> dict[str, Any]:
    order_id = _uuid(rng)
    number = f"SO-{100000 + n}"
    lines = []
    total = 0
    for i in range(rng.randint(1, 3)):
        cents = rng.randint(499, 19999)
        quantity = rng.randint(1, 5)
        total += cents * quantity
        sku = f"SKU-{rng.randint(1, 5000):05d}-{rng.choice(['S', 'M', 'L', 'XL'])}"
        lines.append(
            {
                "id": _uuid(rng),
                "productId": _uuid(rng),
                "name": {"en": f"Product {sku}"},
                "productType": {"typeId": "product-type", "id": "pt-apparel"},
                "variant": {
                    "id": 1 + i,
                    "sku": sku,
                    "key": sku.lower(),
                    "attributes": [{"name": "color", "value": "blue"}],
                },
                "price": {"id": _uuid(rng)[:13], "value": _money(cents)},
                "quantity": quantity,
                "totalPrice": _money(cents * quantity),
                "lineItemMode": "Standard",
                "priceMode": "Platform",
            }
        )
    order = {
        "id": order_id,
        "version": 1,
        "orderNumber": number,
        "customerId": _uuid(rng),
        "customerEmail": f"customer{n}@example.com",
        "store": {"typeId": "store", "key": rng.choice(["us-store", "eu-store"])},
        "country": "US",
        "lineItems": lines,
        "totalPrice": _money(total),
        "taxedPrice": {
            "totalNet": _money(total),
            "totalGross": _money(round(total * 1.08)),
            "totalTax": _money(round(total * 0.08)),
        },
        "shippingAddress": _address(rng, f"ship-{n}"),
        "billingAddress": _address(rng, f"bill-{n}"),
        "shippingMode": "Single",
        "orderState": "Open",
        "paymentState": "Pending",
        "taxMode": "Platform",
        "taxRoundingMode": "HalfEven",
        "origin": "Customer",
        "createdAt": CREATED_AT,
        "lastModifiedAt": CREATED_AT,
    }
    return _envelope(
        rng, "OrderCreated", "order", order_id, identifiers={"orderNumber": number}, order=order
    )


def _customer_created(rng: random.Random, n: int) -> dict[str, Any]:
    customer_id = _uuid(rng)
    addresses = [_address(rng, f"c{n}-a{i}") for i in range(rng.randint(3, 6))]
    customer = {
        "id": customer_id,
        "version": 1,
        "key": f"customer-{n}",
        "customerNumber": f"C-{200000 + n}",
        "email": f"customer{n}@example.com",
        "firstName": addresses[0]["firstName"],
        "lastName": addresses[0]["lastName"],
        "companyName": f"Company {n} Inc.",
        "vatId": f"US{rng.randint(10**8, 10**9 - 1)}",
        "addresses": addresses,
        "defaultShippingAddressId": addresses[0]["id"],
        "defaultBillingAddressId": addresses[-1]["id"],
        "shippingAddressIds": [a["id"] for a in addresses[:-1]],
        "billingAddressIds": [addresses[-1]["id"]],
        "isEmailVerified": False,
        "customerGroup": {"typeId": "customer-group", "id": "b2b"},
        "stores": [{"typeId": "store", "key": "us-store"}],
        "custom": {
            "type": {"typeId": "type", "id": "customer-ext"},
            "fields": {"d365CustomerAccount": "", "segment": rng.choice(["retail", "b2b"])},
        },
        "authenticationMode": "Password",
        "createdAt": CREATED_AT,
        "lastModifiedAt": CREATED_AT,
    }
    return _envelope(
        rng,
        "CustomerCreated",
        "customer",
        customer_id,
        identifiers={"key": f"customer-{n}", "customerNumber": customer["customerNumber"]},
        customer=customer,
    )


def _cloud_event(message: dict[str, Any]) -> dict[str, Any]:
    """A platform payload as commercetools sends it to Event Grid: a CloudEvent."""
    resource = message["resource"]
    return {
        "specversion": "1.0",
        "id": message["id"],
        "type": f"com.commercetools.{resource['typeId']}.message.{message['type']}",
        "source": f"/{PROJECT}/{resource['typeId']}s",
        "subject": resource["id"],
        "time": CREATED_AT,
        "sequence": str(message["sequenceNumber"]),
        "sequencetype": "Integer",
        "dataref": f"/{PROJECT}/messages/{message['id']}",
        "data": message,
    }


@dataclass
class Corpus:
    messages: list[dict[str, Any]]
    order: list[int]  # delivery order: indexes into messages, duplicates included
    bodies: list[bytes]  # platform-format JSON per delivery (the SQS body)

    @property
    def unique(self) -> int:
        return len(self.messages)

    @property
    def deliveries(self) -> int:
        return len(self.order)

    @property
    def duplicates(self) -> int:
        return len(self.order) - len(self.messages)

    def batches(self) -> list[list[bytes]]:
        return [self.bodies[i : i + BATCH] for i in range(0, len(self.bodies), BATCH)]

    def event_grid_batches(self) -> list[bytes]:
        events = [json.dumps(_cloud_event(self.messages[i])).encode() for i in self.order]
        return [
            b"[" + b",".join(events[i : i + BATCH]) + b"]" for i in range(0, len(events), BATCH)
        ]

    def figures(self) -> dict[str, Any]:
        sizes = [len(b) for b in self.bodies]
        types = [self.messages[i]["type"] for i in range(self.unique)]
        return {
            "messages": self.unique,
            "duplicates_injected": self.duplicates,
            "deliveries": self.deliveries,
            "order_created": types.count("OrderCreated"),
            "customer_created": types.count("CustomerCreated"),
            "message_bytes_avg": round(sum(sizes) / len(sizes)),
            "message_bytes_min": min(sizes),
            "message_bytes_max": max(sizes),
            "batch_size": BATCH,
        }


def make_corpus(count: int, seed: int = SEED) -> Corpus:
    """`count` unique messages and 10 % duplicates, each delivered after its original."""
    rng = random.Random(seed)
    messages = [
        (_order_created if rng.random() < ORDER_SHARE else _customer_created)(rng, n)
        for n in range(count)
    ]
    duplicates = round(count * DUPLICATE_SHARE)
    keyed = [(float(i), i) for i in range(count)]
    for i in rng.sample(range(count), duplicates):
        keyed.append((rng.uniform(i + 0.5, count), i))
    order = [i for _, i in sorted(keyed)]
    encoded = [json.dumps(m).encode() for m in messages]
    return Corpus(messages, order, [encoded[i] for i in order])


# ---------------------------------------------------------------------------------------------
# Stores: a SQLite file or a scratch PostgreSQL database per run


def _pg_admin_url() -> str:
    return (
        os.environ.get("D365CT_BENCH_POSTGRES_URL")
        or os.environ.get("D365CT_TEST_POSTGRES_URL")
        or PG_ADMIN_DEFAULT
    )


@dataclass
class Stores:
    """Fresh, migrated stores of one backend; everything created is removed on close."""

    backend: str  # sqlite | postgresql
    _dir: tempfile.TemporaryDirectory[str] | None = None
    _databases: list[str] = field(default_factory=list)

    def new(self, label: str) -> str:
        from d365ct.store import migrate

        if self.backend == "sqlite":
            if self._dir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="d365ct-b5-")
            url = f"sqlite:///{Path(self._dir.name, f'{label}.sqlite')}"
        else:
            name = f"d365ct_bench_b5_{label}_{uuid.uuid4().hex[:8]}"
            self._databases.append(name)
            url = sa.make_url(_pg_admin_url()).set(database=name).render_as_string(False)
        migrate(url)  # creates the PostgreSQL database too
        return url

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
        if self._databases:
            admin = sa.create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as conn:
                    for name in self._databases:
                        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                admin.dispose()
            self._databases.clear()


@contextlib.contextmanager
def stores(backend: str) -> Iterator[Stores]:
    if backend == "postgresql":
        admin = sa.create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.OperationalError as exc:
            raise RuntimeError(
                f"B5 needs PostgreSQL at {sa.make_url(_pg_admin_url())!r} ({exc.orig}); start"
                " it or point D365CT_BENCH_POSTGRES_URL at a maintenance database"
            ) from exc
        finally:
            admin.dispose()
    found = Stores(backend)
    try:
        yield found
    finally:
        found.close()


# ---------------------------------------------------------------------------------------------
# Measuring


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of `values` (seconds) in milliseconds."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return round(1000 * ordered[int(rank) - 1], 3)


def _latency(values: Sequence[float], prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}p50_ms": _percentile(values, 50),
        f"{prefix}p95_ms": _percentile(values, 95),
        f"{prefix}max_ms": _percentile(values, 100),
    }


class RoundTrips:
    """Database round trips on an engine, by the rules of ``Inbox.stats.round_trips``.

    Every statement counts; a COMMIT or ROLLBACK counts unless the connection is in autocommit;
    on PostgreSQL the BEGIN psycopg sends by itself counts too (SQLite's ``BEGIN IMMEDIATE`` is a
    statement the store's engine executes, counted as such). Pool checkouts are counted apart:
    on PostgreSQL each one costs a pre-ping (``pool_pre_ping``), which the inbox does not count.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.pg = engine.dialect.name == "postgresql"
        self.count = 0
        self.checkouts = 0
        self._listeners: list[tuple[Any, str, Callable[..., None]]] = [
            (engine, "before_cursor_execute", self._statement),
            (engine, "begin", self._begin),
            (engine, "commit", self._end),
            (engine, "rollback", self._end),
            (engine.pool, "checkout", self._checkout),
        ]
        for target, name, fn in self._listeners:
            event.listen(target, name, fn)

    def close(self) -> None:
        for target, name, fn in self._listeners:
            event.remove(target, name, fn)

    @staticmethod
    def _autocommit(conn: sa.Connection) -> bool:
        return bool(conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT")

    def _statement(self, *_args: Any) -> None:
        self.count += 1

    def _begin(self, conn: sa.Connection) -> None:
        if self.pg and not self._autocommit(conn):
            self.count += 1

    def _end(self, conn: sa.Connection) -> None:
        if not self._autocommit(conn):
            self.count += 1

    def _checkout(self, *_args: Any) -> None:
        self.checkouts += 1


def _checkouts(engine: sa.Engine) -> Callable[[], int]:
    counter = [0]

    def on_checkout(*_args: Any) -> None:
        counter[0] += 1

    event.listen(engine.pool, "checkout", on_checkout)
    return lambda: counter[0]


def _count(engine: sa.Engine, query: sa.Select[Any]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one() or 0)


def _with_pre_pings(figures: dict[str, Any], checkouts: int) -> None:
    """On PostgreSQL each pool checkout costs a pre-ping (``pool_pre_ping``): a round trip the
    inbox's counter leaves out, so it is reported beside it for both ways."""
    figures["pool_pre_pings"] = checkouts
    figures["round_trips_with_pre_pings_per_message"] = round(
        (figures["round_trips"] + checkouts) / max(figures["deliveries"], 1), 3
    )


def _accept_figures(
    backend: str,
    inbox: Inbox,
    seconds: float,
    latencies: list[float],
    checkouts: int,
    engine: sa.Engine,
) -> dict[str, Any]:
    from d365ct.store.tables import intake_messages

    stats = inbox.stats
    figures: dict[str, Any] = {
        "deliveries": stats.messages,
        "seconds": round(seconds, 3),
        "msgs_per_s": per_second(stats.messages, seconds),
        "round_trips": stats.round_trips,
        "round_trips_per_message": round(stats.round_trips / max(stats.messages, 1), 3),
        "accepted": stats.accepted,
        "duplicates_detected": stats.duplicate,
        "stale": stats.stale,
        "ignored": stats.ignored,
        "rows_stored": _count(engine, sa.select(sa.func.count()).select_from(intake_messages)),
        "deliveries_stored": _count(engine, sa.select(sa.func.sum(intake_messages.c.deliveries))),
        "accept_calls": len(latencies),
        **_latency(latencies, "batch_"),
    }
    if backend == "postgresql":
        _with_pre_pings(figures, checkouts)
    return figures


def _check_accept(label: str, corpus: Corpus, figures: dict[str, Any]) -> None:
    detected = figures["duplicates_detected"]
    assert detected == corpus.duplicates, (
        f"{label}: {detected} duplicates detected, {corpus.duplicates} injected"
    )
    assert figures["accepted"] == figures["rows_stored"] == corpus.unique, (label, figures)
    assert figures["deliveries_stored"] == corpus.deliveries, (label, figures)


# ---------------------------------------------------------------------------------------------
# Ours: accept_many in batches of 10


def ours_batched(backend: str, url: str, corpus: Corpus) -> dict[str, Any]:
    from d365ct.intake import Inbox, parse_message
    from d365ct.store import make_engine

    engine = make_engine(url)
    inbox = Inbox(engine)
    checkouts = _checkouts(engine)
    try:
        engine.connect().close()  # the first connection's setup is not an accept
        latencies = []
        started = time.perf_counter()
        for chunk in corpus.batches():
            t0 = time.perf_counter()
            inbox.accept_many([parse_message(body) for body in chunk], source="sqs")
            latencies.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - started
        figures = _accept_figures(backend, inbox, seconds, latencies, checkouts() - 1, engine)
    finally:
        inbox.close()
        engine.dispose()
    _check_accept(f"{backend} batched", corpus, figures)
    progress(
        f"{BENCH_ID}: {backend} batched: {figures['msgs_per_s']:,} msgs/s,"
        f" {figures['round_trips_per_message']} round trips/msg"
    )
    return figures


# ---------------------------------------------------------------------------------------------
# Ours: HTTP push of Event Grid batches to a uvicorn server


@contextlib.contextmanager
def _served(inbox: Inbox) -> Iterator[str]:
    import uvicorn
    from fastapi import FastAPI

    from d365ct.intake import intake_router

    app = FastAPI()
    app.include_router(intake_router(inbox, lambda: TOKEN))
    # proto=IPPROTO_TCP, not socket.socket()'s 0: asyncio sets TCP_NODELAY only on sockets whose
    # proto says TCP, and accepted sockets inherit it. Without it Nagle meets delayed ACK and
    # every response waits ~40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the uvicorn intake server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


async def _post_all(base_url: str, bodies: list[bytes]) -> tuple[float, list[float], int, int]:
    """POST every body with HTTP_SENDERS concurrent senders; seconds, latencies, summary."""
    from d365ct.intake import INTAKE_PATH

    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/cloudevents-batch+json; charset=utf-8",
    }
    latencies: list[float] = []
    duplicates = accepted = 0
    pending = iter(bodies)
    limits = httpx.Limits(max_connections=HTTP_SENDERS, max_keepalive_connections=HTTP_SENDERS)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        # Opens the connection(s), and proves the token is needed, before timing.
        refused = await client.post(INTAKE_PATH, content=b"[]")
        assert refused.status_code == 401, refused.text

        async def sender() -> None:
            nonlocal duplicates, accepted
            for body in pending:
                t0 = time.perf_counter()
                response = await client.post(INTAKE_PATH, content=body, headers=headers)
                latencies.append(time.perf_counter() - t0)
                if response.status_code != 200:
                    raise RuntimeError(f"intake answered {response.status_code}: {response.text}")
                summary = response.json()
                duplicates += int(summary["duplicate"])
                accepted += int(summary["accepted"])

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(HTTP_SENDERS)))
        seconds = time.perf_counter() - started
    return seconds, latencies, accepted, duplicates


def ours_http(backend: str, url: str, corpus: Corpus) -> dict[str, Any]:
    from d365ct.intake import Inbox
    from d365ct.store import make_engine

    engine = make_engine(url)
    inbox = Inbox(engine)
    checkouts = _checkouts(engine)
    bodies = corpus.event_grid_batches()
    try:
        engine.connect().close()  # the first connection's setup is not an accept
        with _served(inbox) as base_url:
            seconds, latencies, accepted, duplicates = asyncio.run(_post_all(base_url, bodies))
        figures = _accept_figures(backend, inbox, seconds, latencies, checkouts() - 1, engine)
    finally:
        inbox.close()
        engine.dispose()
    figures = {
        **figures,
        "requests": len(bodies),
        "senders": HTTP_SENDERS,
        "request_bytes_avg": round(sum(map(len, bodies)) / len(bodies)),
        "answered_accepted": accepted,
        "answered_duplicate": duplicates,
    }
    _check_accept(f"{backend} http", corpus, figures)
    assert (accepted, duplicates) == (corpus.unique, corpus.duplicates), figures
    progress(
        f"{BENCH_ID}: {backend} http: {figures['msgs_per_s']:,} msgs/s,"
        f" {figures['round_trips_per_message']} round trips/msg"
    )
    return figures


# ---------------------------------------------------------------------------------------------
# Naive: one transaction per message, SELECT then INSERT


def _naive_table() -> sa.Table:
    """A table shaped like intake_messages (columns, indexes, checks) under another name.

    The naive way then stores the same row; only how it deduplicates and commits differs.
    """
    from d365ct.store.tables import intake_messages

    name = "b5_naive_inbox"
    checks = [
        sa.CheckConstraint(c.sqltext, name=f"ck_{name}_{i}")
        for i, c in enumerate(intake_messages.constraints)
        if isinstance(c, sa.CheckConstraint)
    ]
    indexes = [
        sa.Index(f"ix_{name}_{i}", *(c.name for c in index.columns))
        for i, index in enumerate(sorted(intake_messages.indexes, key=lambda x: str(x.name)))
    ]
    columns = [column._copy() for column in intake_messages.columns]
    return sa.Table(name, sa.MetaData(), *columns, *checks, *indexes)


def naive(backend: str, url: str, corpus: Corpus) -> dict[str, Any]:
    from d365ct.intake import parse_message
    from d365ct.store import make_engine

    table = _naive_table()
    engine = make_engine(url)
    table.create(engine)
    engine.connect().close()
    trips = RoundTrips(engine)
    inserted = duplicates = 0
    latencies = []
    try:
        started = time.perf_counter()
        for body in corpus.bodies:
            t0 = time.perf_counter()
            message = parse_message(body)
            with engine.begin() as conn:
                found = conn.execute(
                    sa.select(table.c.message_id).where(table.c.message_id == message.message_id)
                ).first()
                if found is None:
                    conn.execute(
                        table.insert().values(
                            message_id=message.message_id,
                            kind=message.kind,
                            type=message.type,
                            resource_type=message.resource_type,
                            resource_id=message.resource_id,
                            position=message.position,
                            sequence_number=message.sequence_number,
                            resource_version=message.resource_version,
                            payload_included=message.payload_included,
                            source="sqs",
                            raw=message.raw,
                            status="pending",
                            deliveries=1,
                            attempts=0,
                            received_at=datetime.now(UTC),
                        )
                    )
                    inserted += 1
                else:
                    duplicates += 1
            latencies.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - started
    finally:
        trips.close()
    rows = _count(engine, sa.select(sa.func.count()).select_from(table))
    engine.dispose()
    deliveries = inserted + duplicates
    figures: dict[str, Any] = {
        "deliveries": deliveries,
        "seconds": round(seconds, 3),
        "msgs_per_s": per_second(deliveries, seconds),
        "round_trips": trips.count,
        "round_trips_per_message": round(trips.count / max(deliveries, 1), 3),
        "inserted": inserted,
        "duplicates_detected": duplicates,
        "rows_stored": rows,
        "transactions": deliveries,
        **_latency(latencies, "message_"),
    }
    if backend == "postgresql":
        _with_pre_pings(figures, trips.checkouts)
    assert (inserted, duplicates, rows) == (corpus.unique, corpus.duplicates, corpus.unique), (
        figures
    )
    progress(
        f"{BENCH_ID}: {backend} naive: {figures['msgs_per_s']:,} msgs/s,"
        f" {figures['round_trips_per_message']} round trips/msg"
    )
    return figures


# ---------------------------------------------------------------------------------------------
# Workflow start (not part of accept): one DBOS workflow per message, id = message id

_executions: list[str] = []
_executions_lock = threading.Lock()


@DBOS.workflow()
def b5_message_workflow(message_id: str) -> str:
    """The trivial workflow a flow consumer would start per accepted message."""
    with _executions_lock:
        _executions.append(message_id)
    return message_id


class CallerStatements:
    """SQL statements and commits that this thread runs on any engine (DBOS's included).

    Work DBOS does on its own threads (running the workflow, queues) is not counted, nor the
    BEGIN the drivers send by themselves: this is the cost of the start call as its caller sees.
    """

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.statements = 0
        self.commits = 0
        event.listen(sa.Engine, "before_cursor_execute", self._statement)
        event.listen(sa.Engine, "commit", self._commit)

    def close(self) -> None:
        event.remove(sa.Engine, "before_cursor_execute", self._statement)
        event.remove(sa.Engine, "commit", self._commit)

    def _statement(self, *_args: Any) -> None:
        if threading.get_ident() == self.thread:
            self.statements += 1

    def _commit(self, conn: sa.Connection) -> None:
        if threading.get_ident() != self.thread:
            return
        dbapi = conn.connection.dbapi_connection
        if not getattr(dbapi, "autocommit", False):
            self.commits += 1


def _workflow_rows(url: str, backend: str) -> int:
    """Workflows of the measured starts that DBOS recorded (the warm-up left out)."""
    from d365ct.store import make_engine

    engine = make_engine(url)
    table = "dbos.workflow_status" if backend == "postgresql" else "workflow_status"
    query = sa.text(
        f"SELECT count(*) FROM {table} WHERE name LIKE :name AND workflow_uuid NOT LIKE :warm_up"
    )
    try:
        with engine.connect() as conn:
            found = conn.execute(query, {"name": "%b5_message_workflow", "warm_up": "b5-warm-up-%"})
            return int(found.scalar_one())
    finally:
        engine.dispose()


def workflow_starts(backend: str, url: str, corpus: Corpus, count: int) -> dict[str, Any]:
    from d365ct.engine import launch_engine, shutdown_engine

    ids = [m["id"] for m in corpus.messages[:count]]
    rng = random.Random(SEED + 1)
    keyed = [(float(i), i) for i in range(len(ids))]
    for i in rng.sample(range(len(ids)), round(len(ids) * DUPLICATE_SHARE)):
        keyed.append((rng.uniform(i + 0.5, len(ids)), i))
    starts = [ids[i] for _, i in sorted(keyed)]
    with _executions_lock:
        _executions.clear()
    launch_started = time.perf_counter()
    launch_engine(url, polling_interval_sec=0.05)
    launch_seconds = time.perf_counter() - launch_started
    try:
        with SetWorkflowID(f"b5-warm-up-{uuid.uuid4().hex}"):
            DBOS.start_workflow(b5_message_workflow, "warm-up").get_result()
        latencies = []
        handles = []
        counter = CallerStatements()
        try:
            started = time.perf_counter()
            for message_id in starts:
                t0 = time.perf_counter()
                with SetWorkflowID(message_id):
                    handles.append(DBOS.start_workflow(b5_message_workflow, message_id))
                latencies.append(time.perf_counter() - t0)
            start_seconds = time.perf_counter() - started
        finally:
            counter.close()
        results = [handle.get_result() for handle in handles]
        done_seconds = time.perf_counter() - started
    finally:
        shutdown_engine(workflow_completion_timeout_sec=30)
    with _executions_lock:
        executed = [e for e in _executions if e != "warm-up"]
    rows = _workflow_rows(url, backend)
    figures: dict[str, Any] = {
        "messages": len(ids),
        "starts": len(starts),
        "repeated_starts": len(starts) - len(ids),
        "start_seconds": round(start_seconds, 3),
        "starts_per_s": per_second(len(starts), start_seconds),
        "msgs_per_s": per_second(len(ids), start_seconds),
        "to_completion_seconds": round(done_seconds, 3),
        "completed_msgs_per_s": per_second(len(ids), done_seconds),
        "caller_statements_per_start": round(counter.statements / len(starts), 3),
        "caller_commits_per_start": round(counter.commits / len(starts), 3),
        **_latency(latencies, "start_"),
        "executions": len(executed),
        "workflow_rows": rows,
        "launch_seconds": round(launch_seconds, 3),
    }
    assert results == starts, "a workflow returned another message's id"
    assert len(executed) == len(set(executed)) == len(ids), figures
    assert rows == len(ids), figures
    progress(
        f"{BENCH_ID}: {backend} workflow start: {figures['starts_per_s']:,} starts/s,"
        f" {figures['completed_msgs_per_s']:,} msgs/s to completion"
    )
    return figures


# ---------------------------------------------------------------------------------------------


def run(scale: float) -> dict[str, Any]:
    corpus = make_corpus(scaled(FULL_MESSAGES, scale, minimum=MIN_MESSAGES))
    workflows = min(corpus.unique, scaled(FULL_WORKFLOWS, scale, minimum=MIN_WORKFLOWS))
    progress(
        f"{BENCH_ID}: {corpus.unique:,} messages + {corpus.duplicates:,} duplicates,"
        f" {workflows:,} workflow starts"
    )
    ours: dict[str, Any] = {**corpus.figures()}
    theirs: dict[str, Any] = {
        "method": "per message: parse_message, then one transaction: SELECT the id, INSERT the"
        " row when absent, in a table of its own shaped like intake_messages (SQLAlchemy Core,"
        " the store's engine settings)",
    }
    workflow: dict[str, Any] = {}
    for backend in ("sqlite", "postgresql"):
        with stores(backend) as made:
            batched = ours_batched(backend, made.new("batched"), corpus)
            http = ours_http(backend, made.new("http"), corpus)
            theirs[backend] = naive(backend, made.new("naive"), corpus)
            workflow[backend] = workflow_starts(backend, made.new("dbos"), corpus, workflows)
        ours[backend] = {"batched": batched, "http": http}
    headline = ours["sqlite"]["batched"]
    ours = {
        "msgs_per_s": headline["msgs_per_s"],
        "round_trips_per_message": headline["round_trips_per_message"],
        **ours,
        "workflow_start_in_accept": False,
        "workflow_start": {
            "note": "not part of accept: a flow consumer claims accepted messages and starts"
            " one DBOS workflow each (workflow id = message id); measured apart",
            **workflow,
        },
    }
    theirs = {
        "msgs_per_s": theirs["sqlite"]["msgs_per_s"],
        "round_trips_per_message": theirs["sqlite"]["round_trips_per_message"],
        **theirs,
    }
    ratio = round(headline["msgs_per_s"] / max(theirs["msgs_per_s"], 1e-9), 2)
    met = all(
        ours[backend][way]["msgs_per_s"] > 0
        and ours[backend][way]["duplicates_detected"] == corpus.duplicates
        and ours[backend][way]["round_trips_per_message"]
        <= theirs[backend]["round_trips_per_message"]
        for backend in ("sqlite", "postgresql")
        for way in ("batched", "http")
    ) and all(workflow[backend]["msgs_per_s"] > 0 for backend in workflow)
    return result_line(
        BENCH_ID, ours=ours, naive=theirs, ratio=ratio, goal=GOAL, met=met, scale=scale
    )
