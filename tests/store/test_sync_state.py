"""The sync state store on SQLite and PostgreSQL: batched reads and upserts, prefixes, deletes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from d365ct.store.sync_state import SyncRecord, SyncStateStore
from d365ct.store.tables import sync_state


def test_put_get_replace_and_delete(engine: sa.Engine) -> None:
    store = SyncStateStore(engine)
    assert store.get_many("catalog", ["D0001"]) == {}
    assert store.put_many("catalog", [("D0001", "h1", "id-1", 1), ("D0002", "h2", None, None)]) == 2
    store.put_many("prices", [("D0001", "other flow", "p-1", 3)])
    assert store.get_many("catalog", ["D0001", "D0002", "D0003"]) == {
        "D0001": SyncRecord("h1", "id-1", 1),
        "D0002": ("h2", None, None),
    }
    store.put_many("catalog", [("D0001", "h1b", "id-1", 4)])  # an upsert, not a duplicate
    assert store.get_many("catalog", ["D0001"])["D0001"] == ("h1b", "id-1", 4)
    assert store.count("catalog") == 2 and store.count("prices") == 1
    assert store.delete("catalog", ["D0001", "missing"]) == 1
    assert store.get_many("catalog", ["D0001"]) == {}
    assert store.get_many("prices", ["D0001"]) == {"D0001": ("other flow", "p-1", 3)}
    assert store.put_many("catalog", []) == 0


def test_many_keys_go_in_batches(engine: sa.Engine) -> None:
    store = SyncStateStore(engine)
    items = [(f"D{i:06d}", f"hash-{i}", f"id-{i}", i) for i in range(2_345)]
    assert store.put_many("catalog", items) == len(items)
    found = store.get_many("catalog", [key for key, *_ in items] + ["nope"])
    assert len(found) == len(items) and found["D002344"] == ("hash-2344", "id-2344", 2344)
    assert store.delete("catalog", [key for key, *_ in items[:1_000]]) == 1_000
    assert store.count("catalog") == 1_345


def test_items_by_prefix_escape_like_wildcards(engine: sa.Engine) -> None:
    store = SyncStateStore(engine)
    store.put_many(
        "prices",
        [
            ("usmf-1@a", "h", "i1", 1),
            ("usmf-2@b", "h", "i2", 1),
            ("demf-1@c", "h", "i3", 1),
            ("usmfx1", "h", "i4", 1),  # '_' or '%' in a prefix must not act as a wildcard
            ("USMF-9@d", "h", "i5", 1),  # SQLite's LIKE ignores case; the prefix does not
        ],
    )
    assert set(store.items("prices", "usmf-")) == {"usmf-1@a", "usmf-2@b"}
    assert set(store.items("prices", "usmf_")) == set()
    assert len(store.items("prices")) == 5


def test_updated_at_comes_from_the_clock(engine: sa.Engine) -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    SyncStateStore(engine, clock=lambda: moment).put_many("catalog", [("K", "h", None, None)])
    SyncStateStore(engine, clock=lambda: moment + timedelta(hours=1)).put_many(
        "catalog", [("K", "h2", "id", 2)]
    )
    with engine.connect() as conn:
        stamp = conn.execute(sa.select(sync_state.c.updated_at)).scalar_one()
    assert stamp == moment + timedelta(hours=1)
