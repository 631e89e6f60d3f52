"""The service's inbox processor: rounds until stopped, the round in hand finished on stop (or
cancelled after the stop timeout), failed rounds retried. process_inbox itself is tested with
the real peers in tests/flows/test_orders.py and through the service in test_service_e2e.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from d365ct.flows import orders
from d365ct.flows.customers import MessageResult
from d365ct.flows.orders import ProcessSummary
from d365ct.service import metrics
from d365ct.service import processor as processor_module
from d365ct.service.processor import InboxProcessor


class FakeRounds:
    def __init__(self, seconds: float, busy_rounds: int = 1, fail_first: bool = False) -> None:
        self.seconds = seconds
        self.busy_rounds = busy_rounds
        self.fail_first = fail_first
        self.calls: list[dict[str, Any]] = []
        self.finished = 0

    async def __call__(self, flows: Any, inbox: Any, **options: Any) -> ProcessSummary:
        self.calls.append(options)
        if self.fail_first and len(self.calls) == 1:
            raise RuntimeError("store unreachable")
        await asyncio.sleep(self.seconds)
        self.finished += 1
        return ProcessSummary(rounds=1 if self.finished <= self.busy_rounds else 0)


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait for `condition` (a loaded machine may pause the loop): fail after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
def quiet_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    async def close() -> None:
        return None

    monkeypatch.setattr(orders, "close_clients", close)


async def test_stop_finishes_the_round_in_hand(
    monkeypatch: pytest.MonkeyPatch, quiet_clients: None
) -> None:
    rounds = FakeRounds(seconds=0.3)
    monkeypatch.setattr(orders, "process_inbox", rounds)
    proc = InboxProcessor(object(), object(), worker="w1", stop_timeout=5)  # type: ignore[arg-type]
    async with proc.running():
        await asyncio.sleep(0.1)  # the first round is in hand
    assert rounds.finished == 1 and proc.stats.rounds == 1
    call = rounds.calls[0]
    assert {k: call[k] for k in ("worker_id", "wait", "max_rounds")} == {
        "worker_id": "w1",
        "wait": True,
        "max_rounds": 1,
    }
    assert call["stop"].is_set()  # stopping closes the batch window of the round in hand


async def test_idle_rounds_poll_and_call_the_idle_hook(
    monkeypatch: pytest.MonkeyPatch, quiet_clients: None
) -> None:
    rounds = FakeRounds(seconds=0.0, busy_rounds=0)
    monkeypatch.setattr(orders, "process_inbox", rounds)
    idle: list[int] = []

    async def on_idle() -> None:
        idle.append(1)

    proc = InboxProcessor(object(), object(), idle_seconds=0.05, on_idle=on_idle)  # type: ignore[arg-type]
    async with proc.running():
        await _until(lambda: len(rounds.calls) >= 3 and len(idle) >= 3)
    assert proc.stats.rounds == 0


async def test_a_round_longer_than_the_stop_timeout_is_cancelled(
    monkeypatch: pytest.MonkeyPatch, quiet_clients: None
) -> None:
    rounds = FakeRounds(seconds=30)
    monkeypatch.setattr(orders, "process_inbox", rounds)
    proc = InboxProcessor(object(), object(), stop_timeout=0.2)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with proc.running():
        await asyncio.sleep(0.05)
    assert loop.time() - started < 2 and rounds.finished == 0


async def test_a_failed_round_is_retried(
    monkeypatch: pytest.MonkeyPatch, quiet_clients: None
) -> None:
    monkeypatch.setattr(processor_module, "ERROR_BACKOFF_SECONDS", 0.05)
    rounds = FakeRounds(seconds=0.0, fail_first=True)
    monkeypatch.setattr(orders, "process_inbox", rounds)
    proc = InboxProcessor(object(), object(), idle_seconds=0.05)  # type: ignore[arg-type]
    async with proc.running():
        await _until(lambda: proc.stats.rounds >= 1)
    assert proc.stats.failed_rounds == 1 and "store unreachable" in str(proc.stats.last_error)
    assert proc.stats.rounds == 1


def test_a_round_feeds_the_flow_metrics() -> None:
    def sample(name: str, flow: str) -> float:
        return _flow_registry().get_sample_value(name, {"flow": flow}) or 0.0

    def result(status: str) -> MessageResult:
        return MessageResult(
            message_id="m", type="OrderCreated", resource_id="o", outcome="", status=status
        )

    before = {
        (name, flow): sample(name, flow)
        for name in ("d365ct_flow_records_total", "d365ct_flow_failures_total")
        for flow in ("orders", "customers")
    }
    summary = ProcessSummary(
        rounds=1,
        customers=[result("done")],
        orders=[result("done"), result("failed"), result("done")],
        seconds=0.25,
    )
    processor_module._record_round(summary)

    def delta(name: str, flow: str) -> float:
        return sample(name, flow) - before[(name, flow)]

    assert delta("d365ct_flow_records_total", "orders") == 3
    assert delta("d365ct_flow_failures_total", "orders") == 1
    assert delta("d365ct_flow_records_total", "customers") == 1
    assert delta("d365ct_flow_failures_total", "customers") == 0


def _flow_registry() -> CollectorRegistry:
    """The process's flow counters, readable by name (they belong to no global registry)."""
    registry = CollectorRegistry()
    registry.register(metrics.FLOW_RECORDS)
    registry.register(metrics.FLOW_FAILURES)
    return registry
