"""The error queue on SQLite and PostgreSQL: adding, repeated failures, listing and closing."""

from __future__ import annotations

import sqlalchemy as sa

from d365ct.store.error_queue import ErrorQueue


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
