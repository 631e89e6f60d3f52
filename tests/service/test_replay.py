"""Replay and resolve of the same entry at once: the first to close it wins, the other is told."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from d365ct.service.replay import Replayer, ReplayRegistry, ReplayResult
from d365ct.store.error_queue import ErrorEntry, ErrorQueue


async def test_resolve_during_a_replay_is_not_overwritten(store_engine: sa.Engine) -> None:
    queue = ErrorQueue(store_engine)
    entry = queue.add(flow="orders", business_key="CT-5", step="import", error="D365 said no")
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_replay(_: ErrorEntry) -> tuple[ReplayResult, str]:
        started.set()
        await release.wait()
        return "replayed", "posted as SO-5"

    registry = ReplayRegistry()
    registry.register("orders", slow_replay)
    replayer = Replayer(queue, registry)
    replay = asyncio.create_task(replayer.replay(entry.id))
    await started.wait()
    resolved = await replayer.resolve(entry.id, "posted by hand in D365")
    second = await replayer.resolve(entry.id, "again")
    release.set()
    replayed = await replay

    assert resolved.result == "resolved"
    assert second.result == "refused" and "resolved" in second.detail
    assert replayed.result == "replayed" and "meanwhile resolved" in replayed.detail
    stored = queue.get(entry.id)
    assert stored is not None
    assert (stored.status, stored.note) == ("resolved", "posted by hand in D365")
