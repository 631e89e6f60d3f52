"""The error queue on SQLite and PostgreSQL: adding, repeated failures, listing and closing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from d365ct.store.error_queue import EntryClosedError, ErrorQueue


def test_failures_of_one_record_share_an_open_entry(engine: sa.Engine) -> None:
    queue = ErrorQueue(engine)
    first = queue.add(
        flow="inventory",
        business_key="D0001@usmf-11",
        step="write",
        error="unknown supply channel",
        payload={"sku": "D0001"},
        correlation={"workflow_id": "wf-1"},
    )
    again = queue.add(flow="inventory", business_key="D0001@usmf-11", step="write", error="again")
    other = queue.add(flow="inventory", business_key="D0002@usmf-11", step="write", error="x")
    assert again.id == first.id and again.attempts == 2 and again.error == "again"
    assert other.id != first.id
    assert [e.business_key for e in queue.list()] == ["D0002@usmf-11", "D0001@usmf-11"]
    assert queue.count_open() == 2
    closed = queue.close(first.id, "resolved", "fixed the channel map")
    assert closed.status == "resolved" and closed.note == "fixed the channel map"
    assert queue.count_open() == 1
    reopened = queue.add(flow="inventory", business_key="D0001@usmf-11", step="write", error="y")
    assert reopened.id != first.id and reopened.attempts == 1
    assert queue.get(first.id) is not None
    assert queue.get(10_000) is None


def test_the_first_close_wins(engine: sa.Engine) -> None:
    queue = ErrorQueue(engine)
    entry = queue.add(flow="orders", business_key="CT-1", step="import", error="x")
    queue.close(entry.id, "resolved", "by hand")
    with pytest.raises(EntryClosedError) as second:
        queue.close(entry.id, "replayed", "went through")
    assert second.value.entry.status == "resolved" and second.value.entry.note == "by hand"
    with pytest.raises(LookupError):
        queue.close(10_000, "resolved")


def test_concurrent_closes_of_one_entry_leave_exactly_one_winner(engine: sa.Engine) -> None:
    """Replays and resolves racing on the same entries, from threads with their own
    connections: each entry is closed exactly once and keeps the winner's status and note."""
    queue = ErrorQueue(engine)
    ids = [
        queue.add(flow="orders", business_key=f"CT-{i}", step="s", error="e").id for i in range(8)
    ]
    contenders = [("replayed", "replay A"), ("resolved", "resolve B"), ("resolved", "resolve C")]
    barrier = threading.Barrier(len(contenders))

    def contend(status: str, note: str) -> list[tuple[int, str]]:
        won = []
        barrier.wait()
        for entry_id in ids:
            try:
                queue.close(entry_id, status, note)
            except EntryClosedError:
                continue
            won.append((entry_id, note))
        return won

    with ThreadPoolExecutor(len(contenders)) as pool:
        results = list(pool.map(lambda c: contend(*c), contenders))
    winners = [w for won in results for w in won]
    assert sorted(entry_id for entry_id, _ in winners) == ids
    for entry_id, note in winners:
        stored = queue.get(entry_id)
        assert stored is not None and stored.note == note
        assert stored.status == ("replayed" if note == "replay A" else "resolved")
    assert queue.count_open() == 0
