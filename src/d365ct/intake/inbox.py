"""The durable inbox: every commercetools delivery is stored once, before it is acknowledged,
and handed to the flows in per-resource order, each message exactly once per lease.

Design
------
*Accept* (``Inbox.accept`` / ``accept_many``) is one ``INSERT … ON CONFLICT (message_id) DO
UPDATE SET deliveries = deliveries + 1 RETURNING status, deliveries`` per message: the primary
key is the durable deduplication (SPEC C7), the returned ``deliveries`` tells a first delivery
(1) from a duplicate (> 1) without a second query, and the row's ``status`` is decided inside
the same statement — ``ignored`` for a type nobody handles, ``stale`` when the resource's
high-water mark (``intake_streams.applied_position``) is already at or past the message's
position, else ``pending``. The statement is built once per Inbox with bound parameters
(one for handled types, one for ignored ones); a message only binds its values, so the CPU of
an accept is the database's, not statement construction. It commits before returning, so a
transport may acknowledge (HTTP 2xx, SQS delete, Service Bus complete) as soon as ``accept``
returns. Round trips per message:
one on PostgreSQL (the single statement runs in autocommit, which is atomic and durable),
three on SQLite (``BEGIN IMMEDIATE``, the statement, ``COMMIT``); a batch shares the
transaction. ``Inbox.stats.round_trips`` counts them (benchmark B5).

*Stale* means older than or equal to what was already **processed** for the resource, not
merely received: commercetools delivers unordered, so a later-numbered message may arrive
before an earlier one, and the earlier one is still news until something after it has been
applied. A stale message is stored with status ``stale``, acknowledged and counted.

*Order* within a resource stream (``resource_type``, ``resource_id``, kind: messages are
ordered by ``sequenceNumber``, change notifications by resource ``version``):
``claim`` hands out a message only when no earlier message of the same stream is still
pending and no other message of the stream is leased, so a stream is processed one message at
a time, in position order. An update whose creation has not arrived (nothing processed yet for
the stream, position > 1, not a creation type) stays pending for ``creation_wait`` after it
was received: if the creation shows up in that time it goes first; if not (the resource
predates the subscription, or the creation was filtered out), the update is released and the
creation, should it come later, is stale. Gaps left by message types the subscription does not
send are not waited for; only the creation is.

*Claim* (``claim(types, limit, worker_id, lease)``) leases messages to a worker for a while;
``mark_processed`` ends the lease, raises the stream's high-water mark and marks any pending
message at or below it stale; ``release`` gives a message back (optionally not before a
delay). A lease that runs out (a worker died) makes the message claimable again. On PostgreSQL
the candidates are selected ``FOR UPDATE SKIP LOCKED`` and claims are serialised by a
transaction-level advisory lock, because the per-stream ordering check must see the other
workers' leases (row locks alone cannot see an uncommitted lease on a sibling row); a claim
is one short transaction, so this costs little. On SQLite, ``BEGIN IMMEDIATE`` serialises.

*Workflows*: a flow consumer (U3 orders, U4 customers) claims its types and starts one DBOS
workflow per message with the workflow id = the message id
(``with SetWorkflowID(entry.message.message_id): DBOS.start_workflow(...)``), whose last step
calls ``mark_processed``. DBOS deduplicates starts by workflow id, so a re-claim after an
expired lease (or a crash between start and ``mark_processed``) never runs a message twice.

*Malformed* deliveries (``reject``) go to the error queue (flow ``intake``, step ``parse``)
with the raw body, truncated, and the reason; the business key is a hash of the body, so the
same poison message redelivered counts attempts on one entry instead of flooding the queue.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite

from d365ct.config import IntakeSettings
from d365ct.intake.messages import IntakeMessage, MalformedMessageError, parse_event
from d365ct.store.error_queue import ErrorEntry, ErrorQueue
from d365ct.store.tables import intake_messages, intake_streams

__all__ = [
    "CREATION_TYPES",
    "DEFAULT_HANDLED_TYPES",
    "AcceptResult",
    "AcceptStatus",
    "Inbox",
    "InboxEntry",
    "InboxStats",
]

AcceptStatus = Literal["accepted", "duplicate", "stale", "ignored"]

# What U3 and U4 act on by default; everything else is recorded as ignored.
DEFAULT_HANDLED_TYPES: Final = frozenset(
    {"OrderCreated", "OrderImported", *IntakeSettings().customer_update_types}
)
# Messages that open a resource's stream: they never wait for an earlier one.
CREATION_TYPES: Final = frozenset(
    {"OrderCreated", "OrderImported", "CustomerCreated", "ResourceCreated"}
)
ERROR_FLOW: Final = "intake"
# The error-queue flow of message types nobody handles: one entry per type, ever (see accept_many)
UNHANDLED_FLOW: Final = "subscription"
ERROR_BODY_LIMIT: Final = 64 * 1024
_CLAIM_LOCK_ID: Final = 0x0D365C8  # pg advisory lock serialising claims (see module docstring)
_COUNT_OPTION: Final = "d365ct_inbox_round_trips"


@dataclass(frozen=True)
class AcceptResult:
    message_id: str
    status: AcceptStatus
    deliveries: int  # how many times this id has been delivered, this one included
    stored_status: str  # the row's status: pending | processed | stale | ignored


@dataclass(frozen=True)
class InboxEntry:
    message: IntakeMessage
    status: str
    outcome: str | None
    source: str
    deliveries: int
    attempts: int
    claimed_by: str | None
    lease_until: datetime | None
    received_at: datetime
    processed_at: datetime | None


@dataclass
class InboxStats:
    """Counters of this process (not of the database): what B5 and /metrics report."""

    accepted: int = 0
    duplicate: int = 0
    stale: int = 0
    ignored: int = 0
    malformed: int = 0
    round_trips: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    @property
    def messages(self) -> int:
        return self.accepted + self.duplicate + self.stale + self.ignored


def _truncate(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return text[:limit], True


def _body_text(raw: Any) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    if isinstance(raw, str):
        return raw
    return json.dumps(raw, default=str, ensure_ascii=False)


class Inbox:
    """The durable inbox of commercetools deliveries, on the store's engine."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        handled_types: Collection[str] = DEFAULT_HANDLED_TYPES,
        creation_types: Collection[str] = CREATION_TYPES,
        creation_wait: timedelta = timedelta(seconds=60),
        error_queue: ErrorQueue | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"
        self.handled_types = frozenset(handled_types)
        self.creation_types = frozenset(creation_types)
        self.creation_wait = creation_wait
        self.errors = error_queue or ErrorQueue(engine, clock=clock)
        self._now = clock
        self.stats = InboxStats()
        self._token = f"inbox-{id(self)}"
        self._statements: dict[bool, sa.Executable] = {}  # accept, by "type is handled"
        self._listeners: list[tuple[str, Callable[..., None]]] = [
            ("before_cursor_execute", self._on_execute),
            ("begin", self._on_begin),
            ("commit", self._on_end),
            ("rollback", self._on_end),
        ]
        for name, fn in self._listeners:
            event.listen(engine, name, fn)

    def close(self) -> None:
        """Detach the round-trip counters from the engine (the engine stays open)."""
        for name, fn in self._listeners:
            if event.contains(self._engine, name, fn):
                event.remove(self._engine, name, fn)

    # -- round-trip counting -----------------------------------------------------------------

    def _counted(self, conn: sa.Connection) -> bool:
        return bool(conn.get_execution_options().get(_COUNT_OPTION) == self._token)

    def _autocommit(self, conn: sa.Connection) -> bool:
        return bool(conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT")

    def _on_execute(self, conn: sa.Connection, *_args: Any) -> None:
        if self._counted(conn):
            self.stats.add("round_trips")

    def _on_begin(self, conn: sa.Connection) -> None:
        # psycopg sends BEGIN by itself (SQLite's BEGIN IMMEDIATE is a counted statement).
        if self._pg and self._counted(conn) and not self._autocommit(conn):
            self.stats.add("round_trips")

    def _on_end(self, conn: sa.Connection) -> None:
        if self._counted(conn) and not self._autocommit(conn):
            self.stats.add("round_trips")

    def _connect(self, *, autocommit: bool = False) -> sa.Connection:
        conn = self._engine.connect()
        options: dict[str, Any] = {_COUNT_OPTION: self._token}
        if autocommit:
            options["isolation_level"] = "AUTOCOMMIT"
        return conn.execution_options(**options)

    # -- accept ----------------------------------------------------------------------------------

    def _accept_statement(self, handled: bool) -> sa.Executable:
        """The accept statement, built once per Inbox (handled types, and ignored ones) with
        bound parameters: a batch then costs its executions, not one statement built and
        compiled per message (SQLAlchemy's cache key of a literal-laden statement is rebuilt
        every time)."""
        held = self._statements.get(handled)
        if held is not None:
            return held
        if handled:
            already_applied = sa.exists().where(
                intake_streams.c.resource_type == sa.bindparam("resource_type"),
                intake_streams.c.resource_id == sa.bindparam("resource_id"),
                intake_streams.c.kind == sa.bindparam("kind"),
                intake_streams.c.applied_position >= sa.bindparam("position"),
            )
            status: Any = sa.case((already_applied, "stale"), else_="pending")
        else:
            status = sa.literal("ignored")
        insert = (postgresql.insert if self._pg else sqlite.insert)(intake_messages)
        columns = (
            "message_id",
            "kind",
            "type",
            "resource_type",
            "resource_id",
            "position",
            "sequence_number",
            "resource_version",
            "payload_included",
            "source",
            "raw",
            "received_at",
        )
        statement = (
            insert.values(
                {
                    **{n: sa.bindparam(n, type_=intake_messages.c[n].type) for n in columns},
                    "status": status,
                    "deliveries": 1,
                    "attempts": 0,
                }
            )
            .on_conflict_do_update(
                index_elements=[intake_messages.c.message_id],
                set_={"deliveries": intake_messages.c.deliveries + 1},
            )
            .returning(intake_messages.c.status, intake_messages.c.deliveries)
        )
        self._statements[handled] = statement
        return statement

    @staticmethod
    def _parameters(message: IntakeMessage, source: str, now: datetime) -> dict[str, Any]:
        return {
            "message_id": message.message_id,
            "kind": message.kind,
            "type": message.type,
            "resource_type": message.resource_type,
            "resource_id": message.resource_id,
            "position": message.position,
            "sequence_number": message.sequence_number,
            "resource_version": message.resource_version,
            "payload_included": message.payload_included,
            "source": source,
            "raw": message.raw,
            "received_at": now,
        }

    def accept(self, message: IntakeMessage, *, source: str = "http") -> AcceptResult:
        """Store one delivery durably (committed on return) and say what became of it."""
        return self.accept_many([message], source=source)[0]

    def accept_many(
        self, messages: Sequence[IntakeMessage], *, source: str = "http"
    ) -> list[AcceptResult]:
        """Store a batch in one transaction; all or nothing, committed on return."""
        if not messages:
            return []
        now = self._now()
        rows: list[tuple[str, int]] = []
        single_statement = self._pg and len(messages) == 1
        with self._connect(autocommit=single_statement) as conn, conn.begin():
            for message in messages:
                statement = self._accept_statement(message.type in self.handled_types)
                row: Any = conn.execute(statement, self._parameters(message, source, now)).one()
                rows.append((str(row.status), int(row.deliveries)))
        results = []
        for message, (stored, deliveries) in zip(messages, rows, strict=True):
            outcome: AcceptStatus
            if deliveries > 1:
                outcome = "duplicate"
            elif stored == "pending":
                outcome = "accepted"
            elif stored == "stale":
                outcome = "stale"
            else:
                outcome = "ignored"
            self.stats.add(outcome)
            results.append(AcceptResult(message.message_id, outcome, deliveries, stored))
        unhandled = {
            message.type: message
            for message, result in zip(messages, results, strict=True)
            if result.status == "ignored"
        }
        for message in unhandled.values():
            self._report_unhandled(message)
        return results

    def _report_unhandled(self, message: IntakeMessage) -> None:
        """The first message of a type nobody handles opens one error-queue entry, so that a
        person sees the Subscription sends more than d365ct acts on; later ones are only
        counted as ignored (the inbox keeps each of them)."""
        from d365ct.store.error_queue import ErrorQueue

        ErrorQueue(self._engine).add_once(
            flow=UNHANDLED_FLOW,
            business_key=f"message-type:{message.type}",
            step="accept",
            error=(
                f"commercetools sends {message.type} messages, which d365ct does not act on: "
                "they are recorded as ignored and acknowledged. Narrow the Subscription's "
                "message types (docs/orders-and-customers.md), then resolve this entry; it is "
                "not raised again for this type."
            ),
            payload={
                "message_id": message.message_id,
                "type": message.type,
                "resource": f"{message.resource_type}/{message.resource_id}",
            },
        )

    def reject(
        self,
        raw: Any,
        reason: str,
        *,
        source: str = "http",
        message_id: str | None = None,
        limit: int = ERROR_BODY_LIMIT,
    ) -> ErrorEntry:
        """Record a malformed delivery in the error queue: the raw body (truncated) and why."""
        text = _body_text(raw)
        body, truncated = _truncate(text, limit)
        digest = hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()[:16]
        entry = self.errors.add(
            flow=ERROR_FLOW,
            business_key=message_id or f"body:{digest}",
            step="parse",
            error=reason,
            payload={"body": body, "truncated": truncated, "bytes": len(text), "source": source},
            correlation={"message_id": message_id, "source": source, "sha256": digest},
        )
        self.stats.add("malformed")
        return entry

    def reject_error(self, exc: MalformedMessageError, *, source: str = "http") -> ErrorEntry:
        return self.reject(exc.raw, exc.reason, source=source, message_id=exc.message_id)

    # -- reading -----------------------------------------------------------------------------

    @staticmethod
    def _entry(row: sa.Row[Any]) -> InboxEntry:
        m = row._mapping
        parsed = parse_event(m["raw"])
        assert isinstance(parsed, IntakeMessage)  # only parsed messages are ever stored
        return InboxEntry(
            message=parsed,
            status=m["status"],
            outcome=m["outcome"],
            source=m["source"],
            deliveries=int(m["deliveries"]),
            attempts=int(m["attempts"]),
            claimed_by=m["claimed_by"],
            lease_until=m["lease_until"],
            received_at=m["received_at"],
            processed_at=m["processed_at"],
        )

    def get(self, message_id: str) -> InboxEntry | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(intake_messages).where(intake_messages.c.message_id == message_id)
            ).first()
        return None if row is None else self._entry(row)

    def pending(self, limit: int = 100, types: Iterable[str] | None = None) -> list[InboxEntry]:
        """Accepted, unprocessed messages (leased or not), each resource's in position order."""
        m = intake_messages.c
        query = (
            sa.select(intake_messages)
            .where(m.status == "pending")
            .order_by(m.resource_type, m.resource_id, m.kind, m.position, m.message_id)
            .limit(limit)
        )
        if types is not None:
            query = query.where(m.type.in_(list(types)))
        with self._engine.connect() as conn:
            return [self._entry(row) for row in conn.execute(query)]

    def counts(self) -> dict[str, int]:
        """Messages per status in the database, plus ``duplicates`` (redeliveries seen)."""
        m = intake_messages.c
        with self._engine.connect() as conn:
            out = {status: 0 for status in ("pending", "processed", "stale", "ignored")}
            per_status: Any = conn.execute(
                sa.select(m.status, sa.func.count().label("n")).group_by(m.status)
            )
            for row in per_status:
                out[str(row.status)] = int(row.n)
            extra = conn.execute(sa.select(sa.func.sum(m.deliveries - 1))).scalar()
        out["duplicates"] = int(extra or 0)
        return out

    # -- claiming and settling -----------------------------------------------------------------

    def claim(
        self,
        types: Iterable[str],
        limit: int,
        worker_id: str,
        *,
        lease: timedelta = timedelta(minutes=5),
    ) -> list[InboxEntry]:
        """Lease up to ``limit`` claimable messages of ``types`` to ``worker_id``.

        Claimable: pending, not leased, no earlier pending message in its resource stream and no
        leased sibling, and past the creation wait (module docstring). Candidates found to be
        stale on the way are marked so and not returned.
        """
        types = list(types)
        if limit < 1 or not types:
            return []
        now = self._now()
        m = intake_messages
        o = intake_messages.alias("o")
        s = intake_streams
        same_stream_s = sa.and_(
            s.c.resource_type == m.c.resource_type,
            s.c.resource_id == m.c.resource_id,
            s.c.kind == m.c.kind,
        )
        applied = sa.func.coalesce(s.c.applied_position, 0)
        blocker = sa.exists().where(
            o.c.resource_type == m.c.resource_type,
            o.c.resource_id == m.c.resource_id,
            o.c.kind == m.c.kind,
            o.c.status == "pending",
            o.c.message_id != m.c.message_id,
            o.c.position > applied,
            sa.or_(
                o.c.position < m.c.position,
                sa.and_(o.c.position == m.c.position, o.c.message_id < m.c.message_id),
                o.c.lease_until > now,
            ),
        )
        released = sa.or_(
            m.c.position <= 1,
            m.c.type.in_(sorted(self.creation_types)),
            s.c.applied_position.is_not(None),
            m.c.received_at <= now - self.creation_wait,
        )
        query = (
            sa.select(m, s.c.applied_position.label("applied_position"))
            .select_from(m.outerjoin(s, same_stream_s))
            .where(
                m.c.status == "pending",
                m.c.type.in_(types),
                sa.or_(m.c.lease_until.is_(None), m.c.lease_until <= now),
                ~blocker,
                released,
            )
            .order_by(m.c.received_at, m.c.position, m.c.message_id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=m)
        )
        until = now + lease
        with self._engine.begin() as conn:
            if self._pg:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_CLAIM_LOCK_ID)))
            rows = conn.execute(query).all()
            stale = [
                r.message_id
                for r in rows
                if r.applied_position is not None and r.position <= r.applied_position
            ]
            fresh = [r.message_id for r in rows if r.message_id not in stale]
            if stale:
                conn.execute(
                    sa.update(m)
                    .where(m.c.message_id.in_(stale))
                    .values(status="stale", outcome="superseded", processed_at=now)
                )
            if fresh:
                conn.execute(
                    sa.update(m)
                    .where(m.c.message_id.in_(fresh))
                    .values(claimed_by=worker_id, lease_until=until, attempts=m.c.attempts + 1)
                )
                claimed = conn.execute(
                    sa.select(m)
                    .where(m.c.message_id.in_(fresh))
                    .order_by(m.c.received_at, m.c.position, m.c.message_id)
                ).all()
            else:
                claimed = []
        if stale:
            self.stats.add("stale", len(stale))
        return [self._entry(row) for row in claimed]

    def mark_processed(self, message_id: str, outcome: str = "ok") -> bool:
        """Settle a message: processed, its stream's high-water mark raised, older ones stale.

        Idempotent: settling an already processed message again changes nothing and returns
        False. Raises LookupError for an unknown id.
        """
        return self.mark_processed_many([(message_id, outcome)])[0]

    def mark_processed_many(self, settled: Sequence[tuple[str, str]]) -> list[bool]:
        """``mark_processed`` for (message id, outcome) pairs, in one transaction (a micro-batch
        settles its messages together: one commit instead of one per message)."""
        if not settled:
            return []
        now = self._now()
        superseded = 0
        done: list[bool] = []
        with self._engine.begin() as conn:
            for message_id, outcome in settled:
                count = self._settle(conn, message_id, outcome, now)
                done.append(count is not None)
                superseded += count or 0
        if superseded:
            self.stats.add("stale", superseded)
        return done

    def _settle(
        self, conn: sa.Connection, message_id: str, outcome: str, now: datetime
    ) -> int | None:
        """Settle one message in `conn`: None when it was settled before, else how many older
        pending messages of its stream became stale."""
        m = intake_messages
        row = conn.execute(
            sa.update(m)
            .where(m.c.message_id == message_id, m.c.status == "pending")
            .values(
                status="processed",
                outcome=outcome,
                processed_at=now,
                claimed_by=None,
                lease_until=None,
            )
            .returning(m.c.resource_type, m.c.resource_id, m.c.kind, m.c.position)
        ).first()
        if row is None:
            exists = conn.execute(
                sa.select(m.c.status).where(m.c.message_id == message_id)
            ).scalar()
            if exists is None:
                raise LookupError(f"no intake message {message_id!r}")
            return None
        insert = (postgresql.insert if self._pg else sqlite.insert)(intake_streams)
        conn.execute(
            insert.values(
                resource_type=row.resource_type,
                resource_id=row.resource_id,
                kind=row.kind,
                applied_position=row.position,
                updated_at=now,
            ).on_conflict_do_update(
                index_elements=[
                    intake_streams.c.resource_type,
                    intake_streams.c.resource_id,
                    intake_streams.c.kind,
                ],
                set_={
                    "applied_position": sa.case(
                        (
                            intake_streams.c.applied_position < row.position,
                            row.position,
                        ),
                        else_=intake_streams.c.applied_position,
                    ),
                    "updated_at": now,
                },
            )
        )
        return int(
            conn.execute(
                sa.update(m)
                .where(
                    m.c.resource_type == row.resource_type,
                    m.c.resource_id == row.resource_id,
                    m.c.kind == row.kind,
                    m.c.status == "pending",
                    m.c.position <= row.position,
                )
                .values(
                    status="stale",
                    outcome=f"superseded by {message_id}",
                    processed_at=now,
                    claimed_by=None,
                    lease_until=None,
                )
            ).rowcount
        )

    def release(self, message_id: str, *, retry_after: timedelta | None = None) -> None:
        """Give a claimed message back, to be claimed again now or after ``retry_after``.

        While it waits, later messages of its resource wait too: order is kept.
        """
        self.release_many([message_id], retry_after=retry_after)

    def release_many(
        self,
        message_ids: Sequence[str],
        *,
        retry_after: timedelta | None = None,
        not_attempted: bool = False,
    ) -> None:
        """``release`` for several messages in one statement. ``not_attempted``: the claim did
        not try them (a full micro-batch left them for the next round), so it does not count
        as an attempt either."""
        if not message_ids:
            return
        m = intake_messages
        values: dict[str, Any] = {
            "claimed_by": None,
            "lease_until": None if retry_after is None else self._now() + retry_after,
        }
        if not_attempted:
            values["attempts"] = sa.case((m.c.attempts > 0, m.c.attempts - 1), else_=0)
        with self._engine.begin() as conn:
            conn.execute(
                sa.update(m)
                .where(m.c.message_id.in_(list(message_ids)), m.c.status == "pending")
                .values(**values)
            )
