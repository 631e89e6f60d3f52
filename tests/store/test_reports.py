"""Reconciliation reports on SQLite and PostgreSQL: create, stream lines, finish, read, export."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from d365ct.store.reports import CSV_COLUMNS, ReportLine, ReportStore
from d365ct.store.tables import reconciliation_lines

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def lines(n: int) -> list[ReportLine]:
    return [
        ReportLine(
            f"D{i:04d}",
            "corrected",
            "11",
            "usmf-11",
            Decimal(i) + Decimal("0.5"),
            i + 7,
            i,
            None,
        )
        for i in range(n)
    ]


def test_a_report_streams_lines_in_batches_and_reads_them_back(engine: sa.Engine) -> None:
    store = ReportStore(engine, clock=lambda: T0 + timedelta(minutes=5))
    created = store.create("rep-1", flow="inventory", legal_entity="usmf", started_at=T0)
    assert created.finished_at is None and created.counts == {}
    assert store.add_lines("rep-1", iter(lines(1234)), batch_size=500) == 1234
    with store.writer("rep-1", batch_size=3) as writer:
        writer.add(ReportLine("X-1", "zeroed", "12", "usmf-12", None, 4, 0))
        writer.add(ReportLine("X-2", "created", "12", "usmf-12", Decimal("3"), None, 3))
        writer.add(ReportLine("X-3", "failed", "12", "usmf-12", Decimal("2.25"), 1, None, "boom"))
        writer.add(ReportLine("X-4", "corrected", "12", "usmf-12", Decimal(-2), 5, 0))
        assert writer.written == 3  # the fourth waits for the next batch or the end
    assert writer.written == 4
    counts = {"actions": {"corrected": 1235, "zeroed": 1, "created": 1, "failed": 1}}
    finished = store.finish("rep-1", counts)
    assert finished.finished_at == T0 + timedelta(minutes=5)
    assert finished.counts == counts
    assert store.count_lines("rep-1") == 1238
    read = list(store.lines("rep-1"))
    assert read[0] == ReportLine("D0000", "corrected", "11", "usmf-11", Decimal("0.5"), 7, 0)
    assert read[1233].sku == "D1233" and read[1233].d365_quantity == Decimal("1233.5")
    assert read[-4:] == [
        ReportLine("X-1", "zeroed", "12", "usmf-12", None, 4, 0),
        ReportLine("X-2", "created", "12", "usmf-12", Decimal("3"), None, 3),
        ReportLine("X-3", "failed", "12", "usmf-12", Decimal("2.25"), 1, None, "boom"),
        ReportLine("X-4", "corrected", "12", "usmf-12", Decimal("-2"), 5, 0),
    ]
    assert [line.sku for line in store.lines("rep-1", action="failed")] == ["X-3"]


def test_exact_quantities_survive_every_backend(engine: sa.Engine) -> None:
    store = ReportStore(engine)
    store.create("rep-q", flow="inventory", legal_entity="usmf", started_at=T0)
    store.add_lines("rep-q", [ReportLine("Q", "corrected", d365_quantity=Decimal("12.345678"))])
    (line,) = store.lines("rep-q")
    assert line.d365_quantity == Decimal("12.345678")
    with engine.connect() as conn:  # and the column stays numeric for SQL readers
        stored = conn.execute(sa.select(reconciliation_lines.c.d365_quantity)).scalar_one()
    assert Decimal(str(stored)) == Decimal("12.345678")


def test_list_and_get(engine: sa.Engine) -> None:
    store = ReportStore(engine)
    for i, entity in enumerate(["usmf", "demf", "usmf"]):
        store.create(
            f"rep-{i}", flow="inventory", legal_entity=entity, started_at=T0 + timedelta(hours=i)
        )
    store.create("other", flow="prices", legal_entity="usmf", started_at=T0)
    assert [r.id for r in store.list(flow="inventory")] == ["rep-2", "rep-1", "rep-0"]
    assert [r.id for r in store.list(flow="inventory", legal_entity="USMF")] == ["rep-2", "rep-0"]
    assert [r.id for r in store.list(limit=1)] == ["rep-2"]
    assert store.get("rep-1") is not None and store.get("nope") is None
    with pytest.raises(LookupError):
        store.finish("nope", {})


def test_csv_and_json_exports(engine: sa.Engine) -> None:
    store = ReportStore(engine)
    store.create("rep-x", flow="inventory", legal_entity="usmf", started_at=T0)
    store.add_lines(
        "rep-x",
        [
            ReportLine("D0001", "corrected", "11", "usmf-11", Decimal("12.5"), 40, 12),
            ReportLine('D0002, "big"', "zeroed", "11", "usmf-11", None, 3, 0, "no D365 row"),
        ],
    )
    store.finish("rep-x", {"actions": {"corrected": 1, "zeroed": 1}})

    text = io.StringIO()
    assert store.write_csv("rep-x", text) == 2
    rows = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[0] == {
        "sku": "D0001",
        "warehouse": "11",
        "supply_channel": "usmf-11",
        "d365_quantity": "12.5",
        "ct_before": "40",
        "ct_after": "12",
        "action": "corrected",
        "detail": "",
    }
    assert rows[1]["sku"] == 'D0002, "big"' and rows[1]["d365_quantity"] == ""

    streamed = io.StringIO()
    store.write_json("rep-x", streamed)
    data = json.loads(streamed.getvalue())
    assert data == store.to_dict("rep-x")
    assert data["report"]["id"] == "rep-x" and data["report"]["counts"]["actions"]["zeroed"] == 1
    assert data["lines"][0]["d365_quantity"] == "12.5" and data["lines"][0]["ct_before"] == 40
    assert data["lines"][1]["d365_quantity"] is None

    empty = io.StringIO()
    store.create("rep-empty", flow="inventory", legal_entity="usmf", started_at=T0)
    store.write_json("rep-empty", empty)
    assert json.loads(empty.getvalue())["lines"] == []
