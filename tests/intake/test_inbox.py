"""The durable inbox on SQLite and PostgreSQL: dedup, stale skip, ignored types, per-resource
order, leases, concurrent claims, the error queue and round trips per accept."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from d365ct.intake import Inbox, IntakeMessage, MalformedMessageError, parse_event, parse_message
from d365ct.store import make_engine
from d365ct.store.error_queue import ErrorQueue
from tests.intake import samples

CUSTOMER_TYPES = ["CustomerCreated", "CustomerAddressAdded", "CustomerCompanyNameSet"]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inbox(engine: sa.Engine, clock: Clock) -> Iterator[Inbox]:
    box = Inbox(engine, clock=clock, creation_wait=timedelta(seconds=30))
    yield box
    box.close()


def msg(raw: dict[str, Any]) -> IntakeMessage:
    parsed = parse_event(raw)
    assert isinstance(parsed, IntakeMessage)
    return parsed


# -- accept: dedup, stale, ignored ----------------------------------------------------------------


def test_accept_stores_and_lists_pending(inbox: Inbox) -> None:
    m = msg(samples.order_created("o-1", message_id="m-1"))
    result = inbox.accept(m, source="sqs")
    assert (result.status, result.deliveries, result.stored_status) == ("accepted", 1, "pending")
    [entry] = inbox.pending()
    assert entry.message == m
    assert (entry.status, entry.source, entry.deliveries, entry.attempts) == (
        "pending",
        "sqs",
        1,
        0,
    )
    stored = inbox.get("m-1")
    assert stored is not None and stored.message.payload["order"]["orderNumber"] == "SO-1001"


def test_the_same_id_any_number_of_times_is_accepted_once(inbox: Inbox) -> None:
    m = msg(samples.order_created("o-1", message_id="m-dup"))
    results = [inbox.accept(m) for _ in range(5)]
    assert [r.status for r in results] == ["accepted"] + ["duplicate"] * 4
    assert [r.deliveries for r in results] == [1, 2, 3, 4, 5]
    assert len(inbox.pending()) == 1
    assert inbox.counts()["duplicates"] == 4
    assert inbox.stats.accepted == 1 and inbox.stats.duplicate == 4


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_duplicates_in_any_order_and_batches_each_processed_once(inbox: Inbox, seed: int) -> None:
    rng = random.Random(seed)
    originals = [msg(samples.order_created(f"o-{i}", message_id=f"m-{i}")) for i in range(20)]
    deliveries = [m for m in originals for _ in range(rng.randint(1, 4))]
    rng.shuffle(deliveries)
    accepted: list[str] = []
    i = 0
    while i < len(deliveries):
        batch = deliveries[i : i + rng.randint(1, 6)]  # batches may repeat an id, too
        i += len(batch)
        accepted += [r.message_id for r in inbox.accept_many(batch) if r.status == "accepted"]
    assert sorted(accepted) == sorted(m.message_id for m in originals)
    claimed = inbox.claim(["OrderCreated"], 100, "w")
    assert sorted(e.message.message_id for e in claimed) == sorted(accepted)
    assert inbox.counts()["duplicates"] == len(deliveries) - len(originals)


def test_unknown_type_is_recorded_as_ignored_and_never_claimed(inbox: Inbox) -> None:
    m = msg(samples.order_state_changed("o-1", seq=2))
    assert inbox.accept(m).status == "ignored"
    entry = inbox.get(m.message_id)
    assert entry is not None and entry.status == "ignored"
    assert inbox.pending() == []
    assert inbox.claim(["OrderStateChanged"], 10, "w") == []
    assert inbox.counts()["ignored"] == 1
    assert inbox.accept(m).status == "duplicate"


def test_an_unhandled_type_is_named_once_in_the_error_queue(inbox: Inbox) -> None:
    errors = ErrorQueue(inbox._engine)
    first = msg(samples.order_state_changed("o-1", seq=2))
    inbox.accept(first)
    [entry] = errors.list(flow="subscription")
    assert entry.business_key == "message-type:OrderStateChanged"
    assert entry.payload["message_id"] == first.message_id
    # More of the type, even after the entry is resolved, are only counted as ignored.
    errors.close(entry.id, "resolved", note="expected: the Subscription sends every order message")
    inbox.accept_many([msg(samples.order_state_changed(f"o-{n}", seq=2)) for n in range(2, 5)])
    assert errors.list(flow="subscription", status=None) == [errors.get(entry.id)]
    assert inbox.counts()["ignored"] == 4


def test_payload_not_included_is_accepted_for_the_flow_to_fetch(inbox: Inbox) -> None:
    m = msg(samples.payload_not_included("o-big"))
    assert inbox.accept(m).status == "accepted"
    [entry] = inbox.claim(["OrderCreated"], 10, "w")
    assert not entry.message.payload_included
    assert entry.message.resource_id == "o-big"


def test_stale_after_a_newer_message_was_processed(inbox: Inbox) -> None:
    created = msg(samples.customer_created("c-1"))
    company = msg(samples.customer_company_name_set("c-1", seq=3))
    inbox.accept_many([created, company])
    for _ in range(2):
        [entry] = inbox.claim(CUSTOMER_TYPES, 10, "w")
        inbox.mark_processed(entry.message.message_id)
    late = msg(samples.customer_address_added("c-1", seq=2))  # arrives after seq 3 applied
    again = msg(samples.customer_company_name_set("c-1", seq=3))  # same position, new id
    assert inbox.accept(late).status == "stale"
    assert inbox.accept(again).status == "stale"
    assert inbox.counts()["stale"] == 2
    assert inbox.stats.stale == 2
    assert inbox.claim(CUSTOMER_TYPES, 10, "w") == []
    # other resources are unaffected
    assert inbox.accept(msg(samples.customer_address_added("c-2", seq=2))).status == "accepted"


def test_processing_a_message_makes_older_pending_ones_stale(inbox: Inbox, clock: Clock) -> None:
    update = msg(samples.customer_company_name_set("c-1", seq=3))
    inbox.accept(update)
    clock.advance(31)  # the creation never came: the update is released
    [entry] = inbox.claim(CUSTOMER_TYPES, 10, "w")
    older = msg(samples.customer_address_added("c-1", seq=2))
    assert inbox.accept(older).status == "accepted"  # nothing applied yet: still news
    assert inbox.mark_processed(entry.message.message_id, "ok")
    stored = inbox.get(older.message_id)
    assert stored is not None and stored.status == "stale"
    assert stored.outcome == f"superseded by {update.message_id}"
    created = msg(samples.customer_created("c-1"))
    assert inbox.accept(created).status == "stale"


def test_change_notifications_are_ordered_by_version(inbox: Inbox) -> None:
    box = Inbox(inbox._engine, handled_types={"ResourceCreated", "ResourceUpdated"})
    try:
        created = msg(samples.resource_created("customer", "c-9"))
        updated = msg(samples.resource_updated("customer", "c-9", version=3))
        assert [r.status for r in box.accept_many([updated, created])] == ["accepted"] * 2
        [first] = box.claim(["ResourceCreated", "ResourceUpdated"], 10, "w")
        assert first.message.type == "ResourceCreated"
        box.mark_processed(first.message.message_id)
        [second] = box.claim(["ResourceCreated", "ResourceUpdated"], 10, "w")
        box.mark_processed(second.message.message_id)
        assert box.accept(msg(samples.resource_updated("customer", "c-9", 2))).status == "stale"
        # the redelivered notification deduplicates by its derived id
        assert box.accept(updated).status == "duplicate"
    finally:
        box.close()


# -- per-resource order ---------------------------------------------------------------------------


def test_an_update_never_overtakes_its_creation(inbox: Inbox, clock: Clock) -> None:
    address = msg(samples.customer_address_added("c-1", seq=2))
    company = msg(samples.customer_company_name_set("c-1", seq=3))
    inbox.accept_many([company, address])
    assert inbox.claim(CUSTOMER_TYPES, 10, "w") == []  # waiting for CustomerCreated
    clock.advance(10)
    created = msg(samples.customer_created("c-1"))
    inbox.accept(created)
    assert [e.message.type for e in inbox.pending()] == [
        "CustomerCreated",
        "CustomerAddressAdded",
        "CustomerCompanyNameSet",
    ]
    order = []
    for _ in range(3):
        claimed = inbox.claim(CUSTOMER_TYPES, 10, "w")
        assert len(claimed) == 1  # one message of a resource at a time
        order.append(claimed[0].message.type)
        assert inbox.claim(CUSTOMER_TYPES, 10, "w2") == []  # the leased one blocks the rest
        inbox.mark_processed(claimed[0].message.message_id)
    assert order == ["CustomerCreated", "CustomerAddressAdded", "CustomerCompanyNameSet"]
    assert inbox.counts()["processed"] == 3


def test_resources_proceed_independently(inbox: Inbox) -> None:
    inbox.accept_many(
        [
            msg(samples.customer_created("c-1")),
            msg(samples.customer_address_added("c-1", seq=2)),
            msg(samples.customer_created("c-2")),
            msg(samples.order_created("o-1")),
        ]
    )
    claimed = inbox.claim([*CUSTOMER_TYPES, "OrderCreated"], 10, "w")
    assert sorted((e.message.resource_id, e.message.type) for e in claimed) == [
        ("c-1", "CustomerCreated"),
        ("c-2", "CustomerCreated"),
        ("o-1", "OrderCreated"),
    ]
    assert inbox.claim(["OrderCreated"], 10, "w") == []


def test_creation_wait_releases_updates_of_resources_created_before_the_subscription(
    inbox: Inbox, clock: Clock
) -> None:
    update = msg(samples.customer_address_added("c-old", seq=7))
    inbox.accept(update)
    clock.advance(29)
    assert inbox.claim(CUSTOMER_TYPES, 10, "w") == []
    clock.advance(2)
    [entry] = inbox.claim(CUSTOMER_TYPES, 10, "w")
    assert entry.message.message_id == update.message_id


def test_gaps_from_unsubscribed_types_are_not_waited_for(inbox: Inbox) -> None:
    inbox.accept(msg(samples.customer_created("c-1")))
    [e] = inbox.claim(CUSTOMER_TYPES, 10, "w")
    inbox.mark_processed(e.message.message_id)
    # seq 2..4 were messages the subscription does not send
    inbox.accept(msg(samples.customer_company_name_set("c-1", seq=5)))
    assert len(inbox.claim(CUSTOMER_TYPES, 10, "w")) == 1


# -- leases, settling ---------------------------------------------------------------------------


def test_an_expired_lease_makes_the_message_claimable_again(inbox: Inbox, clock: Clock) -> None:
    inbox.accept(msg(samples.order_created("o-1", message_id="m-1")))
    [first] = inbox.claim(["OrderCreated"], 10, "w1", lease=timedelta(seconds=60))
    assert first.claimed_by == "w1" and first.attempts == 1
    assert first.lease_until == clock.now + timedelta(seconds=60)
    assert inbox.claim(["OrderCreated"], 10, "w2") == []
    clock.advance(61)
    [second] = inbox.claim(["OrderCreated"], 10, "w2")
    assert (second.claimed_by, second.attempts) == ("w2", 2)


def test_mark_processed_is_idempotent_and_knows_unknown_ids(inbox: Inbox) -> None:
    inbox.accept(msg(samples.order_created("o-1", message_id="m-1")))
    assert inbox.mark_processed("m-1", "posted")
    assert not inbox.mark_processed("m-1", "posted again")
    entry = inbox.get("m-1")
    assert entry is not None
    assert (entry.status, entry.outcome, entry.claimed_by) == ("processed", "posted", None)
    assert entry.processed_at is not None
    with pytest.raises(LookupError, match="no intake message"):
        inbox.mark_processed("nope")


def test_release_with_a_delay_keeps_the_resource_in_order(inbox: Inbox, clock: Clock) -> None:
    inbox.accept_many(
        [msg(samples.customer_created("c-1")), msg(samples.customer_address_added("c-1", 2))]
    )
    [created] = inbox.claim(CUSTOMER_TYPES, 10, "w")
    inbox.release(created.message.message_id, retry_after=timedelta(seconds=20))
    assert inbox.claim(CUSTOMER_TYPES, 10, "w") == []  # neither it nor its successor
    clock.advance(21)
    [again] = inbox.claim(CUSTOMER_TYPES, 10, "w")
    assert again.message.type == "CustomerCreated" and again.attempts == 2


# -- errors and round trips -------------------------------------------------------------------


def test_reject_records_raw_body_and_reason_once_per_body(inbox: Inbox, engine: sa.Engine) -> None:
    body = b"{not json" + b"x" * 100
    with pytest.raises(MalformedMessageError) as info:
        parse_message(body)
    entry = inbox.reject(body, info.value.reason, source="sqs", limit=50)
    assert entry.flow == "intake" and entry.step == "parse"
    assert "not JSON" in entry.error
    assert entry.payload["body"] == body.decode()[:50]
    assert entry.payload["truncated"] is True and entry.payload["source"] == "sqs"
    again = inbox.reject(body, info.value.reason, source="sqs", limit=50)
    assert again.id == entry.id and again.attempts == 2
    assert ErrorQueue(engine).count_open() == 1
    assert inbox.stats.malformed == 2


def test_round_trips_per_accept(inbox: Inbox, engine: sa.Engine) -> None:
    inbox.accept(msg(samples.order_created("warm-up")))
    before = inbox.stats.round_trips
    inbox.accept(msg(samples.order_created("o-1")))
    one = inbox.stats.round_trips - before
    before = inbox.stats.round_trips
    inbox.accept_many([msg(samples.order_created(f"o-b{i}")) for i in range(10)])
    ten = inbox.stats.round_trips - before
    if engine.dialect.name == "postgresql":
        assert (one, ten) == (1, 12)  # autocommit statement; BEGIN + 10 + COMMIT
    else:
        assert (one, ten) == (3, 12)  # BEGIN IMMEDIATE + INSERT + COMMIT
    # reading does not count as accepting
    inbox.pending()
    assert inbox.stats.round_trips - before == ten


def test_accept_builds_its_statement_once_not_per_message(
    inbox: Inbox, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from d365ct.intake import inbox as inbox_module

    dialect = (
        inbox_module.postgresql if engine.dialect.name == "postgresql" else inbox_module.sqlite
    )
    built: list[str] = []
    real_insert = dialect.insert

    def counting_insert(table: Any) -> Any:
        built.append(table.name)
        return real_insert(table)

    monkeypatch.setattr(dialect, "insert", counting_insert)
    for batch in range(3):
        results = inbox.accept_many(
            [
                msg(samples.order_created(f"o-{batch}-{i}", message_id=f"m-{batch}-{i}"))
                for i in range(10)
            ]
            + [msg(samples.order_created(f"o-{batch}-0", message_id=f"m-{batch}-0"))]  # again
            + [msg({**samples.order_created(f"x-{batch}"), "type": "OrderNoteAdded"})]
        )
        assert [r.status for r in results] == ["accepted"] * 10 + ["duplicate", "ignored"]
    # one statement for handled types, one for ignored ones: 36 messages, 2 statements
    assert built.count("intake_messages") == 2
    # the parameters, not the statement, carry each message: the stale check still sees its own
    (claimed,) = inbox.claim(["OrderCreated"], 1, "w")
    inbox.mark_processed(claimed.message.message_id)
    redelivered = msg(samples.order_created(claimed.message.resource_id, message_id="m-new"))
    assert inbox.accept(redelivered).status == "stale"
    assert inbox.accept(msg(samples.order_created("o-fresh", message_id="m-fresh"))).status == (
        "accepted"
    )


def test_accept_is_durable_before_it_returns(inbox: Inbox, db_url: str) -> None:
    inbox.accept(msg(samples.order_created("o-1", message_id="m-durable")))
    other = make_engine(db_url)  # another connection pool, as another process would see it
    try:
        other_box = Inbox(other)
        assert other_box.get("m-durable") is not None
        other_box.close()
    finally:
        other.dispose()


# -- concurrency --------------------------------------------------------------------------------


def test_concurrent_workers_never_get_the_same_message(db_url: str, engine: sa.Engine) -> None:
    """Two workers (own engines, as two processes) drain 40 resources × 5 messages."""
    setup = Inbox(engine, creation_wait=timedelta(0))
    batch = []
    for c in range(40):
        cid = f"c-{c}"
        batch += [
            msg(samples.customer_created(cid)),
            msg(samples.customer_address_added(cid, seq=2)),
            msg(samples.customer_company_name_set(cid, seq=3)),
            msg(samples.customer_address_added(cid, seq=4)),
            msg(samples.customer_company_name_set(cid, seq=5)),
        ]
    random.Random(7).shuffle(batch)
    setup.accept_many(batch)
    setup.close()

    claimed: dict[str, list[tuple[str, int]]] = {"w1": [], "w2": []}
    timeline: list[tuple[str, int]] = []  # every claim, in the order workers got them
    in_flight: set[str] = set()
    overlap: list[str] = []
    guard = threading.Lock()
    errors: list[BaseException] = []

    def work(worker: str) -> None:
        eng = make_engine(db_url)
        box = Inbox(eng, creation_wait=timedelta(0))
        idle_since = time.monotonic()
        try:
            while time.monotonic() - idle_since < 1.0:
                entries = box.claim(CUSTOMER_TYPES, 3, worker)
                if not entries:
                    time.sleep(0.01)
                    continue
                idle_since = time.monotonic()
                for e in entries:
                    rid = e.message.resource_id
                    with guard:
                        if rid in in_flight:
                            overlap.append(rid)
                        in_flight.add(rid)
                        claimed[worker].append((rid, e.message.position))
                        timeline.append((rid, e.message.position))
                for e in entries:
                    time.sleep(0.001)
                    box.mark_processed(e.message.message_id)
                    with guard:  # only once settled may the resource's next message go out
                        in_flight.discard(e.message.resource_id)
        except BaseException as exc:
            errors.append(exc)
        finally:
            box.close()
            eng.dispose()

    threads = [threading.Thread(target=work, args=(w,)) for w in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    everything = claimed["w1"] + claimed["w2"]
    assert len(everything) == len(set(everything)) == 200  # each message exactly once
    assert claimed["w1"] and claimed["w2"]  # both took part
    assert overlap == []  # never two messages of one resource at once
    positions: dict[str, list[int]] = {}
    for rid, pos in timeline:
        positions.setdefault(rid, []).append(pos)
    assert all(p == [1, 2, 3, 4, 5] for p in positions.values())  # in sequence order


def test_settle_many_and_release_without_counting_an_attempt(inbox: Inbox) -> None:
    for i in range(4):
        inbox.accept(msg(samples.order_created(f"o-{i}", message_id=f"m-{i}")))
    claimed = inbox.claim(["OrderCreated"], 4, "w")
    assert [e.attempts for e in claimed] == [1, 1, 1, 1]
    assert inbox.mark_processed_many([("m-0", "posted"), ("m-1", "posted"), ("m-0", "again")]) == [
        True,
        True,
        False,  # already settled: idempotent
    ]
    inbox.release_many(["m-2"], not_attempted=True)  # left over by a full batch
    inbox.release_many(["m-3"])  # tried, and given back
    again = {e.message.message_id: e.attempts for e in inbox.claim(["OrderCreated"], 4, "w")}
    assert again == {"m-2": 1, "m-3": 2}
    assert inbox.get("m-0").outcome == "posted"  # type: ignore[union-attr]
    with pytest.raises(LookupError):
        inbox.mark_processed_many([("m-unknown", "x")])
